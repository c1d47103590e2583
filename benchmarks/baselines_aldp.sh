#!/usr/bin/env bash
# Alanine dipeptide: a reference PMF by umbrella sampling + MBAR over the (phi, psi) torus, then MD,
# well-tempered metadynamics and active-learning runs compared against it by energy evaluations.
#   usage: bash benchmarks/baselines_aldp.sh [OUT_DIR] [AL_RUN_DIR...]   (inside the venv)
# AL_RUN_DIR: finished `cgflow run aldp-quick` (or aldp / aldp-grid) directories to include.
# Budgets are sized for a 2-core machine (~1.5 h); scale --steps / --production-steps up elsewhere.
set -euo pipefail
OUT=${1:-runs/baselines-aldp}
shift || true
if [ -e "$OUT" ]; then echo "error: $OUT exists; choose another OUT_DIR" >&2; exit 2; fi
mkdir -p "$OUT"
python -c "import sys; sys.path.insert(0, 'benchmarks'); from machine import describe_machine; print(describe_machine())" \
  | tee "$OUT/machine.txt"
# the reference and MD run side by side, one core each
OMP_NUM_THREADS=1 cgflow umbrella aldp --out "$OUT/umbrella" --windows 20 --equilibration-steps 1000 \
  --production-steps 20000 --sample-every 100 --snapshots 4 > "$OUT/umbrella.log" 2>&1 &
UMB=$!
cgflow md aldp --out "$OUT/md" --steps 3000000 --report-every 250 > "$OUT/md.log" 2>&1
wait $UMB
cgflow reference --from-run "$OUT/umbrella" --out "$OUT/aldp_umbrella_reference.npz"
# the reference used in docs/results.md: a longer umbrella run with denser samples (~20 min on 2 cores)
cgflow umbrella aldp --out "$OUT/umbrella-long" --windows 20 --equilibration-steps 1000 --production-steps 24000 \
  --sample-every 20 --snapshots 1
cgflow reference --from-run "$OUT/umbrella-long" --out "$OUT/aldp_umbrella_long_reference.npz"
cgflow reference --from-run "$OUT/md" --out "$OUT/aldp_md_reference.npz"
cgflow metad aldp --out "$OUT/metadynamics" --steps 1500000 --bias-factor 6 --height-kT 0.5 --deposit-every 500 \
  --snapshot-every 100000
cgflow compare "$OUT/md" "$OUT/metadynamics" "$OUT/umbrella" "$@" \
  --reference "$OUT/aldp_umbrella_long_reference.npz" --out "$OUT/comparison-long" --levels 0.5,0.2,0.1
