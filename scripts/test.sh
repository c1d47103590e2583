#!/usr/bin/env bash
# Set up the environment and run the test suite (CPU only; a few minutes on 2 cores).
# One torch thread per process, as `cgflow` itself defaults to (docs/benchmarks.md, "Torch threads"):
# a second thread gains little on an idle machine and collapses when anything else runs.
# Set OMP_NUM_THREADS yourself to override.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}" MKL_NUM_THREADS="${MKL_NUM_THREADS:-${OMP_NUM_THREADS:-1}}"
# lint and types first (config in pyproject.toml): a failure here fails the run, as in CI
.venv/bin/ruff check src tests benchmarks examples
.venv/bin/mypy
exec .venv/bin/python -m pytest -q "$@"
