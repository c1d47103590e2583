"""Overhead of the dask energy backend against the local OpenMM pool, per batch (issue 12).

Alanine dipeptide (OBC1), energies + forces on the OpenMM CPU platform (Threads=1), the same number of
worker processes for both backends:

* ``local``: :class:`cgflow.systems.molecules.energy.openmm_pool.OpenMMEnergyPool` (pipes to pinned worker processes);
* ``dask``: :class:`cgflow.systems.molecules.energy.dask_pool.DaskEnergyPool` on a LocalCluster of single-thread
  worker processes (one OpenMM Context per worker, the chunks as dask tasks, TCP through the scheduler),
  with the local pool's chunk size (256) and with its own default (1024).

For batches of 64, 1024 and 16384 configurations: the median wall time of ``--repeats`` batches (half as many,
at least 3, for batches above 10000) after one warm-up batch, the backends taking turns batch by batch; overhead = dask median - local median (per batch and per configuration).  Prints a markdown
table and writes ``benchmarks/results/dask-overhead/overhead.csv`` (+ ``machine.txt``).  Usage::

    python benchmarks/bench_dask_overhead.py [--workers 2] [--repeats 7] [--batches 64,1024,16384]
"""

from __future__ import annotations

import argparse
import csv
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from bench_energy import build_system, configurations  # noqa: E402
from machine import describe_machine  # noqa: E402

from cgflow.systems.molecules.energy.dask_pool import DaskEnergyPool  # noqa: E402
from cgflow.systems.molecules.energy.openmm_pool import OpenMMEnergyPool  # noqa: E402

T = 300.0


def interleaved_medians(pools: dict, x, repeats: int) -> dict:
    """Median wall time (s) of one batch x per pool; the pools take turns batch by batch, so that a change
    of the machine's load (a shared machine) hits all of them alike.  One warm-up batch each."""
    for pool, chunk in pools.values():
        pool.max_chunk = chunk
        pool.reduced_energies_and_forces(x)
    times = {k: [] for k in pools}
    for _ in range(repeats):
        for k, (pool, chunk) in pools.items():
            pool.max_chunk = chunk
            t0 = time.perf_counter()
            pool.reduced_energies_and_forces(x)
            times[k].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--batches", default="64,1024,16384")
    ap.add_argument("--big-chunk", type=int, default=1024, help="the larger dask chunk size measured too")
    ap.add_argument("--out", type=Path, default=HERE / "results" / "dask-overhead")
    args = ap.parse_args()
    batches = [int(b) for b in args.batches.split(",")]
    system, x0 = build_system()
    xs = {b: configurations(x0, b, seed=b) for b in batches}
    machine = describe_machine()
    print(f"machine: {machine}; {args.workers} worker processes per backend, median of {args.repeats}")

    results = {}
    with OpenMMEnergyPool(system, T, n_workers=args.workers) as pool, \
            DaskEnergyPool(system, T, scheduler="local", n_workers=args.workers) as dpool:
        pools = {("local", 256): (pool, 256), ("dask", 256): (dpool, 256), ("dask", args.big_chunk): (dpool, args.big_chunk)}
        for b in batches:
            repeats = args.repeats if b < 10000 else max(3, args.repeats // 2)
            for (name, chunk), t in interleaved_medians(pools, xs[b], repeats).items():
                results[(name, chunk, b)] = t
                print(f"{name:5s} chunk {chunk:5d} batch {b:6d}: {t * 1e3:9.1f} ms (median of {repeats})", flush=True)

    rows = []
    for b in batches:
        local = results[("local", 256, b)]
        for chunk in (256, args.big_chunk):
            d = results[("dask", chunk, b)]
            rows.append({"batch": b, "workers": args.workers, "dask_max_chunk": chunk, "local_ms": local * 1e3,
                         "dask_ms": d * 1e3, "overhead_ms": (d - local) * 1e3,
                         "overhead_us_per_config": (d - local) / b * 1e6, "ratio": d / local})
    args.out.mkdir(parents=True, exist_ok=True)
    with open(args.out / "overhead.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    (args.out / "machine.txt").write_text(machine + f"\nrepeats: {args.repeats}; workers: {args.workers}\n")
    print("\n| batch | local pool (ms) | dask, chunk | dask (ms) | overhead per batch (ms) | per configuration (µs) | dask / local |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['batch']} | {r['local_ms']:.1f} | {r['dask_max_chunk']} | {r['dask_ms']:.1f} | "
              f"{r['overhead_ms']:+.1f} | {r['overhead_us_per_config']:+.1f} | {r['ratio']:.2f} |")


if __name__ == "__main__":
    main()
