"""The MD baseline: Langevin dynamics of a system, streaming the CG coordinates to disk.

Two engines:

* ``openmm``: OpenMM's LangevinMiddleIntegrator on the CPU platform with one thread (or any
  platform by name).  Systems that can be copied (Müller-Brown) run ``n_replicas``
  non-interacting copies in one context; molecules run one replica.
* ``torch``: ``n_replicas`` independent replicas integrated together by BAOAB with the
  differentiable torch energy (CPU or CUDA), for users with a GPU or many cores.

Every step costs one energy + force evaluation per replica, plus one per replica to start.

Run directory (resumable; every file written atomically, in the order chunk -> checkpoint ->
md.json, so a killed run resumes from the last checkpoint and drops any newer chunk):
    md.json           settings and progress: steps_done, evaluations, wall time ...
    cg_trajectory/    NNNNNN.npy chunks, float64 (frames, n_replicas, cg_dim); frame j (counted
                      over all chunks) is taken after (j + 1) * report_every_steps steps
    checkpoint.pt     integrator state (OpenMM checkpoint bytes or torch tensors + RNG state)
"""

from __future__ import annotations

import io
import json
import time
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field

from cgflow.baselines.langevin import BatchedLangevin, LangevinState
from cgflow.core.run_directory import (
    RunDirectoryError,
    atomic_torch_save,
    atomic_write,
    atomic_write_text,
    require_new_run_directory,
)
from cgflow.core.simulation_view import SimulationView

MD_JSON = "md.json"
TRAJ_DIR = "cg_trajectory"
CHECKPOINT = "checkpoint.pt"


class MDSettings(BaseModel):
    """Settings of an MD baseline run (saved in md.json)."""

    model_config = ConfigDict(extra="forbid")

    n_steps: int = Field(gt=0, description="steps per replica")
    engine: Literal["openmm", "torch"] = "openmm"
    n_replicas: int = Field(1, gt=0)
    report_every_steps: int = Field(100, gt=0, description="a CG frame every this many steps")
    frames_per_chunk: int = Field(1000, gt=0, description="frames per trajectory file = checkpoint interval")
    timestep_fs: float | None = Field(None, gt=0, description="None: the system's default")
    friction_per_ps: float = Field(1.0, gt=0)
    seed: int = 0
    device: str = "cpu"
    openmm_platform: str = "CPU"


def _openmm_seed(seed: int, stream: str) -> int:
    from cgflow.core.seeds import openmm_seed

    return openmm_seed(seed, stream)


