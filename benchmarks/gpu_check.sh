#!/usr/bin/env bash
# The GPU check (issue "OPES in the same harness ...", part 3): on a CUDA machine, in under ~8 minutes,
#   1. the torch energy throughput (float32 and float64; CPU and CUDA, eager / compiled where it works),
#   2. the flow step (by energy) up to batch 8192,
#   3. the paper-size `aldp` preset for 2 iterations (wall-clock per iteration),
#   4. one `aldp-fast` run,
# and writes benchmarks/results/gpu-check/gpu_check.json + gpu_check.md (device name, date, numbers).
# Every step has its own time limit, so a slow step is reported as such instead of eating the budget.
# Usage: bash benchmarks/gpu_check.sh            (needs `nvidia-smi` and a CUDA torch; scripts/setup.sh
#                                                installs the CUDA build when it finds a GPU)
#        GPU_CHECK_ALLOW_CPU=1 GPU_CHECK_SMOKE=1 bash benchmarks/gpu_check.sh   (a 1-minute CPU smoke run of
#                                                the script itself; its numbers mean nothing)
set -uo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
cd "$here"
out="${OUT:-$here/benchmarks/results/gpu-check}"
mkdir -p "$out"
[ -x .venv/bin/python ] || bash scripts/setup.sh > "$out/setup.log" 2>&1
py=.venv/bin/python
device=cuda
if ! $py -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  if [ "${GPU_CHECK_ALLOW_CPU:-0}" = 1 ]; then device=cpu; else
    echo "error: no CUDA device visible to torch (set GPU_CHECK_ALLOW_CPU=1 for a CPU smoke run)" >&2; exit 2; fi
fi
smoke="${GPU_CHECK_SMOKE:-0}"
step() {  # name limit_s command...
  local name=$1 limit=$2; shift 2
  local t0=$SECONDS
  timeout "$limit" "$@" > "$out/$name.log" 2>&1
  local rc=$?
  echo "$name rc=$rc seconds=$((SECONDS - t0))" | tee -a "$out/steps.txt"
}
rm -f "$out/steps.txt"; rm -rf "$out/aldp" "$out/aldp-fast"
if [ "$smoke" = 1 ]; then
  step energy 120 $py benchmarks/bench_energy.py --quick --batches 64 --no-compile
  step flow 120 $py benchmarks/bench_flow.py --quick --steps 2
  step aldp 300 .venv/bin/cgflow run aldp --device "$device" --out "$out/aldp" --no-plots --set progress=false \
    --set stopping.max_iterations=1 --set by_energy.epochs_first=1 --set by_example.epochs=1 --set ensemble.epochs=10
  step aldp-fast 300 .venv/bin/cgflow run aldp-fast --device "$device" --out "$out/aldp-fast" --no-plots \
    --set progress=false --set stopping.max_iterations=1
else
  step energy 150 $py benchmarks/bench_energy.py --quick --batches 1024,16384
  step flow 120 $py benchmarks/bench_flow.py --full --steps 5
  step aldp 210 .venv/bin/cgflow run aldp --device "$device" --out "$out/aldp" --no-plots --set progress=false \
    --set stopping.max_iterations=2
  step aldp-fast 240 .venv/bin/cgflow run aldp-fast --device "$device" --out "$out/aldp-fast" --no-plots --set progress=false
fi
$py - "$out" "$device" <<'PY'
import csv, json, sys, datetime, pathlib
out, device = pathlib.Path(sys.argv[1]), sys.argv[2]
import torch
name = torch.cuda.get_device_name(0) if device == "cuda" else "CPU (smoke run)"
res = {"device": name, "date": datetime.date.today().isoformat(), "torch": torch.__version__, "steps": {}}
for line in (out / "steps.txt").read_text().splitlines():
    n, rc, sec = line.split()
    res["steps"][n] = {"rc": int(rc.split("=")[1]), "seconds": float(sec.split("=")[1])}
for run in ("aldp", "aldp-fast"):
    m = out / run / "metrics.csv"
    if m.is_file():
        rows = list(csv.DictReader(m.open()))
        res[run] = [{k: r.get(k) for k in ("iteration", "evals_total", "forward_kld", "iteration_time_s", "wall_time_s")
                     if k in r} for r in rows]
for part in ("energy", "flow"):
    res[part + "_table"] = [l for l in (out / f"{part}.log").read_text().splitlines() if l.startswith("|")]
(out / "gpu_check.json").write_text(json.dumps(res, indent=1) + "\n")
md = [f"# GPU check: {name}, {res['date']}, torch {res['torch']}", "", "| step | rc | seconds |", "|---|---|---|"]
md += [f"| {k} | {v['rc']} | {v['seconds']:.0f} |" for k, v in res["steps"].items()]
for run in ("aldp", "aldp-fast"):
    if run in res:
        md += ["", f"## {run}", "", "| " + " | ".join(res[run][0]) + " |", "|" + "---|" * len(res[run][0])]
        md += ["| " + " | ".join(str(v) for v in r.values()) + " |" for r in res[run]]
for part in ("energy", "flow"):
    md += ["", f"## {part}", ""] + res[part + "_table"]
(out / "gpu_check.md").write_text("\n".join(md) + "\n")
print("\n".join(md))
PY
