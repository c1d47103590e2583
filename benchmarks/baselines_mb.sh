#!/usr/bin/env bash
# Müller-Brown: active learning, MD, well-tempered metadynamics and umbrella sampling + MBAR
# against the exact PMF (quadrature), compared by energy evaluations.
#   usage: bash benchmarks/baselines_mb.sh [OUT_DIR]     (inside the venv: source .venv/bin/activate)
# Results go to OUT_DIR/comparison/{comparison.md,comparison.png,curves.csv}; wall times are in each
# run's md.json / metad.json / umbrella.json / metrics.csv.  ~15 min on 2 cores.
set -euo pipefail
OUT=${1:-runs/baselines-mb}
if [ -e "$OUT" ]; then echo "error: $OUT exists; choose another OUT_DIR" >&2; exit 2; fi
mkdir -p "$OUT"
python -c "import sys; sys.path.insert(0, 'benchmarks'); from machine import describe_machine; print(describe_machine())" \
  | tee "$OUT/machine.txt"
cgflow reference --exact mb --out "$OUT/mb_exact.npz"
cgflow run mb --out "$OUT/active_learning" --seed 0 --no-plots
# grid conditioning: the same flow trained on 100 fixed CG points (80 train), ensemble refit every 5 epochs
cgflow run mb --out "$OUT/grid" --seed 0 --no-plots --set mode=grid --set grid.epochs=40 \
  --set grid.ensemble_every_epochs=5
# 256 independent replicas in one OpenMM context (one particle each), 2e6 steps each = 5.1e8 evaluations
OMP_NUM_THREADS=1 cgflow md mb --out "$OUT/md" --steps 2000000 --replicas 256 --report-every 1000
cgflow metad mb --out "$OUT/metadynamics" --steps 1000000 --bias-factor 10 --deposit-every 100 --snapshot-every 25000
cgflow umbrella mb --out "$OUT/umbrella" --windows 30 --equilibration-steps 1000 --production-steps 40000 \
  --sample-every 20 --snapshots 8
cgflow compare "$OUT/md" "$OUT/metadynamics" "$OUT/umbrella" "$OUT/active_learning" "$OUT/grid" \
  --reference "$OUT/mb_exact.npz" --out "$OUT/comparison"