class MDRun:
    """One MD baseline run in ``run_dir``.  ``MDRun(view, run_dir, settings)`` starts a new run
    (the directory must not exist or be empty); ``MDRun(view, run_dir, resume=True)`` continues."""

    def __init__(self, view: SimulationView, run_dir, settings: MDSettings | None = None, *, resume: bool = False,
                 system_label: str = "", progress: bool = True):
        self.view, self.run_dir, self.progress = view, Path(run_dir), progress
        if resume:
            if not (self.run_dir / MD_JSON).is_file():
                raise RunDirectoryError(f"cannot resume: {self.run_dir / MD_JSON} not found")
            self.info = json.loads((self.run_dir / MD_JSON).read_text())
            saved = MDSettings(**self.info["settings"])
            if settings is not None and settings.n_steps > saved.n_steps:
                saved = saved.model_copy(update={"n_steps": settings.n_steps})
            self.settings = saved
        else:
            require_new_run_directory(self.run_dir, "use --resume to continue it, or another --out")
            if settings is None:
                raise ValueError("settings are needed for a new MD run")
            self.settings = settings
            self.info = {"method": "md", "system": system_label or view.name, "settings": settings.model_dump(),
                         "n_replicas": settings.n_replicas, "report_every_steps": settings.report_every_steps,
                         "cg_dim": view.cg_dim, "cg_names": list(view.cg_names),
                         "cg_periodic": list(view.cg_periodic),
                         "cg_domain": [list(r) for r in view.cg_domain], "steps_done": 0, "n_chunks": 0,
                         "evaluations_offset": settings.n_replicas, "evaluations": settings.n_replicas,
                         "nonfinite_energies": 0, "wall_time_s": 0.0,
                         "timestep_fs": settings.timestep_fs or view.timestep_fs,
                         "temperature_K": view.temperature_K}
        s = self.settings
        if s.n_steps % s.report_every_steps:
            raise ValueError(f"n_steps ({s.n_steps}) must be a multiple of report_every_steps "
                             f"({s.report_every_steps})")
        self.timestep_fs = s.timestep_fs or view.timestep_fs
        (self.run_dir / TRAJ_DIR).mkdir(parents=True, exist_ok=True)
        self._engine = self._make_engine()
        if resume:
            self._restore()
        else:
            self._write_info()

    # --- engines --------------------------------------------------------------------------------
    def _make_engine(self):
        s, v = self.settings, self.view
        if s.engine == "openmm":
            import openmm
            import openmm.unit as unit

            system = v.make_openmm_system(s.n_replicas)
            integ = openmm.LangevinMiddleIntegrator(v.temperature_K * unit.kelvin, s.friction_per_ps / unit.picosecond,
                                                   self.timestep_fs * unit.femtosecond)
            integ.setRandomNumberSeed(_openmm_seed(s.seed, "md-integrator"))
            platform = openmm.Platform.getPlatformByName(s.openmm_platform)
            props = {"Threads": "1"} if s.openmm_platform == "CPU" else {}
            ctx = openmm.Context(system, integ, platform, props)
            ctx.setPositions(np.tile(v.positions, (s.n_replicas, 1)))
            ctx.setVelocitiesToTemperature(v.temperature_K * unit.kelvin, _openmm_seed(s.seed, "md-velocities"))
            return {"context": ctx, "integrator": integ}
        gen = torch.Generator(device=s.device)
        gen.manual_seed(int(s.seed))
        dyn = BatchedLangevin(v.reduced_energy_of_positions, v.masses_amu, v.temperature_K, self.timestep_fs,
                              s.friction_per_ps, gen, device=s.device)
        x0 = torch.as_tensor(v.positions, dtype=torch.float64, device=s.device)[None].repeat(s.n_replicas, 1, 1)
        return {"dynamics": dyn, "state": dyn.init_state(x0)}

    def _positions(self) -> np.ndarray:
        """Current positions, (n_replicas, n_particles, 3) nm."""
        n = self.view.n_particles
        if self.settings.engine == "openmm":
            pos = self._engine["context"].getState(getPositions=True).getPositions(asNumpy=True)._value
            return np.asarray(pos).reshape(self.settings.n_replicas, n, 3)
        return self._engine["state"].positions.detach().cpu().numpy()

    def _advance(self, n_steps: int) -> None:
        if self.settings.engine == "openmm":
            self._engine["integrator"].step(n_steps)
        else:
            self._engine["state"] = self._engine["dynamics"].step(self._engine["state"], n_steps)

    # --- persistence ----------------------------------------------------------------------------
    def _write_info(self) -> None:
        atomic_write_text(self.run_dir / MD_JSON, json.dumps(self.info, indent=1) + "\n")

    def _save_checkpoint(self) -> None:
        ck = {"steps_done": self.info["steps_done"], "n_chunks": self.info["n_chunks"],
              "nonfinite_energies": self.info["nonfinite_energies"], "wall_time_s": self.info["wall_time_s"]}
        if self.settings.engine == "openmm":
            ck["openmm"] = self._engine["context"].createCheckpoint()
        else:
            st: LangevinState = self._engine["state"]
            ck["torch"] = {"positions": st.positions.cpu(), "velocities": st.velocities.cpu(),
                           "forces": st.forces.cpu(), "energies_kT": st.energies_kT.cpu(),
                           "rng": self._engine["dynamics"].generator.get_state()}
        atomic_torch_save(self.run_dir / CHECKPOINT, ck)

    def _restore(self) -> None:
        path = self.run_dir / CHECKPOINT
        if not path.is_file():
            raise RunDirectoryError(f"cannot resume: {path} not found")
        ck = torch.load(path, weights_only=False)
        if self.settings.engine == "openmm":
            self._engine["context"].loadCheckpoint(ck["openmm"])
        else:
            t, dev = ck["torch"], self.settings.device
            self._engine["dynamics"].generator.set_state(t["rng"])
            self._engine["state"] = LangevinState(*(t[k].to(dev) for k in
                                                    ("positions", "velocities", "forces", "energies_kT")))
        for k in ("steps_done", "n_chunks", "nonfinite_energies", "wall_time_s"):
            self.info[k] = ck[k]
        self.info["evaluations"] = self.info["evaluations_offset"] + ck["steps_done"] * self.settings.n_replicas
        for p in (self.run_dir / TRAJ_DIR).glob("*.npy"):
            if int(p.stem) >= ck["n_chunks"]:
                p.unlink()  # written after the last checkpoint: redone now
        self.info["settings"] = self.settings.model_dump()

    # --- running --------------------------------------------------------------------------------
    def run(self) -> dict:
        """Run (or continue) to settings.n_steps; returns md.json's content."""
        from tqdm.auto import tqdm

        from cgflow.core.progress import bars_disabled

        s, every = self.settings, self.settings.report_every_steps
        with tqdm(total=s.n_steps, initial=self.info["steps_done"], desc=f"MD ({s.engine}, {s.n_replicas} "
                  f"replica{'s' * (s.n_replicas > 1)})", unit="step", unit_scale=True, disable=bars_disabled(self.progress),
                  leave=False) as bar:
            while self.info["steps_done"] < s.n_steps:
                t0 = time.perf_counter()
                n_frames = min(s.frames_per_chunk, (s.n_steps - self.info["steps_done"]) // every)
                frames = np.empty((n_frames, s.n_replicas, self.view.n_particles, 3))
                for j in range(n_frames):
                    self._advance(every)
                    frames[j] = self._positions()
                    bar.update(every)
                cg = self.view.cg_numpy(frames.reshape(-1, self.view.n_particles, 3))
                cg = cg.reshape(n_frames, s.n_replicas, self.view.cg_dim)
                path = self.run_dir / TRAJ_DIR / f"{self.info['n_chunks']:06d}.npy"
                _atomic_save_npy(path, cg)
                self.info["n_chunks"] += 1
                self.info["steps_done"] += n_frames * every
                self.info["evaluations"] = self.info["evaluations_offset"] + self.info["steps_done"] * s.n_replicas
                if s.engine == "torch":
                    self.info["nonfinite_energies"] = self._engine["dynamics"].n_nonfinite
                self.info["wall_time_s"] += time.perf_counter() - t0
                if not np.isfinite(frames).all():
                    raise RuntimeError(f"MD blew up before step {self.info['steps_done']} (non-finite positions); "
                                       f"try a smaller --timestep-fs")
                self._save_checkpoint()
                self._write_info()
        return self.info


def _atomic_save_npy(path: Path, array: np.ndarray) -> None:

    def write(fh):
        buf = io.BytesIO()
        np.save(buf, array)
        fh.write(buf.getvalue())

    atomic_write(path, write)


def read_cg_trajectory(run_dir) -> tuple[np.ndarray, dict]:
    """All CG frames of an MD run, (n_frames, n_replicas, cg_dim) float64, and md.json's content."""
    run_dir = Path(run_dir)
    info = json.loads((run_dir / MD_JSON).read_text())
    chunks = sorted((run_dir / TRAJ_DIR).glob("*.npy"))[: info["n_chunks"]]
    if not chunks:
        return np.empty((0, info["n_replicas"], info["cg_dim"])), info
    return np.concatenate([np.load(p) for p in chunks]), info
