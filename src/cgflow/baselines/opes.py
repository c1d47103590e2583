"""OPES and OPES-explore on the CG coordinates through the ``openmm-opes`` package (``openmm_opes.OPES``).

On-the-fly Probability Enhanced Sampling (Invernizzi & Parrinello, J. Phys. Chem. Lett. 11, 2731 (2020);
OPES-explore: J. Chem. Theory Comput. 18, 3988 (2022)).  The bias, the kernel density estimate and the
free-energy estimate are all the package's (no OPES of our own): this module builds the CG forces as
``openmm.app.BiasVariable`` s, runs OpenMM (CPU platform, one thread, LangevinMiddle) with ``OPES.step``,
and writes what ``cgflow metad`` writes, so ``cgflow compare`` and the benchmarks read it the same way:

* ``pmf_history/NNNNN.npz``: every ``snapshot_every_steps`` the package's free-energy estimate
  ``OPES.getFreeEnergy(correctSmoothing=corrected_fes)`` (the reweighted KDE, kJ/mol on its grid; with
  ``corrected_fes`` its smoothing correction), interpolated to the evaluation-bin centres, in kT, with the
  evaluations (every MD step is one energy + force evaluation, plus one at the start) and the MD
  wall-clock spent so far (from the first step; set-up and snapshot writing are counted separately).
* ``opes.json``: settings, the barrier and bias factor used, evaluations, wall time, kernels.
* ``checkpoint.pt``: written atomically after every snapshot (OpenMM's context checkpoint and the sampler's
  ``OPES.getState()``), so ``--resume`` continues a killed or finished run.  A resumed run is bit-for-bit
  the run that was never interrupted (same snapshots): the package's ``setState`` rebuilds its density
  caches from the kernels, which differs from the incrementally updated ones in the last bits, so the
  checkpoint also holds those caches and puts them back.

Units: barrier in kJ/mol (as the package and the papers), sigma in the CG coordinate's own units (rad for
torsions; the standard deviation of the *unbiased* distribution, the package's ``biasWidth``), the PMF in kT.
"""

from __future__ import annotations

import json
import os
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field
from scipy.interpolate import RegularGridInterpolator

from cgflow.core.run_directory import (
    RunDirectoryError,
    atomic_torch_save,
    atomic_write_text,
    require_new_run_directory,
)
from cgflow.core.simulation_view import SimulationView
from cgflow.pmf.history import DIRNAME as HISTORY_DIR
from cgflow.pmf.history import save_snapshot

OPES_JSON = "opes.json"
CHECKPOINT = "checkpoint.pt"
#: The CG dimensions OPES handles (the package's limit: 1-3 collective variables).
MAX_CG_DIM = 3

#: Settings that ``cgflow opes`` uses when not given: per system name, else GENERIC_DEFAULTS.
#: alanine-dipeptide: the winner of the tuning scan (benchmarks/opes_scan.py, docs/results.md): barrier
#: 40 kJ/mol, bias factor barrier / kT, a kernel every 250 steps, fixed sigma 0.15 rad, the smoothing-corrected
#: FES, 2 fs LangevinMiddle at 1/ps (KLD 0.036 at 1e6, 0.023 at 2e6 steps; the issue's pace 500: 0.06 at 1e6).
GENERIC_DEFAULTS: dict = {"barrier_kJ_per_mol": 40.0, "pace_steps": 500, "sigma": None, "corrected_fes": False}
SYSTEM_DEFAULTS: dict = {
    "alanine-dipeptide": {"barrier_kJ_per_mol": 40.0, "pace_steps": 250, "sigma": 0.15, "timestep_fs": 2.0,
                          "corrected_fes": True},
}
#: sigma when neither given nor a system default: this fraction of each CG domain's width.
GENERIC_SIGMA_FRACTION = 0.03


def default_settings(system_name: str) -> dict:
    """The default OPES settings (barrier_kJ_per_mol, pace_steps, sigma, corrected_fes and where set
    timestep_fs) of a system."""
    return dict(SYSTEM_DEFAULTS.get(system_name, GENERIC_DEFAULTS))


