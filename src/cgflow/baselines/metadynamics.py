"""Well-tempered metadynamics on the CG coordinates with OpenMM's ``app.Metadynamics``.

The PMF estimate is the well-tempered bias estimator ``F(s) = -(gamma / (gamma - 1)) V(s)``
(OpenMM's ``getFreeEnergy``), read off the bias grid and interpolated to the centres of the
evaluation bins; a snapshot is written every ``snapshot_every_steps`` so ``cgflow compare``
can draw accuracy against evaluations, with the wall-clock of MD spent so far (from the first
step; OpenMM set-up and snapshot writing are counted separately in metad.json).  Every MD step
is one energy + force evaluation (plus one at the start).

The bias is :class:`WellTemperedBias`: OpenMM's algorithm, applied without a ``CustomCVForce``
when the CG coordinates are torsions, so a step costs what a plain MD step costs.

Run directory: ``metad.json`` (settings, evaluations, wall time), ``pmf_history/``.
"""

from __future__ import annotations

import json
import os
import time
from functools import reduce
from pathlib import Path

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field
from scipy.interpolate import RegularGridInterpolator

from cgflow.core.geometry import compute_dihedrals
from cgflow.core.run_directory import atomic_write_text, require_new_run_directory
from cgflow.core.simulation_view import SimulationView
from cgflow.core.units import MOLAR_GAS_CONSTANT_KJ_PER_MOL_K
from cgflow.pmf.history import save_snapshot

METAD_JSON = "metad.json"


