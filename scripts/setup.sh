#!/usr/bin/env bash
# Create .venv (if needed) and install cgflow into it.  Without a GPU, torch comes from the local
# CPU build torch==2.13.0 (never an unpinned CUDA build of several GB).
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
    "$PY" -m venv .venv
fi
if ! .venv/bin/python -c "import torch" >/dev/null 2>&1; then
    if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi >/dev/null 2>&1 && [ -z "${CGFLOW_CPU_TORCH:-}" ]; then
        .venv/bin/pip install --quiet torch          # a GPU is present: the CUDA build
    else
        .venv/bin/pip install --quiet torch==2.13.0  # CPU build
    fi
fi
.venv/bin/pip install --quiet -e ".[test,peptides]"   # peptides: AmberTools' tleap (~90 MB), for sequences