class OpesSettings(BaseModel):
    """Settings of an OPES run (saved in opes.json)."""

    model_config = ConfigDict(extra="forbid")

    n_steps: int = Field(gt=0, description="MD steps in all (on --resume: extend to)")
    barrier_kJ_per_mol: float = Field(40.0, gt=0, description="the free-energy barrier to overcome, kJ/mol "
                                                              "(the package's `barrier`)")
    bias_factor: float | None = Field(None, gt=1, description="gamma, dimensionless; None: barrier / kT "
                                                              "(the package's default)")
    pace_steps: int = Field(500, gt=0, description="a kernel every this many MD steps (the package's `frequency`)")
    sigma: float | None = Field(None, gt=0, description="kernel width in CG units (rad for torsions): the std of "
                                                        "the unbiased distribution; fixed unless adaptive_sigma. "
                                                        "None: 0.03 x each CG domain's width")
    adaptive_sigma: bool = Field(False, description="estimate the kernel width on the fly (the package's "
                                                    "`varianceFrequency`), sigma is then unused")
    variance_every_steps: int | None = Field(None, gt=0, description="adaptive_sigma: a CV sample for the "
                                                                     "variance every this many steps; None: "
                                                                     "pace_steps (must divide pace_steps)")
    explore: bool = Field(False, description="OPES-explore (the package's `exploreMode`)")
    corrected_fes: bool = Field(False, description="snapshots of the FES with the package's smoothing "
                                                   "correction (`getFreeEnergy(correctSmoothing=True)`)")
    pilot_factor: float = Field(2.0, gt=1, description="broadening of the pilot kernels of the correction")
    compression_threshold: float = Field(1.0, ge=0, description="kernels closer than this Mahalanobis "
                                                                "distance are merged (0: never)")
    snapshot_every_steps: int = Field(50_000, gt=0, description="a PMF snapshot and a checkpoint every this "
                                                                "many MD steps")
    margin_fraction: float = Field(0.15, ge=0, description="non-periodic CG: the KDE grid reaches this "
                                                           "fraction of the domain beyond each end")
    grid_points: int = Field(101, gt=10, description="KDE grid points per CG dimension")
    timestep_fs: float | None = Field(None, gt=0, description="MD time step, fs; None: the system's")
    friction_per_ps: float = Field(1.0, gt=0, description="Langevin friction, 1/ps")
    n_bins: int = Field(100, gt=1, description="evaluation bins per CG dimension (the snapshots' grid)")
    seed: int = Field(0, description="seeds the integrator and the initial velocities")

    def model_post_init(self, _ctx) -> None:
        if self.snapshot_every_steps % self.pace_steps or self.n_steps % self.snapshot_every_steps:
            raise ValueError(f"need n_steps ({self.n_steps}) a multiple of snapshot_every_steps "
                             f"({self.snapshot_every_steps}), itself a multiple of pace_steps ({self.pace_steps}); "
                             f"see --steps, --snapshot-every, --pace")
        if self.variance_every_steps is not None and self.pace_steps % self.variance_every_steps:
            raise ValueError(f"variance_every_steps ({self.variance_every_steps}) must divide pace_steps "
                             f"({self.pace_steps})")


@contextmanager
def _pinned(cpu_core: int | None):
    """This thread (and threads it creates: OpenMM's worker) on ``cpu_core``; the affinity restored after."""
    if cpu_core is None:
        yield
        return
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {int(cpu_core)})
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)


def check_view(view: SimulationView) -> None:
    """ValueError (one line) if OPES cannot run on this CG space."""
    if not 1 <= view.cg_dim <= MAX_CG_DIM:
        raise ValueError(f"OPES needs 1 to {MAX_CG_DIM} CG dimensions; {view.name} has {view.cg_dim} "
                         f"({', '.join(view.cg_names)}); choose fewer with --set cg=[...]")
    if len(set(view.cg_periodic)) != 1:
        raise ValueError("OPES cannot mix periodic and non-periodic CG coordinates")


