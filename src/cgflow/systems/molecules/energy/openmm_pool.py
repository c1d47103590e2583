"""Energies and forces of batches of configurations from a pool of OpenMM worker processes.

:class:`OpenMMEnergyPool` starts ``n_workers`` processes (multiprocessing, ``spawn`` context by
default), each holding ONE OpenMM ``Context`` on the CPU platform with ``Threads=1`` and pinned to
its own core (``os.sched_setaffinity``, round-robin over the cores this process may use).  A batch
``(B, N, 3)`` is cut into chunks that are handed out to idle workers; each worker evaluates its
configurations one by one (``setPositions`` + ``getState(energy, forces)``).

Robustness:

* a configuration with non-finite coordinates, coordinates beyond ``max_abs_coordinate`` or for
  which OpenMM raises gets a NaN energy and NaN forces; a non-finite energy always comes with NaN
  forces.  Bad inputs never raise.
* a worker that dies (killed, crashed) is detected (EOF on its pipe or its process sentinel),
  restarted, and its chunk is retried once; a chunk that kills a fresh worker again raises
  :class:`WorkerError` (the pool itself stays usable).
* workers are daemon processes, closed by :meth:`OpenMMEnergyPool.close`, by the context manager,
  by garbage collection, and at interpreter exit (``atexit``).

Units: positions in nm; :meth:`OpenMMEnergyPool.reduced_energies_and_forces` returns reduced energies
``E / kT`` (dimensionless) and reduced forces ``F / kT`` (1/nm).  :meth:`OpenMMEnergyPool.reduced_energy`
is the differentiable torch interface (gradient ``-F / kT``) shared with
:class:`cgflow.systems.molecules.energy.torch_energy.TorchEnergy`.

The workers do not re-import the ``__main__`` script (see ``reimport_main``), so they start in
well under a second and a script needs no ``if __name__ == "__main__":`` guard for them (a guard
is still good practice).
"""

from __future__ import annotations

import atexit
import math
import multiprocessing as mp
import os
import signal
import sys
import threading
import types
import weakref
from contextlib import contextmanager
from multiprocessing.connection import wait as mp_wait

import numpy as np

from cgflow.core.threads import allowed_cores
from cgflow.core.units import kT_kJ_per_mol

__all__ = ["BatchEnergyPool", "OpenMMEnergyPool", "WorkerError", "reduced_energy_torch", "chunk_bounds",
           "evaluate_chunk", "LIVE_POOLS"]


class WorkerError(RuntimeError):
    """A worker process failed in a way that is not a property of one configuration."""


def chunk_bounds(b: int, n_workers: int, max_chunk: int) -> list[tuple[int, int]]:
    """Cut a batch of ``b`` configurations into contiguous chunks ``[(start, end), ...]``: at least one
    per worker (if ``b`` allows), at most ``max_chunk`` configurations each, sizes differing by <= 1."""
    if b == 0:
        return []
    n = max(n_workers, math.ceil(b / max_chunk))
    n = min(n, b)
    bounds = np.linspace(0, b, n + 1).round().astype(int)
    return [(int(s), int(e)) for s, e in zip(bounds[:-1], bounds[1:]) if e > s]


# --------------------------------------------------------------------------------------------
# worker side
# --------------------------------------------------------------------------------------------


def evaluate_chunk(context, x: np.ndarray, max_abs: float) -> tuple[np.ndarray, np.ndarray]:
    """Energies (kJ/mol) and forces (kJ/mol/nm) of x (b, N, 3) nm, one configuration at a time."""
    b, n = x.shape[0], x.shape[1]
    energies = np.full(b, np.nan)
    forces = np.full((b, n, 3), np.nan)
    for i in range(b):
        xi = x[i]
        if not np.isfinite(xi).all() or np.abs(xi).max() > max_abs:
            continue
        try:
            context.setPositions(xi)
            state = context.getState(getEnergy=True, getForces=True)
            e = float(state.getPotentialEnergy()._value)  # kJ/mol (OpenMM's MD unit system)
            if math.isfinite(e):
                energies[i] = e
                forces[i] = state.getForces(asNumpy=True)._value  # kJ/mol/nm
            else:
                energies[i] = e
        except Exception:  # noqa: BLE001 - any OpenMM failure of this configuration -> NaN
            energies[i] = np.nan
    return energies, forces


