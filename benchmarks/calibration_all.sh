#!/usr/bin/env bash
# The calibration study of docs/results.md ("Error bars"): AL runs that dump every iteration
# (calibration_collect.py), then the candidate error bars scored against the known answers
# (calibration.py). One core, one thread: CORE=0 by default. Writes benchmarks/results/calibration/.
# Usage: bash benchmarks/calibration_all.sh [mb|aldp|torus2|torus4 ...]   (default: all)
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
out="${OUT:-$here/benchmarks/results/calibration/runs}"
core="${CORE:-0}"
py="$here/.venv/bin/python"
mkdir -p "$out"
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
collect() {  # name config seed [extra args]
  local name=$1 cfg=$2 seed=$3; shift 3
  [ -d "$out/$name" ] && { echo "skip $name (exists)"; return; }
  taskset -c "$core" "$py" "$here/benchmarks/calibration_collect.py" "$cfg" --seed "$seed" \
    --out "$out/$name" "$@" > "$out/$name.log" 2>&1 || echo "FAILED $name (see $out/$name.log)"
  rm -rf "$out/$name/pmf_history"  # checkpoint.pt kept: benchmarks/validate_aldp.py validates these runs
}
for what in "${@:-mb aldp torus2 torus4}"; do for w in $what; do case $w in
  mb) for s in 0 1 2 3 4; do collect "mb_s$s" mb $s; done ;;
  aldp) for s in 0 3 4; do collect "aldp-fast_s$s" aldp-fast $s; done ;;
  torus2) (cd "$here/examples" && for s in 0 1 2; do collect "torus2_s$s" torus-2d.yaml $s; done) ;;
  torus4) (cd "$here/examples" && for s in 0 1; do
            collect "torus4_s$s" torus-4d.yaml $s --set stopping.max_iterations=8 --exact-pmf torus_system:exact_pmf_kT
          done) ;;
  *) echo "unknown: $w"; exit 2 ;;
esac; done; done
"$py" "$here/benchmarks/calibration.py" "$out"/*/ --csv "$here/benchmarks/results/calibration/calibration.csv" \
  | tee "$here/benchmarks/results/calibration/summary.txt"