class OpesRun:
    """One OPES run in ``run_dir``.  ``OpesRun(view, run_dir, settings)`` starts a new one (the directory must
    not exist or be empty; nothing is written before :meth:`run`); ``OpesRun(view, run_dir, resume=True)``
    continues one (``settings`` then may only raise n_steps)."""

    def __init__(self, view: SimulationView, run_dir, settings: OpesSettings | None = None, *, resume: bool = False,
                 system_label: str = "", progress: bool = True):
        self.view, self.run_dir, self.progress, self.resume = view, Path(run_dir), progress, resume
        check_view(view)
        if resume:
            path = self.run_dir / OPES_JSON
            if not path.is_file() or not (self.run_dir / CHECKPOINT).is_file():
                raise RunDirectoryError(f"cannot resume: {path if not path.is_file() else self.run_dir / CHECKPOINT}"
                                        f" not found")
            self.info = json.loads(path.read_text())
            saved = OpesSettings(**self.info["settings"])
            if settings is not None:
                if settings.n_steps < saved.n_steps:
                    raise ValueError(f"--steps {settings.n_steps} is below the {saved.n_steps} steps this run was "
                                     f"asked for; give more to extend it, or leave --steps out to finish it")
                saved = OpesSettings(**{**saved.model_dump(), "n_steps": settings.n_steps})
            self.settings = saved
        else:
            require_new_run_directory(self.run_dir, "use --resume to continue it, or another --out")
            if settings is None:
                raise ValueError("settings are needed for a new OPES run")
            self.settings = settings
            self.info = {"method": "opes-explore" if settings.explore else "opes",
                         "system": system_label or view.name}
        kT = view.kT_kJ_per_mol
        self.bias_factor = (self.settings.bias_factor if self.settings.bias_factor is not None
                            else self.settings.barrier_kJ_per_mol / kT)
        if self.bias_factor <= 1:
            raise ValueError(f"the bias factor (barrier / kT = {self.bias_factor:.3g} by default) must be > 1: "
                             f"raise --barrier-kJ or give --bias-factor")
        self.edges = [np.linspace(lo, hi, self.settings.n_bins + 1) for lo, hi in view.cg_domain]

    # --- the sampler ----------------------------------------------------------------------------
    def sigmas(self) -> list[float]:
        st = self.settings
        if st.sigma is not None:
            return [float(st.sigma)] * self.view.cg_dim
        return [GENERIC_SIGMA_FRACTION * (hi - lo) for lo, hi in self.view.cg_domain]

    def _variables(self):
        import openmm.app as app

        st, v = self.settings, self.view
        out = []
        for force, (lo, hi), per, sigma in zip(v.make_cg_forces(), v.cg_domain, v.cg_periodic, self.sigmas()):
            if not per:
                m = st.margin_fraction * (hi - lo)
                lo, hi = lo - m, hi + m
            out.append(app.BiasVariable(force, lo, hi, sigma, periodic=per, gridWidth=st.grid_points))
        return out

    def _make_opes(self, system):
        from openmm_opes import OPES

        st = self.settings
        var_every = (st.variance_every_steps or st.pace_steps) if st.adaptive_sigma else None
        return OPES(system, self._variables(), self.view.temperature_K, st.barrier_kJ_per_mol, st.pace_steps,
                    var_every, biasFactor=self.bias_factor, exploreMode=st.explore,
                    compressionThreshold=st.compression_threshold)

    def free_energy_on_bins(self, opes) -> np.ndarray:
        """The package's FES estimate (kT) at the evaluation-bin centres, shape (n_bins,) * cg_dim."""
        st = self.settings
        f = np.asarray(opes.getFreeEnergy(correctSmoothing=st.corrected_fes, pilotFactor=st.pilot_factor)._value)
        f = f / self.view.kT_kJ_per_mol
        # the package's grid, like OpenMM's, has the LAST variable first (slowest axis first)
        f = np.transpose(f, tuple(reversed(range(f.ndim)))) if f.ndim > 1 else f
        axes = [np.linspace(var.minValue, var.maxValue, var.gridWidth) for var in opes.variables]
        centers = np.meshgrid(*[0.5 * (e[1:] + e[:-1]) for e in self.edges], indexing="ij")
        pts = np.stack([c.ravel() for c in centers], axis=-1)
        return RegularGridInterpolator(axes, f)(pts).reshape(centers[0].shape)

    # --- checkpoints ----------------------------------------------------------------------------
    @staticmethod
    def _caches(opes) -> dict:
        # the density caches of every KDE of the sampler, which setState rebuilds (not bit-exactly)
        return {key: {name: np.array(getattr(kde, name)) for name in ("_logPG", "_logPK", "_peakPG", "_peakPK")}
                for key, kde in opes._kde.items()}

    def _save_checkpoint(self, sim, opes, progress: dict) -> None:
        ck = dict(progress, openmm=sim.context.createCheckpoint(), opes=opes.getState(), caches=self._caches(opes))
        atomic_torch_save(self.run_dir / CHECKPOINT, ck)

    def _restore(self, sim, opes) -> dict:
        ck = torch.load(self.run_dir / CHECKPOINT, weights_only=False)
        sim.context.loadCheckpoint(ck["openmm"])
        opes.setState(ck["opes"])
        for key, arrays in ck["caches"].items():
            kde = opes._kde[key]
            if len(arrays["_logPK"]) != kde.getNumKernels():
                raise RunDirectoryError(f"cannot resume: {self.run_dir / CHECKPOINT} does not match this "
                                        f"openmm-opes version")
            for name, value in arrays.items():
                setattr(kde, name, np.array(value))
        # snapshots written after this checkpoint (a run killed between the two) are redone
        for p in (self.run_dir / HISTORY_DIR).glob("*.npz"):
            if int(p.stem) > ck["n_snapshots"]:
                p.unlink()
        return {k: ck[k] for k in ("steps_done", "n_snapshots", "wall_time_s", "snapshot_time_s")}

    # --- running --------------------------------------------------------------------------------
    def run(self, cpu_core: int | None = None) -> dict:
        """Run (or continue) to settings.n_steps; returns opes.json's content.  ``cpu_core``: pin this thread
        and OpenMM's worker thread (created after) to that core for the run."""
        with _pinned(cpu_core):
            return self._run(cpu_core)

    def _run(self, cpu_core: int | None) -> dict:
        import openmm
        import openmm.app as app
        import openmm.unit as unit
        import openmm_opes
        from tqdm.auto import tqdm

        from cgflow.core.progress import bars_disabled
        from cgflow.core.seeds import openmm_seed

        st, v = self.settings, self.view
        t_setup = time.perf_counter()
        system = v.make_openmm_system(1)
        opes = self._make_opes(system)
        T = v.temperature_K * unit.kelvin
        timestep_fs = st.timestep_fs or v.timestep_fs
        integ = openmm.LangevinMiddleIntegrator(T, st.friction_per_ps / unit.picosecond, timestep_fs * unit.femtosecond)
        integ.setRandomNumberSeed(openmm_seed(st.seed, "opes-integrator"))
        sim = app.Simulation(v.make_openmm_topology(1), system, integ, openmm.Platform.getPlatformByName("CPU"),
                             {"Threads": "1"})
        if self.resume:
            progress = self._restore(sim, opes)
            self.info["n_resumes"] = int(self.info.get("n_resumes", 0)) + 1
        else:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            sim.context.setPositions(v.positions)
            sim.context.setVelocitiesToTemperature(T, openmm_seed(st.seed, "opes-velocities"))
            progress = {"steps_done": 0, "n_snapshots": 0, "wall_time_s": 0.0, "snapshot_time_s": 0.0}
        setup_s = time.perf_counter() - t_setup
        self.info.update({
            "settings": st.model_dump(), "package": f"openmm-opes {openmm_opes.__version__}",
            "barrier_kJ_per_mol": st.barrier_kJ_per_mol, "bias_factor": self.bias_factor,
            "sigma": None if st.adaptive_sigma else self.sigmas(), "kT_kJ_per_mol": v.kT_kJ_per_mol,
            "estimator": ("OPES.getFreeEnergy(correctSmoothing=True) (reweighted KDE, smoothing corrected)"
                          if st.corrected_fes else "OPES.getFreeEnergy() (reweighted KDE)")
                         + ", interpolated to bin centres",
            "platform": "CPU, Threads=1", "cpu_core": cpu_core, "temperature_K": v.temperature_K,
            "timestep_fs": timestep_fs, "cg_names": list(v.cg_names), "setup_time_s": setup_s,
            "evaluations_note": "every MD step is one energy + force evaluation, plus one at the start"})

        def write(finished: bool) -> None:
            # rewritten at every snapshot, so a run cut short still says what it did
            steps, md_s = progress["steps_done"], progress["wall_time_s"]
            self.info.update({"finished": finished, "steps_done": steps, "evaluations": steps + 1,
                              "wall_time_s": md_s, "snapshot_time_s": progress["snapshot_time_s"],
                              "steps_per_s": steps / md_s if md_s > 0 else None,
                              "n_kernels": int(opes.getNumKernels())})
            atomic_write_text(self.run_dir / OPES_JSON, json.dumps(self.info, indent=1) + "\n")

        every = st.snapshot_every_steps
        with tqdm(total=st.n_steps, initial=progress["steps_done"], desc=self.info["method"], unit="step",
                  unit_scale=True, disable=bars_disabled(self.progress), leave=False) as bar:
            while progress["steps_done"] < st.n_steps:
                t0 = time.perf_counter()
                opes.step(sim, every)
                t1 = time.perf_counter()
                progress["wall_time_s"] += t1 - t0
                progress["steps_done"] += every
                progress["n_snapshots"] += 1
                bar.update(every)
                steps = progress["steps_done"]
                save_snapshot(self.run_dir, progress["n_snapshots"], self.edges, self.free_energy_on_bins(opes),
                              steps + 1, label=f"step {steps}", wall_time_s=progress["wall_time_s"])
                progress["snapshot_time_s"] += time.perf_counter() - t1
                self._save_checkpoint(sim, opes, progress)
                write(steps >= st.n_steps)
        write(progress["steps_done"] >= st.n_steps)
        return self.info
