#!/usr/bin/env bash
# ala4 active learning against plain MD on 2-D marginals (docs/results.md), one core, one thread each.
#   b-explore, b-explore-seed1: the `ala4` preset as shipped, seeds 0 and 1 (seed 1 compared into seed1-compare/);
#   a-aldp-fast-settings: the same with aldp-fast's exploration (128 space-filling seeds, 20 ps start MD,
#     acquisition beta 1), stopped after 9 iterations in the measured run (it had stalled).
# Needs the reference MD: benchmarks/ala4_reference_md.py --out benchmarks/results/ala4-reference (~70 min).
# Writes benchmarks/results/ala4-run/ (checkpoints and PMF histories are deleted at the end).
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
out="$here/benchmarks/results/ala4-run"
mkdir -p "$out"
cd "$here"
run() {  # name, extra --set arguments...
  local name=$1; shift
  rm -rf "$out/$name"
  OMP_NUM_THREADS=1 taskset -c 0 .venv/bin/cgflow run ala4 --out "$out/$name" --set progress=false "$@" \
    > "$out/$name.log" 2>&1
}
run b-explore
run b-explore-seed1 --seed 1
run a-aldp-fast-settings --set acquisition.n_space_filling_seed_points=128 --set system.md_ps=20 \
  --set sampler.beta=1.0 --set stopping.max_iterations=9
OMP_NUM_THREADS=1 .venv/bin/python benchmarks/ala4_compare.py "$out/b-explore" "$out/a-aldp-fast-settings" \
  --reference-md benchmarks/results/ala4-reference --out "$out"
OMP_NUM_THREADS=1 .venv/bin/python benchmarks/ala4_compare.py "$out/b-explore-seed1" \
  --reference-md benchmarks/results/ala4-reference --out "$out/seed1-compare"
for d in "$out"/*/; do rm -rf "$d/checkpoint.pt" "$d/pmf_history"; done
