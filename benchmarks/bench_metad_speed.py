"""Steps per second of well-tempered metadynamics against plain MD of the same alanine dipeptide
openmm.System (OpenMM CPU platform, Threads=1, LangevinMiddle 1 fs, 300 K, 1/ps, no constraints).

Variants, run interleaved (round robin, ``--repeats`` rounds) so that a change of machine load hits
all of them alike; the median rate over rounds is reported with the process's user / system CPU
time per 1e4 steps (``os.times``, all threads):

    plain        ``Simulation.step`` of the bare System;
    openmm-metad OpenMM's ``app.Metadynamics`` (bias as a CustomCVForce with an inner Context), the
                 implementation `cgflow metad` used before;
    compound-bias :class:`cgflow.baselines.metadynamics.WellTemperedBias` with the same bias as one
                 CustomCompoundBondForce ``table(dihedral(..), dihedral(..))`` in the main Context;
    cmap-bias    the same bias (identical periodic bicubic interpolation) as OpenMM's native
                 CMAPTorsionForce, a new map every 500 steps (not used: slower);
    cgflow-metad the whole `cgflow metad` loop (MetadynamicsRun: compound bias, PMF snapshot every
                 --snapshot-every steps, no progress bar).

Pin it: ``OMP_NUM_THREADS=1 taskset -c 1 python benchmarks/bench_metad_speed.py``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np


def _simulation(view, system, seed=1):
    import openmm
    import openmm.app as app
    import openmm.unit as unit

    T = view.temperature_K * unit.kelvin
    integ = openmm.LangevinMiddleIntegrator(T, 1 / unit.picosecond, view.timestep_fs * unit.femtosecond)
    integ.setRandomNumberSeed(seed)
    sim = app.Simulation(view.make_openmm_topology(1), system, integ, openmm.Platform.getPlatformByName("CPU"),
                         {"Threads": "1"})
    sim.context.setPositions(view.positions)
    sim.context.setVelocitiesToTemperature(T, seed)
    return sim


def _variables(view):
    import openmm.app as app

    return [app.BiasVariable(f, lo, hi, 0.35, periodic=True, gridWidth=101)
            for f, (lo, hi) in zip(view.make_cg_forces(), view.cg_domain)]


def make_runners(view, snapshot_every: int):
    """name -> callable(n_steps) advancing that variant by n steps (set up once, before timing)."""
    import openmm
    import openmm.app as app
    import openmm.unit as unit

    from cgflow.baselines.metadynamics import MetadynamicsRun, MetadynamicsSettings, WellTemperedBias

    out = {}
    sim_plain = _simulation(view, view.make_openmm_system(1))
    out["plain"] = sim_plain.step

    s1 = view.make_openmm_system(1)
    om = app.Metadynamics(s1, _variables(view), view.temperature_K * unit.kelvin, 6.0, 1.2, 500)
    sim_om = _simulation(view, s1)
    out["openmm-metad"] = lambda n: om.step(sim_om, n)

    s2 = view.make_openmm_system(1)
    wt = WellTemperedBias(s2, _variables(view), view.temperature_K, 6.0, 1.2, 500)
    assert wt.direct
    sim_wt = _simulation(view, s2)
    out["compound-bias"] = lambda n: wt.step(sim_wt, n)

    s3 = view.make_openmm_system(1)  # the same bias as OpenMM's native CMAP (measured: slower)
    cmap = openmm.CMAPTorsionForce()
    size = wt._widths[0] - 1
    cmap.addMap(size, np.zeros(size * size))
    cmap.addTorsion(0, *wt._torsions[0], *wt._torsions[1])
    cmap.setForceGroup(31)
    s3.addForce(cmap)
    sim_cmap = _simulation(view, s3)
    rng = np.random.default_rng(0)

    def cmap_step(n):
        for _ in range(n // 500):
            sim_cmap.step(500)
            cmap.setMapParameters(0, size, rng.uniform(0, 1, size * size))
            cmap.updateParametersInContext(sim_cmap.context)

    out["cmap-bias"] = cmap_step

    tmp = Path(tempfile.mkdtemp(prefix="bench-metad-"))
    counter = [0]

    def full(n):
        counter[0] += 1
        st = MetadynamicsSettings(n_steps=n, snapshot_every_steps=snapshot_every, deposit_every_steps=500,
                                  seed=counter[0])
        MetadynamicsRun(view, tmp / f"r{counter[0]}", st, system_label="aldp", progress=False).run()

    out["cgflow-metad"] = full
    return out, tmp


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=20_000, help="steps per variant per round")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--snapshot-every", type=int, default=5_000)
    a = ap.parse_args()
    from machine import describe_machine

    from cgflow.systems.molecules.molecule_system import alanine_dipeptide

    view = alanine_dipeptide(progress=False).simulation_view()
    runners, tmp = make_runners(view, a.snapshot_every)
    for f in runners.values():  # warm up (first-step allocations)
        f(a.snapshot_every)
    print(describe_machine(), f"| affinity {sorted(os.sched_getaffinity(0))} | load before "
          f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    res = {k: [] for k in runners}
    for _ in range(a.repeats):
        for name, f in runners.items():
            t0, w0 = os.times(), time.perf_counter()
            f(a.steps)
            t1, w1 = os.times(), time.perf_counter()
            res[name].append((a.steps / (w1 - w0), (t1.user - t0.user) * 1e4 / a.steps,
                              (t1.system - t0.system) * 1e4 / a.steps))
    shutil.rmtree(tmp, ignore_errors=True)
    print(f"load after {' '.join(f'{x:.2f}' for x in os.getloadavg())}; {a.steps} steps x {a.repeats} rounds")
    print(f"{'variant':14s} {'steps/s (median)':>17s} {'min':>7s} {'max':>7s} {'user s/1e4':>11s} {'sys s/1e4':>10s}")
    for name, rows in res.items():
        r = np.array(rows)
        print(f"{name:14s} {statistics.median(r[:, 0]):17.0f} {r[:, 0].min():7.0f} {r[:, 0].max():7.0f} "
              f"{np.median(r[:, 1]):11.2f} {np.median(r[:, 2]):10.2f}")


if __name__ == "__main__":
    main()