class WellTemperedBias:
    """Well-tempered metadynamics bias on a grid, the same algorithm and grid layout as OpenMM's
    ``app.Metadynamics`` (Gaussians on a ``gridWidth`` grid spanning ``[minValue, maxValue]``, height
    ``h exp(-V(s) / (k dT))``, ``getFreeEnergy() = -((T + dT) / dT) V``, array axes in reverse variable
    order) but faster on small systems.

    OpenMM's class applies the bias through a ``CustomCVForce``, which evaluates the collective
    variables in a second, inner Context: on the CPU platform every step then pays a second round of
    thread-pool hand-offs (about 20 % of the step of a 22-atom molecule; much more when the threads are
    not on one core).  When every CG force is a single ``CustomTorsionForce("theta")`` (molecules: phi,
    psi ...) this class applies the same tabulated bias as one ``CustomCompoundBondForce``
    ``table(dihedral(...), ...)`` in the main Context, which costs next to nothing; otherwise it falls
    back to a ``CustomCVForce`` like OpenMM.  ``direct`` says which.  (OpenMM's CMAPTorsionForce gives
    the same bias but is 2x slower than plain MD on the CPU platform: benchmarks/bench_metad_speed.py.)
    """

    def __init__(self, system, variables, temperature_K: float, bias_factor: float, height_kJ: float,
                 frequency: int, *, allow_direct: bool = True):
        import openmm

        if bias_factor <= 1:
            raise ValueError("bias_factor must be > 1")
        if len(variables) not in (1, 2, 3):
            raise ValueError("metadynamics needs 1, 2 or 3 collective variables")
        per = {bool(v.periodic) for v in variables}
        if len(per) != 1:
            raise ValueError("metadynamics cannot mix periodic and non-periodic variables")
        self.variables, self.frequency = list(variables), int(frequency)
        self.temperature_K, self.bias_factor, self.height_kJ = float(temperature_K), float(bias_factor), float(height_kJ)
        self.periodic = per.pop()
        self.delta_T = self.temperature_K * (self.bias_factor - 1.0)
        self._kdT = MOLAR_GAS_CONSTANT_KJ_PER_MOL_K * self.delta_T
        self._widths = [int(v.gridWidth) for v in self.variables]
        self._limits = sum(([float(v.minValue), float(v.maxValue)] for v in self.variables), [])
        self._grids = [np.linspace(0.0, 1.0, w) for w in self._widths]
        self._var = [float(v._scaledVariance) for v in self.variables]
        self._total_bias = np.zeros(tuple(reversed(self._widths)))
        self.n_deposits = 0
        flat = self._total_bias.ravel()
        n = len(self.variables)
        if n == 1:
            self._table = openmm.Continuous1DFunction(flat, *self._limits, self.periodic)
        elif n == 2:
            self._table = openmm.Continuous2DFunction(*self._widths, flat, *self._limits, self.periodic)
        else:
            self._table = openmm.Continuous3DFunction(*self._widths, flat, *self._limits, self.periodic)
        torsions = self._single_torsions() if allow_direct and self.periodic else None
        self.kind = "cv" if torsions is None else "compound"
        self.direct = self.kind != "cv"
        if self.kind == "compound":
            particles = sorted({a for t in torsions for a in t})
            slot = {a: i + 1 for i, a in enumerate(particles)}
            args = ", ".join("dihedral({})".format(", ".join(f"p{slot[a]}" for a in t)) for t in torsions)
            self.force = openmm.CustomCompoundBondForce(len(particles), f"table({args})")
            self.force.addBond(particles, [])
            self.force.addTabulatedFunction("table", self._table)
        else:
            names = [f"cv{i}" for i in range(n)]
            self.force = openmm.CustomCVForce(f"table({', '.join(names)})")
            for name, v in zip(names, self.variables):
                self.force.addCollectiveVariable(name, v.force)
            self.force.addTabulatedFunction("table", self._table)
        self._torsions = torsions
        self._particles = sorted({a for t in torsions for a in t}) if torsions else None
        free = set(range(32)) - {f.getForceGroup() for f in system.getForces()}
        if not free:
            raise RuntimeError("no free force group left for the metadynamics bias")
        self.force_group = max(free)
        self.force.setForceGroup(self.force_group)
        system.addForce(self.force)

    def _single_torsions(self):
        """The four atoms of each CG force if every one is a single CustomTorsionForce('theta'), else None."""
        import openmm

        out = []
        for v in self.variables:
            f = v.force
            if not (isinstance(f, openmm.CustomTorsionForce) and f.getEnergyFunction().replace(" ", "") == "theta"
                    and f.getNumTorsions() == 1 and f.getNumGlobalParameters() == 0):
                return None
            out.append(tuple(int(a) for a in f.getTorsionParameters(0)[:4]))
        return out

    def collective_variables(self, context) -> np.ndarray:
        """The CV values of the current state (same convention as the CG forces: torsions in (-pi, pi])."""
        import openmm.unit as unit

        if not self.direct:
            return np.asarray(self.force.getCollectiveVariableValues(context), dtype=float)
        x = context.getState(getPositions=True).getPositions(asNumpy=True).value_in_unit(unit.nanometer)
        x = np.asarray(x)
        p = torch.from_numpy(x[np.asarray(self._torsions)])  # (n_torsions, 4, 3) nm
        return compute_dihedrals(p[:, 0], p[:, 1], p[:, 2], p[:, 3]).numpy()

    def bias_energy_kJ(self, context) -> float:
        import openmm.unit as unit

        e = context.getState(getEnergy=True, groups={self.force_group}).getPotentialEnergy()
        return float(e.value_in_unit(unit.kilojoule_per_mole))

    def deposit(self, context) -> None:
        """Add one well-tempered Gaussian at the current CV values."""
        s = self.collective_variables(context)
        height = self.height_kJ * np.exp(-self.bias_energy_kJ(context) / self._kdT)
        self.add_gaussian(s, height)
        self._table_to_context(context)

    def add_gaussian(self, position, height_kJ: float) -> None:
        """Exactly OpenMM's ``Metadynamics._addGaussian`` on the grid (without touching a Context)."""
        axis = []
        for x, v, grid, var in zip(position, self.variables, self._grids, self._var):
            u = (float(x) - v.minValue) / (v.maxValue - v.minValue)
            if self.periodic:
                u %= 1.0
            d = np.abs(grid - u)
            if self.periodic:
                d = np.minimum(d, np.abs(d - 1.0))
                d[-1] = d[0]
            axis.append(np.exp(-0.5 * d * d / var))
        g = axis[0] if len(axis) == 1 else reduce(np.multiply.outer, reversed(axis))
        self._total_bias += height_kJ * g
        self.n_deposits += 1

    def _table_to_context(self, context) -> None:
        flat = self._total_bias.ravel()
        if len(self.variables) == 1:
            self._table.setFunctionParameters(flat, *self._limits)
        else:
            self._table.setFunctionParameters(*self._widths, flat, *self._limits)
        self.force.updateParametersInContext(context)

    def step(self, simulation, steps: int) -> None:
        """Advance ``steps`` MD steps, depositing every ``frequency`` steps of ``simulation.currentStep``."""
        togo = int(steps)
        while togo > 0:
            n = min(togo, self.frequency - simulation.currentStep % self.frequency)
            simulation.step(n)
            if simulation.currentStep % self.frequency == 0:
                self.deposit(simulation.context)
            togo -= n

    def getFreeEnergy(self):
        """F = -((T + dT) / dT) V on the grid, kJ/mol (a Quantity), axes in reverse variable order (as OpenMM)."""
        import openmm.unit as unit

        return -((self.temperature_K + self.delta_T) / self.delta_T) * self._total_bias * unit.kilojoules_per_mole


#: Settings that ``cgflow metad`` uses when not given: per system name, else GENERIC_DEFAULTS.
#: alanine-dipeptide: tuned against reference-pmf.npz (forward KLD); see docs/benchmarks.md,
#: "Metadynamics speed" and benchmarks/metad_aldp.py.
GENERIC_DEFAULTS = {"bias_factor": 6.0, "height_kT": 0.5, "width_fraction": 0.05, "deposit_every_steps": 500}
SYSTEM_DEFAULTS = {
    "alanine-dipeptide": {"bias_factor": 6.0, "height_kT": 1.2 / (MOLAR_GAS_CONSTANT_KJ_PER_MOL_K * 300.0),
                          "width_fraction": 0.35 / (2 * np.pi), "deposit_every_steps": 500, "timestep_fs": 2.0},
}


