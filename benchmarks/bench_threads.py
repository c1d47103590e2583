"""Wall time of short `cgflow run` jobs with 1 vs 2 torch threads, on an idle and on a loaded machine.

"Loaded" means one extra process that burns a CPU core for the whole run (a Python busy loop), as
when a user runs a second job or a build beside cgflow.  Each job runs in its own process with
``--threads N``; ``OMP_NUM_THREADS`` is removed from its environment so only the flag decides.

    python benchmarks/bench_threads.py                      # mb (3 iterations) and aldp-quick (2)
    python benchmarks/bench_threads.py --presets mb --repeats 2

Prints one Markdown table row per job (preset, iterations, threads, load, wall s, evaluations, final
forward KLD) and the machine.  The alanine dipeptide starting MD is computed once before timing
(it is cached), so it is not part of any timing.
"""

from __future__ import annotations

import argparse
import csv
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import describe_machine  # noqa: E402

ITERATIONS = {"mb": 3, "aldp-quick": 2}


def loadavg() -> str:
    try:
        return Path("/proc/loadavg").read_text().split()[0]
    except OSError:
        return "?"


def burner() -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", "while True: pass"])


def run_job(preset: str, iterations: int, threads: int, workdir: Path) -> dict:
    out = workdir / f"{preset}-{threads}-{time.time_ns()}"
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    cmd = [sys.executable, "-m", "cgflow.cli", "run", preset, "--out", str(out), "--no-plots", "--threads",
           str(threads), "--set", "progress=false", "--set", f"stopping.max_iterations={iterations}",
           "--device", "cpu"]
    load_before = loadavg()
    t0 = time.perf_counter()
    res = subprocess.run(cmd, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - t0
    if res.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{res.stderr}")
    with open(out / "metrics.csv", newline="") as fh:
        last = list(csv.DictReader(fh))[-1]
    return {"wall_s": wall, "iterations": int(last["iteration"]), "evals": int(last["evals_total"]),
            "kld": float(last.get("forward_kld", "nan") or "nan"), "load_before": load_before}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--presets", nargs="+", default=list(ITERATIONS))
    ap.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    ap.add_argument("--loads", nargs="+", default=["idle", "loaded"], choices=["idle", "loaded"])
    ap.add_argument("--repeats", type=int, default=1)
    args = ap.parse_args()
    print(f"machine: {describe_machine()}", flush=True)
    if "aldp-quick" in args.presets:  # fill the starting-data cache outside the timings
        subprocess.run([sys.executable, "-c", "from cgflow.config import load_config; from cgflow.systems import "
                        "build_system; build_system(load_config('aldp-quick').system).starting_data(0)"], check=True)
    print("| preset | iterations | torch threads | machine | wall s | evaluations | forward KLD | load avg before |")
    print("|---|---:|---:|---|---:|---:|---:|---:|", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        for preset in args.presets:
            for load in args.loads:
                for _ in range(args.repeats):
                    for threads in args.threads:
                        b = burner() if load == "loaded" else None
                        try:
                            r = run_job(preset, ITERATIONS.get(preset, 2), threads, Path(tmp))
                        finally:
                            if b is not None:
                                b.kill()
                                b.wait()
                        print(f"| {preset} | {r['iterations']} | {threads} | {load} | {r['wall_s']:.1f} | "
                              f"{r['evals']:,} | {r['kld']:.3g} | {r['load_before']} |", flush=True)


if __name__ == "__main__":
    main()
