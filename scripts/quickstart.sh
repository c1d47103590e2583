#!/usr/bin/env bash
# Set up the environment and run the default job: active learning of the Müller-Brown PMF.
# Extra arguments go to `cgflow run`, e.g.  scripts/quickstart.sh --out runs/mine --seed 1
# cgflow uses one torch thread per process unless --threads N or OMP_NUM_THREADS says otherwise.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
.venv/bin/cgflow run mb "$@"
echo
echo "cgflow is installed in .venv; to run it as plain \`cgflow\`:  source .venv/bin/activate"
