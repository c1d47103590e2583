#!/usr/bin/env bash
# The worked example of docs/systems.md: the analytic 4-D torus system (examples/torus_system.py) from YAML,
# its default settings (examples/torus-4d.yaml), one core, one thread.  Writes the run to
# benchmarks/results/torus-4d/run and copies its marginal figure to docs/torus-4d-marginals.png.
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
out="$here/benchmarks/results/torus-4d"
rm -rf "$out/run"  # checkpoint.pt and pmf_history/ are deleted at the end (not kept in git)
mkdir -p "$out"
cd "$here/examples"
OMP_NUM_THREADS=1 taskset -c 0 "$here/.venv/bin/cgflow" run torus-4d.yaml --out "$out/run" --set progress=false \
  | tee "$out/stdout.txt"
"$here/.venv/bin/python" -c "import sys; sys.path.insert(0, \"$here/benchmarks\"); from machine import describe_machine; print(describe_machine())" > "$out/machine.txt"
cp "$out/run/pmf.png" "$here/docs/torus-4d-marginals.png"
rm -rf "$out/run/checkpoint.pt" "$out/run/pmf_history"
