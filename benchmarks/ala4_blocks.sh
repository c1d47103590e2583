#!/usr/bin/env bash
# issue 20: `cgflow run ala4` with block candidates (the preset since 2026-12-08) against the REMD reference, with the
# runs of the preset before (benchmarks/results/ala4-validate/run-s*) and the no-weight-clipping ablation beside it.
# One run per core, one thread each (~30 min each on an AMD EPYC core with the other core busy):
#   bash benchmarks/ala4_blocks.sh            # seeds 0 and 1 (core 0 and 1), then seed 2, then the block_find=15
#                                             # variant (seeds 0, 1), then the table + figure
#   ABLATION=1 bash benchmarks/ala4_blocks.sh # also the no-clipping run (labels.top_k_clip=0, the earlier sampler)
# Writes benchmarks/results/ala4-blocks/ (runs, logs, pmf-slim.npz) and benchmarks/results/ala4-blocks/al-vs-remd/.
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
cd "$here"
out=benchmarks/results/ala4-blocks
mkdir -p "$out"
run() {  # core seed dir [--set ...]
  local core=$1 seed=$2 dir=$3; shift 3
  if [ ! -f "$dir/pmf.npz" ]; then
    OMP_NUM_THREADS=1 taskset -c "$core" .venv/bin/cgflow run ala4 --seed "$seed" --out "$dir" --set progress=false \
      "$@" > "$dir.log" 2>&1
  fi
  .venv/bin/python benchmarks/slim_pmf.py "$dir" > /dev/null
}
run 0 0 "$out/blocks-s0" & run 1 1 "$out/blocks-s1" & wait
run 0 2 "$out/blocks-s2" &
if [ "${ABLATION:-0}" = 1 ]; then
  mkdir -p benchmarks/results/ala4-labels
  run 1 0 benchmarks/results/ala4-labels/clip0-s0 --set labels.top_k_clip=0 --set sampler.block_find=0 \
    --set sampler.block_pool=0 &
fi
wait
run 0 0 "$out/blocks15-s0" --set sampler.block_find=15 & run 1 1 "$out/blocks15-s1" --set sampler.block_find=15 & wait
V=benchmarks/results/ala4-validate
OMP_NUM_THREADS=1 .venv/bin/python benchmarks/ala4_al_vs_remd.py \
  "before, s0=$V/run-s0" "before, s1=$V/run-s1" "before + refine (3.8e5 MD), s0=$V/run-s0-refined-short" \
  "before + refine (3.8e5 MD), s1=$V/run-s1-refined" "no weight clipping, s0=benchmarks/results/ala4-labels/clip0-s0" \
  "blocks, s0=$out/blocks-s0" "blocks, s1=$out/blocks-s1" "blocks, s2=$out/blocks-s2" \
  "block_find 15, s0=$out/blocks15-s0" "block_find 15, s1=$out/blocks15-s1" --out "$out/al-vs-remd"
