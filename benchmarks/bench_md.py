"""MD throughput of the two `cgflow md` engines on alanine dipeptide: energy + force evaluations per
second (= replica-steps per second).

    python benchmarks/bench_md.py [--replicas 64 256] [--threads 1] [--device cpu]
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import torch
from machine import describe_machine

from cgflow.baselines.md import MDRun, MDSettings
from cgflow.systems.molecules.molecule_system import alanine_dipeptide


def rate(view, engine: str, replicas: int, steps: int, device: str) -> float:
    d = Path(tempfile.mkdtemp()) / "md"
    try:
        st = MDSettings(n_steps=steps, engine=engine, n_replicas=replicas, report_every_steps=steps // 10,
                        frames_per_chunk=1000, device=device)
        run = MDRun(view, d, st, progress=False)
        t0 = time.perf_counter()
        info = run.run()
        return steps * replicas / (time.perf_counter() - t0), info
    finally:
        shutil.rmtree(d.parent, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--replicas", type=int, nargs="+", default=[64, 256])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--openmm-steps", type=int, default=20000)
    ap.add_argument("--torch-steps", type=int, default=100)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    print(describe_machine(), f"| torch threads {a.threads}")
    view = alanine_dipeptide(progress=False, device=a.device).simulation_view()
    r, _ = rate(view, "openmm", 1, a.openmm_steps, "cpu")
    print(f"openmm  CPU platform, Threads=1, 1 replica: {r:9.0f} evaluations/s")
    for R in a.replicas:
        r, _ = rate(view, "torch", R, a.torch_steps, a.device)
        print(f"torch   {a.device}, {R:4d} replicas (BAOAB, float64): {r:9.0f} evaluations/s")


if __name__ == "__main__":
    main()