def default_settings(system_name: str) -> dict:
    """The default WT-metaD settings (bias_factor, height_kT, width_fraction, deposit_every_steps, and
    where tuned timestep_fs) of a system."""
    return dict(SYSTEM_DEFAULTS.get(system_name, GENERIC_DEFAULTS))


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
    direct_bias: bool = Field(True, description="torsion CVs: bias as one CustomCompoundBondForce instead of "
                                                "OpenMM's CustomCVForce (same bias, faster)")

    def model_post_init(self, _ctx) -> None:
        if self.snapshot_every_steps % self.deposit_every_steps or self.n_steps % self.snapshot_every_steps:
            raise ValueError("need n_steps a multiple of snapshot_every_steps, itself a multiple of "
                             "deposit_every_steps")


class MetadynamicsRun:
    def __init__(self, view: SimulationView, run_dir, settings: MetadynamicsSettings, *, system_label: str = "",
                 progress: bool = True):
        self.view, self.run_dir, self.settings, self.progress = view, Path(run_dir), settings, progress
        require_new_run_directory(self.run_dir)
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

    def run(self, cpu_core: int | None = None) -> dict:
        """Run it.  ``cpu_core``: pin this thread and OpenMM's worker thread (created after) to that core
        for the run (the calling thread's affinity is restored afterwards)."""
        if cpu_core is None:
            return self._run(None)
        before = os.sched_getaffinity(0)
        os.sched_setaffinity(0, {int(cpu_core)})
        try:
            return self._run(cpu_core)
        finally:
            os.sched_setaffinity(0, before)

    def _run(self, cpu_core: int | None) -> dict:
        import openmm
        import openmm.app as app
        import openmm.unit as unit
        from tqdm.auto import tqdm

        from cgflow.core.progress import bars_disabled
        from cgflow.core.seeds import openmm_seed

        st, v = self.settings, self.view
        t_setup = time.perf_counter()
        kT = v.kT_kJ_per_mol
        system = v.make_openmm_system(1)
        T = v.temperature_K * unit.kelvin
        meta = WellTemperedBias(system, self._variables(), v.temperature_K, st.bias_factor, st.height_kT * kT,
                                st.deposit_every_steps, allow_direct=st.direct_bias)
        integ = openmm.LangevinMiddleIntegrator(T, st.friction_per_ps / unit.picosecond,
                                               (st.timestep_fs or v.timestep_fs) * unit.femtosecond)
        integ.setRandomNumberSeed(openmm_seed(st.seed, "metad-integrator"))
        sim = app.Simulation(v.make_openmm_topology(1), system, integ, openmm.Platform.getPlatformByName("CPU"),
                             {"Threads": "1"})
        sim.context.setPositions(v.positions)
        sim.context.setVelocitiesToTemperature(T, openmm_seed(st.seed, "metad-velocities"))
        setup_s = time.perf_counter() - t_setup
        md_s = snapshot_s = 0.0
        info = {"method": "metadynamics", "system": self.system_label, "settings": st.model_dump(),
                "estimator": "well-tempered bias: F = -(gamma / (gamma - 1)) V, interpolated to bin centres",
                "bias_force": "CustomCompoundBondForce (direct)" if meta.direct else "CustomCVForce",
                "platform": "CPU, Threads=1", "cpu_core": cpu_core, "temperature_K": v.temperature_K,
                "timestep_fs": st.timestep_fs or v.timestep_fs, "cg_names": list(v.cg_names),
                "setup_time_s": setup_s}

        def write(steps_done: int, finished: bool) -> None:
            # rewritten at every snapshot, so a run cut short still says what it did
            info.update({"finished": finished, "steps_done": steps_done, "evaluations": steps_done + 1,
                         "wall_time_s": md_s, "snapshot_time_s": snapshot_s,
                         "steps_per_s": steps_done / md_s if md_s > 0 else None, "n_deposits": meta.n_deposits})
            atomic_write_text(self.run_dir / METAD_JSON, json.dumps(info, indent=1) + "\n")

        with tqdm(total=st.n_steps, desc="well-tempered metadynamics", unit="step", unit_scale=True,
                  disable=bars_disabled(self.progress), leave=False) as bar:
            for i in range(st.n_steps // st.snapshot_every_steps):
                t0 = time.perf_counter()
                meta.step(sim, st.snapshot_every_steps)
                t1 = time.perf_counter()
                md_s += t1 - t0
                bar.update(st.snapshot_every_steps)
                steps = (i + 1) * st.snapshot_every_steps
                save_snapshot(self.run_dir, i + 1, self.edges, self.free_energy_on_bins(meta), steps + 1,
                              label=f"step {steps}", wall_time_s=md_s)
                snapshot_s += time.perf_counter() - t1
                write(steps, steps == st.n_steps)
        return info
