#!/usr/bin/env bash
# issue 20: where an `ala4` run's alpha_L error comes from, and whether biased MD (cgflow validate, d > 3:
# reweighted marginals) sees it without a reference. One run directory with its checkpoint (default: a fresh
# `cgflow run ala4` on core 1, ~35 min). Writes benchmarks/results/ala4-validate/. Cores: label check and MD on core 0.
#   bash benchmarks/ala4_validate.sh [RUN_DIR]
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
cd "$here"
out="$here/benchmarks/results/ala4-validate"
mkdir -p "$out"
run="${1:-$out/run-s0}"
if [ ! -f "$run/checkpoint.pt" ]; then
  OMP_NUM_THREADS=1 taskset -c 1 .venv/bin/cgflow run ala4 --out "$run" --set progress=false > "$out/run-s0.log" 2>&1
fi
for r in 1 2 3; do  # ensemble vs 8192 fresh flow draws at 10 REMD frames in alpha_L of residue r and 10 elsewhere
  OMP_NUM_THREADS=1 taskset -c 0 .venv/bin/python benchmarks/ala4_label_check.py "$run" --residue $r --points 10 \
    --draws 8192 --out "$out/label-check-res$r.json" > /dev/null
done
rm -rf "$out/validate"
OMP_NUM_THREADS=1 taskset -c 0 .venv/bin/cgflow validate "$run" --out "$out/validate" --ceiling-kT 20 \
  --timestep-fs 2 --steps 20000 --equilibration-steps 1000 --walkers 64 > "$out/validate.log" 2>&1
rm -f "$out/validate/validate_checkpoint.pt"
OMP_NUM_THREADS=1 .venv/bin/python benchmarks/ala4_vs_remd.py "$run" --validate "$out/validate" \
  --out "$out/ala4-vs-remd.json"
