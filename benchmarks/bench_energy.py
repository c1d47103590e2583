"""Energy + force throughput for alanine dipeptide (OBC1): TorchEnergy vs plain OpenMM.

Backends:
* ``torch``: :class:`cgflow.systems.molecules.energy.torch_energy.TorchEnergy` on CPU (float64, float32) and, if
  ``torch.cuda.is_available()``, on CUDA: eager, ``torch.compile`` and ``torch.compile`` with CUDA
  graphs (``mode="reduce-overhead"``), each only if it works.
* ``openmm-1ctx``: one OpenMM CPU-platform Context with Threads=1 evaluating the configurations one
  by one (setPositions + getState(energy, forces)).
* ``openmm-pool``: :class:`cgflow.systems.molecules.energy.openmm_pool.OpenMMEnergyPool`, worker processes (default
  2) each with one CPU-platform Context (Threads=1) pinned to its own core; the batch is split into
  chunks over the workers (includes the inter-process transfer of positions, energies and forces).

Throughput = configurations per second for energy and forces.  Prints a markdown table with the
machine information.  Usage::

    python benchmarks/bench_energy.py [--quick] [--batches 64,1024,16384]
"""

from __future__ import annotations

import argparse
import datetime
import importlib.resources
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import openmm
import openmm.app as app
import openmm.unit as unit
import torch

try:
    import cgflow  # noqa: F401
except ImportError:  # not installed: run from the source tree
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from cgflow.systems.molecules.energy.openmm_pool import OpenMMEnergyPool  # noqa: E402
from cgflow.systems.molecules.energy.torch_energy import TorchEnergy  # noqa: E402


def _data(name: str) -> str:
    return str(importlib.resources.files("cgflow") / "data" / "alanine-dipeptide" / name)


def build_system() -> tuple[openmm.System, np.ndarray]:
    prmtop = app.AmberPrmtopFile(_data("alanine-dipeptide.prmtop"))
    system = prmtop.createSystem(nonbondedMethod=app.NoCutoff, implicitSolvent=app.OBC1, constraints=None)
    x0 = app.PDBFile(_data("alanine-dipeptide.pdb")).getPositions(asNumpy=True).value_in_unit(unit.nanometer)
    return system, np.asarray(x0)


def configurations(x0: np.ndarray, n: int, seed: int = 0) -> np.ndarray:
    """n configurations: the pdb structure plus 0.01 nm Gaussian noise, shape (n, N, 3) nm."""
    rng = np.random.default_rng(seed)
    return x0[None] + rng.normal(0.0, 0.01, (n, *x0.shape))


sys.path.insert(0, str(Path(__file__).parent))
from machine import cpu_model  # noqa: E402


def _timeit(fn, min_time: float, min_calls: int = 1, sync=lambda: None) -> tuple[float, int]:
    """Median seconds per call over at least min_calls calls and min_time seconds (the median
    rather than the mean because the machine may be shared)."""
    times, t_start = [], time.perf_counter()
    while True:
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
        if len(times) >= min_calls and time.perf_counter() - t_start >= min_time:
            return float(np.median(times)), len(times)


def bench_openmm(system, xs: np.ndarray, min_time: float) -> tuple[float, int]:
    """configs/s of one CPU-platform Context (Threads=1), configurations one by one."""
    ctx = openmm.Context(system, openmm.VerletIntegrator(0.001), openmm.Platform.getPlatformByName("CPU"),
                         {"Threads": "1"})

    def one(x):
        ctx.setPositions(x)
        st = ctx.getState(getEnergy=True, getForces=True)
        st.getPotentialEnergy()
        st.getForces(asNumpy=True)

    one(xs[0])  # warm up
    n, t0 = 0, time.perf_counter()
    while True:
        one(xs[n % len(xs)])
        n += 1
        dt = time.perf_counter() - t0
        if n >= len(xs) or (dt >= min_time and n >= 100):
            return n / dt, n


def bench_openmm_pool(system, x0, batches, min_time, rows, n_workers: int = 2) -> None:
    """Append rows for the OpenMM worker pool (n_workers processes, pinned, Threads=1 each)."""
    with OpenMMEnergyPool(system, temperature_K=300.0, n_workers=n_workers, pin=True) as pool:
        pool.reduced_energies_and_forces(configurations(x0, 2 * n_workers, seed=0))  # warm up
        pinned = "pinned" if pool.pin else "not pinned"
        for b in batches:
            x = configurations(x0, b, seed=b)
            per_call, calls = _timeit(lambda: pool.reduced_energies_and_forces(x), min_time, min_calls=1 if b > 4096 else 3)
            rows.append((f"openmm-pool ({n_workers} workers, CPU, Threads=1)", "cpu", "mixed", b, b / per_call,
                         calls * b, f"{n_workers} processes, {pinned}"))
            print(f"  {rows[-1]}", file=sys.stderr)


def _energy_and_forces_fn(te: TorchEnergy, mode: str):
    """(B,N,3) -> (E, F) with the energy evaluated eagerly or by a compiled function."""
    if mode == "eager":
        return te.energy_and_forces_kJ_per_mol
    energy = torch.compile(te.energy_kJ_per_mol, mode=mode, dynamic=False)
    cudagraphs = mode == "reduce-overhead"

    def fn(x):
        if cudagraphs:
            torch.compiler.cudagraph_mark_step_begin()
        xg = x.detach().requires_grad_(True)
        e = energy(xg)
        (g,) = torch.autograd.grad(e.sum(), xg)
        return e.detach(), -g

    return fn