def _worker_main(conn, system_xml: str, platform_name: str, properties: dict, core, max_abs: float) -> None:
    """Worker loop: build one Context, then answer ("eval", tag, x) messages until None/EOF."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is handled by the parent
    if core is not None and hasattr(os, "sched_setaffinity"):
        try:
            os.sched_setaffinity(0, {int(core)})
        except OSError:
            pass
    try:
        import openmm

        system = openmm.XmlSerializer.deserialize(system_xml)
        platform = openmm.Platform.getPlatformByName(platform_name)
        context = openmm.Context(system, openmm.VerletIntegrator(0.001), platform, dict(properties))
    except Exception as exc:  # noqa: BLE001 - report to the parent
        conn.send(("error", f"{type(exc).__name__}: {exc}"))
        conn.close()
        return
    conn.send(("ready", os.getpid()))
    while True:
        try:
            msg = conn.recv()
        except (EOFError, OSError):
            break
        if msg is None:
            break
        tag, x = msg
        e, f = evaluate_chunk(context, x, max_abs)
        try:
            conn.send((tag, e, f))
        except (BrokenPipeError, OSError):
            break
    conn.close()


# --------------------------------------------------------------------------------------------
# parent side
# --------------------------------------------------------------------------------------------


@contextmanager
def _without_main_module():
    """Hide the ``__main__`` module while a worker is started, so that the spawned worker does not
    re-import the user's script (the worker function lives in this module and needs nothing from
    ``__main__``; re-importing a script that imports torch costs seconds per worker)."""
    main = sys.modules.get("__main__")
    sys.modules["__main__"] = types.ModuleType("__main__")  # no __file__, __spec__ None
    try:
        yield
    finally:
        if main is not None:
            sys.modules["__main__"] = main


class _Worker:
    def __init__(self, process, conn, core):
        self.process = process
        self.conn = conn
        self.core = core
        self.task = None  # (chunk index, attempt) while busy

    def alive(self) -> bool:
        return self.process.is_alive()


LIVE_POOLS: weakref.WeakSet[BatchEnergyPool] = weakref.WeakSet()  # closed at exit (also dask pools)


@atexit.register
def _close_all_pools() -> None:
    for pool in list(LIVE_POOLS):
        try:
            pool.close()
        except Exception:  # noqa: BLE001 - best effort at exit
            pass


class BatchEnergyPool:
    """What every pool of OpenMM workers shares: given ``reduced_energies_and_forces(x (B, N, 3) nm) -> (E/kT (B,),
    F/kT (B, N, 3))``, ``kT`` and ``close()``, the differentiable torch interface and the context manager.
    Subclasses: :class:`OpenMMEnergyPool` (local processes), :class:`cgflow.systems.molecules.energy.dask_pool.DaskEnergyPool`."""

    kT: float
    n_particles: int
    n_evaluations: int
    _closed: bool
    _lock: threading.Lock

    def _run(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:  # pragma: no cover - abstract
        """Energies (kJ/mol) (B,) and forces (kJ/mol/nm) (B, N, 3) of x (B, N, 3) nm, in order."""
        raise NotImplementedError

    def close(self) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def reduced_energies_and_forces(self, x) -> tuple[np.ndarray, np.ndarray]:
        """Reduced energies ``E/kT`` (B,) and reduced forces ``F/kT`` (B, N, 3) in 1/nm, in the order of x.

        x: positions (B, N, 3) (or (N, 3) for one configuration) in nm, any float dtype.
        Bad configurations give NaN energies and NaN forces; nothing raises for them.  Every configuration
        is counted once in ``n_evaluations`` (retries of failed workers are not).
        """
        x = np.asarray(x, dtype=np.float64)
        if x.ndim == 2:
            x = x[None]
        if x.ndim != 3 or x.shape[1:] != (self.n_particles, 3):
            raise ValueError(f"positions must have shape (B, {self.n_particles}, 3), got {x.shape}")
        with self._lock:
            if self._closed:
                raise RuntimeError(f"the {type(self).__name__} is closed")
            e, f = self._run(np.ascontiguousarray(x))
            self.n_evaluations += x.shape[0]
        return e / self.kT, f / self.kT

    # --- torch interface ------------------------------------------------------------------------
    def reduced_energy(self, x):
        """Differentiable reduced energy ``E/kT`` (B,) of a torch tensor x (B, N, 3) nm; the gradient
        is ``-F/kT``.  Same dtype/device as x.  See :func:`reduced_energy_torch`."""
        return reduced_energy_torch(self, x)

    reduced_energy_torch = reduced_energy

    def energy_and_forces_kJ_per_mol(self, x):
        """TorchEnergy-like: (E (B,) kJ/mol, F (B, N, 3) kJ/mol/nm) as torch tensors like x."""
        import torch

        u, f = self.reduced_energies_and_forces(x.detach().cpu().numpy())
        return (torch.as_tensor(u * self.kT, dtype=x.dtype, device=x.device),
                torch.as_tensor(f * self.kT, dtype=x.dtype, device=x.device))

    # --- life cycle ---------------------------------------------------------------------------
    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self):
        try:
            self.close()
        except Exception:  # noqa: BLE001
            pass


class OpenMMEnergyPool(BatchEnergyPool):
    """A pool of OpenMM worker processes evaluating energies and forces of batches.

    Args:
        system: the ``openmm.System`` (serialized once and rebuilt in every worker).
        temperature_K: temperature for the reduced (``/ kT``) energies and forces.
        n_workers: number of processes; default: the number of cores this process may use.
        platform: OpenMM platform of the workers' Contexts ("CPU"; "Reference" for exact tests).
        pin: pin worker i to core ``allowed_cores()[i % n_cores]`` (where supported).
        start_method: multiprocessing start method ("spawn" or "forkserver").
        max_chunk: largest number of configurations sent to a worker at once.
        max_abs_coordinate: configurations with any |coordinate| above this (nm) get NaN.
        startup_timeout_s: how long to wait for a worker to build its Context.
        reimport_main: let the workers import the ``__main__`` script as multiprocessing normally
            does (default False: they only import this module, numpy and openmm).

    Attributes:
        n_evaluations: configurations passed to :meth:`reduced_energies_and_forces` so far (each counted
            once, including those answered with NaN, not counting retries).
        kT: k_B T in kJ/mol.
        n_particles: N.
    """

    def __init__(self, system, temperature_K: float, n_workers: int | None = None, *, platform: str = "CPU",
                 pin: bool = True, start_method: str = "spawn", max_chunk: int = 256,
                 max_abs_coordinate: float = 1e5, startup_timeout_s: float = 120.0, reimport_main: bool = False):
        import openmm

        self.n_particles = int(system.getNumParticles())
        self.temperature_K = float(temperature_K)
        self.kT = kT_kJ_per_mol(self.temperature_K)
        cores = allowed_cores()
        self.n_workers = int(n_workers) if n_workers is not None else max(1, len(cores) or (os.cpu_count() or 1))
        if self.n_workers < 1:
            raise ValueError(f"n_workers must be >= 1, got {n_workers}")
        self.platform = platform
        self.properties = {"Threads": "1"} if platform == "CPU" else {}
        self.pin = bool(pin) and bool(cores) and hasattr(os, "sched_setaffinity")
        self._cores = cores
        self.max_chunk = int(max_chunk)
        self.max_abs_coordinate = float(max_abs_coordinate)
        self.startup_timeout_s = float(startup_timeout_s)
        self.reimport_main = bool(reimport_main)
        self.n_evaluations = 0
        self.n_restarts = 0
        self._system_xml = openmm.XmlSerializer.serialize(system)
        self._ctx = mp.get_context(start_method)
        self._lock = threading.Lock()
        self._closed = False
        self._workers: list[_Worker] = []
        try:
            for i in range(self.n_workers):
                self._workers.append(self._start_worker(i, wait=False))
            for w in self._workers:
                self._wait_ready(w)
        except BaseException:
            self.close()
            raise
        LIVE_POOLS.add(self)

    # --- workers ------------------------------------------------------------------------------
    def _core_of(self, i: int):
        return self._cores[i % len(self._cores)] if self.pin else None

    def _start_worker(self, i: int, wait: bool = True) -> _Worker:
        parent_conn, child_conn = self._ctx.Pipe(duplex=True)
        core = self._core_of(i)
        proc = self._ctx.Process(
            target=_worker_main,
            args=(child_conn, self._system_xml, self.platform, self.properties, core, self.max_abs_coordinate),
            name=f"cgflow-openmm-worker-{i}",
            daemon=True,
        )
        if self.reimport_main:
            proc.start()
        else:
            with _without_main_module():
                proc.start()
        child_conn.close()  # so that the worker's death gives EOF here
        w = _Worker(proc, parent_conn, core)
        if wait:
            self._wait_ready(w)
        return w

    def _wait_ready(self, w: _Worker) -> None:
        ready = mp_wait([w.conn, w.process.sentinel], timeout=self.startup_timeout_s)
        if w.conn not in ready:
            if not ready:
                w.process.kill()
            raise WorkerError(f"an OpenMM worker did not start (exit code {w.process.exitcode})")
        try:
            msg = w.conn.recv()
        except (EOFError, OSError) as exc:
            raise WorkerError(f"an OpenMM worker died while starting (exit code {w.process.exitcode})") from exc
        if msg[0] == "error":
            raise WorkerError(f"an OpenMM worker could not create its Context: {msg[1]}")

    def _restart(self, i: int) -> None:
        old = self._workers[i]
        try:
            old.conn.close()
        except OSError:
            pass
        if old.process.is_alive():
            old.process.kill()
        old.process.join(timeout=5)
        self._workers[i] = self._start_worker(i)
        self.n_restarts += 1

    @property
    def worker_pids(self) -> list[int]:
        return [w.process.pid for w in self._workers]

    # --- evaluation ---------------------------------------------------------------------------
    def _chunks(self, b: int) -> list[tuple[int, int]]:
        return chunk_bounds(b, self.n_workers, self.max_chunk)

    def _run(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        b = x.shape[0]
        energies = np.full(b, np.nan)
        forces = np.full(x.shape, np.nan)
        chunks = self._chunks(b)
        pending = list(range(len(chunks)))[::-1]  # stack of chunk indices still to send
        attempts = [0] * len(chunks)
        done = 0
        for w in self._workers:
            w.task = None
        failure: str | None = None
        while done < len(chunks):
            # hand out chunks to idle workers (one in flight per worker: no pipe deadlocks)
            for i, w in enumerate(self._workers):
                if w.task is None and pending:
                    c = pending.pop()
                    s, e = chunks[c]
                    try:
                        w.conn.send((c, x[s:e]))
                        w.task = c
                        attempts[c] += 1
                    except (BrokenPipeError, OSError):
                        pending.append(c)
                        self._restart(i)
            busy = [w for w in self._workers if w.task is not None]
            if not busy:  # pragma: no cover - only when every send failed
                continue
            waitables = [w.conn for w in busy] + [w.process.sentinel for w in busy]
            ready = set(mp_wait(waitables))
            for i, w in enumerate(self._workers):
                if w.task is None:
                    continue
                if w.conn in ready:
                    try:
                        tag, e, f = w.conn.recv()
                    except (EOFError, OSError, ConnectionResetError):
                        tag = None
                    if tag is not None:
                        s, t = chunks[tag]
                        energies[s:t] = e
                        forces[s:t] = f
                        w.task = None
                        done += 1
                        continue
                elif w.process.sentinel not in ready:
                    continue
                # the worker died with a chunk in flight
                c = w.task
                w.task = None
                self._restart(i)
                if attempts[c] >= 2:
                    failure = (f"an OpenMM worker died twice on the same chunk of {chunks[c][1] - chunks[c][0]} "
                               f"configurations")
                    done += 1  # leave it NaN and finish the others
                else:
                    pending.append(c)
        if failure is not None:
            raise WorkerError(failure)
        return energies, forces

    # --- life cycle ---------------------------------------------------------------------------
    def close(self) -> None:
        """Stop the workers (idempotent)."""
        if getattr(self, "_closed", True):
            return
        self._closed = True
        for w in self._workers:
            try:
                w.conn.send(None)
            except (BrokenPipeError, OSError):
                pass
        for w in self._workers:
            w.process.join(timeout=2)
            if w.process.is_alive():
                w.process.kill()
                w.process.join(timeout=2)
            try:
                w.conn.close()
            except OSError:
                pass
        self._workers = []
        LIVE_POOLS.discard(self)

    def __repr__(self) -> str:
        return (f"OpenMMEnergyPool(n_particles={self.n_particles}, n_workers={self.n_workers}, "
                f"platform={self.platform!r}, pinned={self.pin}, closed={self._closed})")


# --------------------------------------------------------------------------------------------
# autograd wrapper
# --------------------------------------------------------------------------------------------

_Function = None


def _function():
    global _Function
    if _Function is None:
        import torch

        class _PoolReducedEnergy(torch.autograd.Function):
            @staticmethod
            def forward(ctx, x, pool):
                u, f = pool.reduced_energies_and_forces(x.detach().cpu().numpy())
                ctx.save_for_backward(torch.as_tensor(-f, dtype=x.dtype, device=x.device))
                return torch.as_tensor(u, dtype=x.dtype, device=x.device)

            @staticmethod
            @torch.autograd.function.once_differentiable
            def backward(ctx, grad_u):
                (grad_x,) = ctx.saved_tensors
                g = grad_u[:, None, None] * grad_x
                # configurations that do not contribute (grad_u == 0, e.g. dropped NaN losses) must not
                # poison the gradient with their NaN forces
                g = torch.where((grad_u == 0)[:, None, None], torch.zeros_like(g), g)
                return g, None

        _Function = _PoolReducedEnergy
    return _Function


def reduced_energy_torch(pool: OpenMMEnergyPool, x):
    """``E/kT`` (B,) of torch positions x (B, N, 3) nm from the pool, differentiable: the gradient
    with respect to x is ``-F/kT`` (first derivatives only).  Returns x's dtype and device."""
    if x.dim() == 2:
        return _function().apply(x.unsqueeze(0), pool)
    return _function().apply(x, pool)
