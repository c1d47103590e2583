#!/usr/bin/env bash
# issue 20: where an `ala4` run's alpha_L error comes from, what biased MD (cgflow validate, d > 3: reweighted
# marginals) says without a reference, and whether its frames fix the run (cgflow refine). Writes
# benchmarks/results/ala4-validate/ (docs/results.md). One core per seed (seed 0 on core 0, seed 1 on core 1):
#   bash benchmarks/ala4_validate.sh SEED [MD_STEPS]      # MD_STEPS per walker (default 20000 for seed 0)
# ~35 min for the run, ~2 min per label check, ~7 min of MD per 20,000 steps x 64 walkers, ~10 min to refine.
set -euo pipefail
seed=${1:-0}
steps=${2:-20000}
core=$((seed % 2))
here="$(cd "$(dirname "$0")/.." && pwd)"
cd "$here"
out="$here/benchmarks/results/ala4-validate"
mkdir -p "$out"
run="$out/run-s$seed"
pin() { OMP_NUM_THREADS=1 taskset -c "$core" "$@"; }
if [ ! -f "$run/checkpoint.pt" ]; then
  pin .venv/bin/cgflow run ala4 --seed "$seed" --out "$run" --set progress=false > "$out/run-s$seed.log" 2>&1
fi
if [ "$seed" = 0 ]; then  # ensemble vs 8192 fresh flow draws at 10 REMD frames in alpha_L of residue r and 10 elsewhere
  for r in 1 2 3; do
    pin .venv/bin/python benchmarks/ala4_label_check.py "$run" --residue $r --points 10 --draws 8192 \
      --out "$out/label-check-res$r.json" > /dev/null
  done
fi
val="$out/validate-s$seed"
rm -rf "$val" "$run-refined" "$val-refined"
pin .venv/bin/cgflow validate "$run" --out "$val" --ceiling-kT 20 --timestep-fs 2 --steps "$steps" \
  --equilibration-steps 1000 --walkers 64 --seed "$seed" > "$val.log" 2>&1
pin .venv/bin/cgflow refine "$run" --validate "$val" --out "$run-refined" --points 400 --iterations 5 \
  > "$run-refined.log" 2>&1
pin .venv/bin/cgflow validate "$run-refined" --out "$val-refined" --ceiling-kT 20 --timestep-fs 2 --steps "$steps" \
  --equilibration-steps 1000 --walkers 64 --seed "$seed" > "$val-refined.log" 2>&1
rm -f "$val"/validate_checkpoint.pt "$val-refined"/validate_checkpoint.pt
OMP_NUM_THREADS=1 .venv/bin/python benchmarks/ala4_vs_remd.py "$run" "$run-refined" --validate "$val" \
  --validate "$val-refined" --out "$out/ala4-vs-remd-s$seed.json"
