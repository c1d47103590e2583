"""Starting data for a molecule: a short, cached, reproducible OpenMM Langevin MD run.

:func:`md_starting_data` energy-minimizes the given structure, then runs
``LangevinMiddleIntegrator`` dynamics (default 1 fs, 300 K, friction 1/ps; no constraints unless
the System has them) on the CPU platform with one thread, and keeps a frame every
``frame_every_steps`` steps (default 50 ps, every 10 steps: 5000 frames).  Velocities and the
integrator's random numbers are drawn from ``seed``, so a run is reproducible on a machine.

The result is cached as ``.npz`` in the cache directory (:func:`cache_dir`: ``$CGFLOW_CACHE_DIR``,
else ``$XDG_CACHE_HOME/cgflow``, else ``~/.cache/cgflow``), keyed by a hash of the System XML, the
starting positions, every MD parameter and the seed, and written atomically (temporary file +
``os.replace``).  A cached result reports the number of MD steps it cost to make.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cgflow.core.seeds import openmm_seed

__all__ = ["MDData", "cache_dir", "md_cache_key", "md_starting_data", "minimize_positions"]

_FORMAT_VERSION = 1


@dataclass
class MDData:
    """Frames of a starting MD run.

    Attributes:
        positions: (n_frames, N, 3) nm, float64.
        n_steps: MD steps (force evaluations) it cost to make them (minimization not included).
        from_cache: True if read from the cache.
        path: the cache file (None if it could not be written).
        meta: the MD parameters.
    """

    positions: np.ndarray
    n_steps: int
    from_cache: bool
    path: Path | None
    meta: dict


def cache_dir() -> Path:
    """``$CGFLOW_CACHE_DIR``, else ``$XDG_CACHE_HOME/cgflow``, else ``~/.cache/cgflow``."""
    env = os.environ.get("CGFLOW_CACHE_DIR")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "cgflow"


def md_cache_key(system_xml: str, positions: np.ndarray, params: dict) -> str:
    h = hashlib.sha256()
    h.update(f"cgflow-md-v{_FORMAT_VERSION}\n".encode())
    h.update(system_xml.encode())
    h.update(np.ascontiguousarray(positions, dtype=np.float64).tobytes())
    h.update(json.dumps(params, sort_keys=True).encode())
    return h.hexdigest()


def _cpu_context(system, integrator):
    import openmm

    platform = openmm.Platform.getPlatformByName("CPU")
    return openmm.Context(system, integrator, platform, {"Threads": "1"})


def minimize_positions(system, positions: np.ndarray, tolerance_kj_mol_nm: float = 1.0,
                       max_iterations: int = 0) -> np.ndarray:
    """Energy-minimized positions (N, 3) nm (OpenMM L-BFGS, CPU platform, one thread)."""
    import openmm
    import openmm.unit as unit

    ctx = _cpu_context(system, openmm.VerletIntegrator(0.001))
    ctx.setPositions(np.asarray(positions, dtype=np.float64))
    openmm.LocalEnergyMinimizer.minimize(ctx, tolerance_kj_mol_nm * unit.kilojoule_per_mole / unit.nanometer,
                                         max_iterations)
    out = ctx.getState(getPositions=True).getPositions(asNumpy=True).value_in_unit(unit.nanometer)
    del ctx
    return np.asarray(out, dtype=np.float64)


def md_starting_data(system, positions, *, temperature_K: float = 300.0, md_ps: float = 50.0,
                     frame_every_steps: int = 10, timestep_fs: float = 1.0, friction_per_ps: float = 1.0,
                     seed: int = 0, minimize: bool = True, use_cache: bool = True, progress: bool = True,
                     description: str = "MD") -> MDData:
    """Langevin MD frames from (the minimized) ``positions`` (N, 3) nm; cached (module docstring).

    The number of steps is ``round(md_ps * 1000 / timestep_fs)`` rounded down to a multiple of
    ``frame_every_steps``; frames are taken after steps ``k * frame_every_steps``, k = 1, 2, ...
    """
    import openmm

    positions = np.asarray(positions, dtype=np.float64)
    if frame_every_steps < 1:
        raise ValueError(f"frame_every_steps must be >= 1, got {frame_every_steps}")
    n_frames = int(round(md_ps * 1000.0 / timestep_fs)) // int(frame_every_steps)
    if n_frames < 1:
        raise ValueError(f"md_ps={md_ps} gives no frame at a frame every {frame_every_steps} steps of "
                         f"{timestep_fs} fs")
    n_steps = n_frames * int(frame_every_steps)
    params = {
        "temperature_K": float(temperature_K), "md_ps": float(md_ps), "frame_every_steps": int(frame_every_steps),
        "timestep_fs": float(timestep_fs), "friction_per_ps": float(friction_per_ps), "seed": int(seed),
        "minimize": bool(minimize), "integrator": "LangevinMiddleIntegrator", "platform": "CPU/Threads=1",
        "n_steps": n_steps,
    }
    xml = openmm.XmlSerializer.serialize(system)
    key = md_cache_key(xml, positions, params)
    path = cache_dir() / f"md-{key[:24]}.npz"
    if use_cache and path.is_file():
        try:
            with np.load(path, allow_pickle=False) as z:
                if str(z["key"]) == key:
                    return MDData(positions=np.array(z["positions"], dtype=np.float64), n_steps=int(z["n_steps"]),
                                  from_cache=True, path=path, meta=json.loads(str(z["meta"])))
        except Exception as exc:  # noqa: BLE001 - a broken cache file is rebuilt
            warnings.warn(f"ignoring unreadable MD cache file {path}: {exc}", stacklevel=2)

    frames = _run_md(system, positions, params, n_frames, progress, description)
    saved: Path | None = None
    if use_cache:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
            try:
                with os.fdopen(fd, "wb") as fh:
                    np.savez(fh, positions=frames, n_steps=np.int64(n_steps), key=np.str_(key),
                             meta=np.str_(json.dumps(params, sort_keys=True)))
                os.replace(tmp, path)
            except BaseException:
                if os.path.exists(tmp):
                    os.unlink(tmp)
                raise
            saved = path
        except OSError as exc:
            warnings.warn(f"could not write the MD cache file {path}: {exc}", stacklevel=2)
    return MDData(positions=frames, n_steps=n_steps, from_cache=False, path=saved, meta=params)


def _run_md(system, positions: np.ndarray, params: dict, n_frames: int, progress: bool, description: str):
    import openmm
    import openmm.unit as unit
    from tqdm.auto import tqdm

    from cgflow.core.progress import bars_disabled

    T = params["temperature_K"] * unit.kelvin
    integrator = openmm.LangevinMiddleIntegrator(T, params["friction_per_ps"] / unit.picosecond,
                                                 params["timestep_fs"] * unit.femtosecond)
    integrator.setRandomNumberSeed(openmm_seed(params["seed"], "integrator"))
    ctx = _cpu_context(system, integrator)
    ctx.setPositions(positions)
    if params["minimize"]:
        openmm.LocalEnergyMinimizer.minimize(ctx, 1.0 * unit.kilojoule_per_mole / unit.nanometer, 0)
    ctx.setVelocitiesToTemperature(T, openmm_seed(params["seed"], "velocities"))
    every = params["frame_every_steps"]
    n_atoms = system.getNumParticles()
    frames = np.empty((n_frames, n_atoms, 3), dtype=np.float64)
    with tqdm(total=n_frames * every, desc=description, unit="step", unit_scale=True, disable=bars_disabled(progress),
              leave=False) as bar:
        for k in range(n_frames):
            integrator.step(every)
            frames[k] = ctx.getState(getPositions=True).getPositions(asNumpy=True)._value
            if (k + 1) % 100 == 0 or k + 1 == n_frames:
                bar.update((k + 1) * every - bar.n)
    del ctx, integrator
    if not np.isfinite(frames).all():
        raise RuntimeError("the starting MD blew up (non-finite positions)")
    return frames
