"""Well-tempered metadynamics on the CG coordinates with OpenMM's ``app.Metadynamics``.

The PMF estimate is the well-tempered bias estimator ``F(s) = -(gamma / (gamma - 1)) V(s)``
(OpenMM's ``getFreeEnergy``), read off the bias grid and interpolated to the centres of the
evaluation bins; a snapshot is written every ``snapshot_every_steps`` so ``cgflow compare``
can draw accuracy against evaluations.  Every MD step is one energy + force evaluation (plus
one at the start).

Run directory: ``metad.json`` (settings, evaluations, wall time), ``pmf_history/``.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
from pydantic import BaseModel, ConfigDict, Field
from scipy.interpolate import RegularGridInterpolator

from cgflow.baselines.simulation_view import SimulationView
from cgflow.pmf_history import save_snapshot
from cgflow.run_directory import RunDirectoryError, atomic_write_text

METAD_JSON = "metad.json"


class MetadynamicsSettings(BaseModel):
    """Settings of a well-tempered metadynamics run (saved in metad.json)."""

    model_config = ConfigDict(extra="forbid")

    n_steps: int = Field(gt=0)
    bias_factor: float = Field(6.0, gt=1)
    height_kT: float = Field(0.5, gt=0, description="initial Gaussian height, kT")
    width_fraction: float = Field(0.05, gt=0, description="Gaussian width as a fraction of each CG domain")
    deposit_every_steps: int = Field(500, gt=0)
    snapshot_every_steps: int = Field(50_000, gt=0)
    margin_fraction: float = Field(0.15, ge=0, description="non-periodic CG: bias grid beyond the domain")
    grid_points: int = Field(101, gt=10)
    timestep_fs: float | None = Field(None, gt=0)
    friction_per_ps: float = Field(1.0, gt=0)
    n_bins: int = Field(100, gt=1)
    seed: int = 0

    def model_post_init(self, _ctx) -> None:
        if self.snapshot_every_steps % self.deposit_every_steps or self.n_steps % self.snapshot_every_steps:
            raise ValueError("need n_steps a multiple of snapshot_every_steps, itself a multiple of "
                             "deposit_every_steps")


class MetadynamicsRun:
    def __init__(self, view: SimulationView, run_dir, settings: MetadynamicsSettings, *, system_label: str = "",
                 progress: bool = True):
        self.view, self.run_dir, self.settings, self.progress = view, Path(run_dir), settings, progress
        if self.run_dir.exists() and any(self.run_dir.iterdir()):
            raise RunDirectoryError(f"run directory {self.run_dir} exists and is not empty; choose another --out")
        self.system_label = system_label or view.name
        self.edges = [np.linspace(lo, hi, settings.n_bins + 1) for lo, hi in view.cg_domain]
        self.run_dir.mkdir(parents=True, exist_ok=True)

    def _variables(self):
        import openmm.app as app

        st, v = self.settings, self.view
        out = []
        for force, (lo, hi), per in zip(v.make_cg_forces(), v.cg_domain, v.cg_periodic):
            width = st.width_fraction * (hi - lo)
            if not per:
                m = st.margin_fraction * (hi - lo)
                lo, hi = lo - m, hi + m
            out.append(app.BiasVariable(force, lo, hi, width, periodic=per, gridWidth=st.grid_points))
        return out

    def free_energy_on_bins(self, meta) -> np.ndarray:
        """The bias estimator of F (kT) at the evaluation-bin centres, shape (n_bins,) * cg_dim."""
        f = np.asarray(meta.getFreeEnergy()._value) / self.view.kT_kJ_per_mol
        # OpenMM stores the grid with the LAST variable first (outer products in reverse order)
        f = np.transpose(f, tuple(reversed(range(f.ndim)))) if f.ndim > 1 else f
        axes = [np.linspace(var.minValue, var.maxValue, var.gridWidth) for var in meta.variables]
        centers = np.meshgrid(*[0.5 * (e[1:] + e[:-1]) for e in self.edges], indexing="ij")
        pts = np.stack([c.ravel() for c in centers], axis=-1)
        return RegularGridInterpolator(axes, f)(pts).reshape(centers[0].shape)

    def run(self) -> dict:
        import openmm
        import openmm.app as app
        import openmm.unit as unit
        from tqdm.auto import tqdm

        from cgflow.molecules.starting_data import openmm_seed

        st, v = self.settings, self.view
        kT = v.kT_kJ_per_mol
        system = v.make_openmm_system(1)
        T = v.temperature_K * unit.kelvin
        meta = app.Metadynamics(system, self._variables(), T, st.bias_factor, st.height_kT * kT,
                                st.deposit_every_steps)
        integ = openmm.LangevinMiddleIntegrator(T, st.friction_per_ps / unit.picosecond,
                                               (st.timestep_fs or v.timestep_fs) * unit.femtosecond)
        integ.setRandomNumberSeed(openmm_seed(st.seed, "metad-integrator"))
        sim = app.Simulation(v.make_openmm_topology(1), system, integ, openmm.Platform.getPlatformByName("CPU"),
                             {"Threads": "1"})
        sim.context.setPositions(v.positions)
        sim.context.setVelocitiesToTemperature(T, openmm_seed(st.seed, "metad-velocities"))
        t0 = time.perf_counter()
        snaps = []
        with tqdm(total=st.n_steps, desc="well-tempered metadynamics", unit="step", unit_scale=True,
                  disable=not self.progress, leave=False) as bar:
            for i in range(st.n_steps // st.snapshot_every_steps):
                meta.step(sim, st.snapshot_every_steps)
                bar.update(st.snapshot_every_steps)
                steps = (i + 1) * st.snapshot_every_steps
                save_snapshot(self.run_dir, i + 1, self.edges, self.free_energy_on_bins(meta), steps + 1,
                              label=f"step {steps}")
                snaps.append(steps)
        info = {"method": "metadynamics", "system": self.system_label, "settings": st.model_dump(),
                "estimator": "well-tempered bias: F = -(gamma / (gamma - 1)) V, interpolated to bin centres",
                "evaluations": st.n_steps + 1, "wall_time_s": time.perf_counter() - t0,
                "temperature_K": v.temperature_K, "timestep_fs": st.timestep_fs or v.timestep_fs,
                "cg_names": list(v.cg_names)}
        atomic_write_text(self.run_dir / METAD_JSON, json.dumps(info, indent=1) + "\n")
        return info
