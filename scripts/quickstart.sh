#!/usr/bin/env bash
# Set up the environment and run the default job: active learning of the Müller-Brown PMF.
# Extra arguments go to `cgflow run`, e.g.  scripts/quickstart.sh --out runs/mine --seed 1
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/cgflow run mb "$@"
