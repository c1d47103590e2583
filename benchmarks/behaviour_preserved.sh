#!/usr/bin/env bash
# Is a refactoring behaviour-preserving?  Runs `cgflow run mb --seed 0`, `mb --seed 3` and
# `aldp-fast --seed 0` at two git revisions (default: HEAD~1 and the work tree) and compares their
# metrics.csv in every non-timing column (benchmarks/compare_metrics.py).  One core per revision
# (taskset -c 0 / 1), one torch thread.  About 6 min per revision on a 2-core machine.
#   bash benchmarks/behaviour_preserved.sh [BEFORE_REV] [OUT_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT="$PWD"
BEFORE="${1:-HEAD~1}"; OUT="${2:-/tmp/cgflow-behaviour}"
rm -rf "$OUT"; mkdir -p "$OUT"
git worktree add -f "$OUT/before-src" "$BEFORE" >/dev/null
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
run_all() {  # $1 core, $2 source tree, $3 out
    for job in "mb 0" "mb 3" "aldp-fast 0"; do
        set -- "$1" "$2" "$3" $job
        (cd "$2" && PYTHONPATH="$2/src" taskset -c "$1" "$ROOT/.venv/bin/python" -m cgflow.cli run "$4" --seed "$5" \
            --out "$3/$4-$5" --no-plots > "$3/$4-$5.log" 2>&1)
    done
}
mkdir -p "$OUT/before" "$OUT/after"
run_all 0 "$OUT/before-src" "$OUT/before" & run_all 1 "$PWD" "$OUT/after"; wait
git worktree remove --force "$OUT/before-src"
status=0
for r in mb-0 mb-3 aldp-fast-0; do
    .venv/bin/python benchmarks/compare_metrics.py "$OUT/before/$r/metrics.csv" "$OUT/after/$r/metrics.csv" || status=1
done
exit $status