def bench_torch(system, x0, device: str, dtype, mode: str, batches, min_time, rows, notes=""):
    """Append rows (backend, device, dtype, batch, configs/s, configs timed, notes)."""
    te = TorchEnergy(system, temperature_K=300.0, dtype=dtype, device=device)
    fn = _energy_and_forces_fn(te, mode)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    dname = {torch.float64: "float64", torch.float32: "float32"}[dtype]
    for b in batches:
        x = torch.tensor(configurations(x0, b, seed=b), dtype=dtype, device=device)
        try:
            t_compile = time.perf_counter()
            for _ in range(3 if device == "cuda" else 1):  # warm up / compile / record graphs
                e, f = fn(x)
            sync()
            t_compile = time.perf_counter() - t_compile
            if not torch.isfinite(e).all():
                raise RuntimeError("non-finite energies")
            per_call, calls = _timeit(lambda: fn(x), min_time, min_calls=1 if b > 4096 else 3, sync=sync)
        except Exception as exc:  # noqa: BLE001 - report and continue
            msg = str(exc).strip().splitlines()[0][:80] if str(exc).strip() else type(exc).__name__
            rows.append((f"torch {mode}", device, dname, b, float("nan"), 0, f"failed: {msg}"))
            continue
        note = notes
        if mode != "eager":
            note = (note + "; " if note else "") + f"warm-up incl. compile {t_compile:.1f} s"
        rows.append((f"torch {mode}", device, dname, b, b / per_call, calls * b, note))
        print(f"  {rows[-1]}", file=sys.stderr)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="short run (fewer repetitions, fewer OpenMM configs)")
    p.add_argument("--batches", default="64,1024,16384")
    p.add_argument("--no-cuda", action="store_true")
    p.add_argument("--no-compile", action="store_true", help="skip torch.compile on CUDA")
    p.add_argument("--pool-workers", type=int, default=2, help="worker processes of the OpenMM pool")
    p.add_argument("--threads", default=None,
                   help="comma-separated torch CPU thread counts (default: 1 and os.cpu_count())")
    args = p.parse_args(argv)
    batches = [int(b) for b in args.batches.split(",")]
    min_time = 0.5 if args.quick else 3.0
    openmm_max = 1000 if args.quick else 20000

    load_before = " ".join(f"{v:.2f}" for v in os.getloadavg()[:1])
    system, x0 = build_system()
    rows: list[tuple] = []

    print("openmm-1ctx ...", file=sys.stderr)
    for b in batches:
        xs = configurations(x0, min(b, openmm_max), seed=b)
        rate, n = bench_openmm(system, xs, min_time)
        note = "" if n >= b else f"timed on {n} of the {b} configs"
        rows.append(("openmm-1ctx (CPU, Threads=1)", "cpu", "mixed", b, rate, n, note))
        print(f"  {rows[-1]}", file=sys.stderr)

    print(f"openmm-pool ({args.pool_workers} workers) ...", file=sys.stderr)
    bench_openmm_pool(system, x0, batches, min_time, rows, n_workers=args.pool_workers)

    default_threads = torch.get_num_threads()
    threads = ([int(t) for t in args.threads.split(",")] if args.threads
               else sorted({1, os.cpu_count() or 1}))
    for nt in threads:
        torch.set_num_threads(nt)
        for dtype in (torch.float64, torch.float32):
            print(f"torch cpu {dtype} threads={nt} ...", file=sys.stderr)
            bench_torch(system, x0, "cpu", dtype, "eager", batches, min_time, rows, notes=f"{nt} threads")
    torch.set_num_threads(default_threads)

    gpu = "none"
    if torch.cuda.is_available() and not args.no_cuda:
        gpu = torch.cuda.get_device_name(0)
        modes = ["eager"] + ([] if args.no_compile else ["default", "reduce-overhead"])
        for dtype in (torch.float64, torch.float32):
            for mode in modes:
                print(f"torch cuda {dtype} {mode} ...", file=sys.stderr)
                bench_torch(system, x0, "cuda", dtype, mode, batches, min_time, rows,
                            notes="CUDA graphs" if mode == "reduce-overhead" else "")

    lines = [
        "## Energy + force throughput: alanine dipeptide (22 atoms, Amber ff96 + OBC1, no cutoff)",
        "",
        f"- date: {datetime.datetime.now().isoformat(timespec='seconds')}",
        f"- CPU: {cpu_model()}, {os.cpu_count()} logical cores (os.cpu_count), "
        f"torch default threads {torch.get_num_threads()}; 1-min load average before the run "
        f"{load_before}",
        f"- GPU: {gpu}",
        f"- torch {torch.__version__}, OpenMM {openmm.__version__}, Python {platform.python_version()}",
        f"- mode: {'--quick' if args.quick else 'full'} (min {min_time} s per point); "
        "configs = pdb structure + 0.01 nm noise; configs/s from the median time per call",
        "",
        "| backend | device | dtype | batch | configs/s | us/config | configs timed | notes |",
        "|---|---|---|---:|---:|---:|---:|---|",
    ]
    for backend, device, dname, b, rate, n, note in rows:
        us = 1e6 / rate if rate == rate and rate > 0 else float("nan")
        lines.append(f"| {backend} | {device} | {dname} | {b} | {rate:,.0f} | {us:.1f} | {n} | {note} |")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
