"""Connecting to a dask.distributed cluster: one place for the energy backend and ``cgflow sweep``.

A *scheduler* is given as

* ``"local"``: start a :class:`distributed.LocalCluster` on this machine (``n_workers`` worker
  processes, default one per core this process may use, one thread each): nothing to set up;
* an address (``tcp://host:8786``, ``host:8786``, ``tls://...``): connect to a running scheduler
  (``dask scheduler`` + ``dask worker``, dask-jobqueue, dask-kubernetes, ...); with ``n_workers``,
  wait until that many workers have joined;
* a :class:`ClusterSpec` (``cgflow sweep``'s ``cluster: {class: ..., options: ..., n_workers: ...}``): any
  cluster class by its dotted name, e.g. ``dask_jobqueue.SLURMCluster``, created and scaled here;
* an existing :class:`distributed.Client` (Python API): used as it is, never closed by cgflow.
"""

from __future__ import annotations

import importlib
import logging
import re
from dataclasses import dataclass, field

__all__ = ["SchedulerError", "ClusterSpec", "Connection", "connect", "check_scheduler_address", "default_n_workers"]

ADDRESS_RE = re.compile(r"^((tcp|tls|ucx|ws|wss|inproc)://)?[^\s/:]+(:\d+)?$")


class SchedulerError(ValueError):
    """The cluster could not be reached or started (one-line message)."""


def check_scheduler_address(value: str) -> str:
    """``value`` if it is "local" or looks like a scheduler address; ValueError otherwise."""
    if value == "local" or ADDRESS_RE.match(value):
        return value
    raise ValueError(f"scheduler must be 'local' or an address such as tcp://host:8786, got {value!r}")


def default_n_workers() -> int:
    """One worker per core this process may use."""
    import os

    from cgflow.core.threads import allowed_cores

    return max(1, len(allowed_cores()) or (os.cpu_count() or 1))


@dataclass
class ClusterSpec:
    """A cluster to create: ``cls`` a dotted class name (``distributed.LocalCluster``,
    ``dask_jobqueue.SLURMCluster``), ``options`` its keyword arguments, then ``scale(n_workers)`` if given
    (a job queue submits as many jobs as these workers need)."""

    cls: str
    options: dict = field(default_factory=dict)
    n_workers: int | None = None


@dataclass
class Connection:
    """A client and what to close with it (the cluster only if this process created it)."""

    client: object
    cluster: object | None = None
    owns_client: bool = True
    description: str = ""

    def close(self) -> None:
        if self.owns_client:
            try:
                self.client.close()
            except Exception:  # noqa: BLE001 - best effort (the scheduler may be gone)
                pass
        if self.cluster is not None:
            try:
                self.cluster.close()
            except Exception:  # noqa: BLE001
                pass
        self.cluster = None


def _import_class(dotted: str):
    module, _, name = dotted.rpartition(".")
    if not module:
        raise SchedulerError(f"cluster class {dotted!r}: give a dotted name such as dask_jobqueue.SLURMCluster")
    try:
        return getattr(importlib.import_module(module), name)
    except ImportError as err:
        hint = " (pip install dask-jobqueue)" if module.startswith("dask_jobqueue") else ""
        raise SchedulerError(f"cluster class {dotted!r}: cannot import {module}{hint}: {err}") from None
    except AttributeError:
        raise SchedulerError(f"cluster class {dotted!r}: {module} has no {name}") from None


def connect(scheduler, n_workers: int | None = None, *, timeout_s: float = 30.0,
            daemon_workers: bool = True, quiet: bool = True) -> Connection:
    """A :class:`Connection` to the cluster ``scheduler`` (see the module docstring).

    n_workers: LocalCluster size (default :func:`default_n_workers`), or for an address the number
    of workers to wait for (``timeout_s``).  daemon_workers: False lets the LocalCluster's workers
    start processes of their own (needed by runs that use the "openmm" backend inside a sweep).
    Raises :class:`SchedulerError` with a one-line message when nothing can be reached."""
    import dask
    from distributed import Client, LocalCluster

    if isinstance(scheduler, Client):
        return Connection(scheduler, owns_client=False, description=f"client {scheduler.scheduler.address}")
    level = logging.ERROR if quiet else logging.WARNING
    if not daemon_workers:  # read by local nannies at every (re)start of a worker: set for good
        dask.config.set({"distributed.worker.daemon": False})
    if isinstance(scheduler, ClusterSpec):
        cls = _import_class(scheduler.cls)
        cluster = None
        try:
            cluster = cls(**scheduler.options)
            if scheduler.n_workers is not None:
                cluster.scale(scheduler.n_workers)
            client = Client(cluster, timeout=f"{timeout_s}s")
        except SchedulerError:
            raise
        except Exception as err:  # noqa: BLE001 - any failure of a third-party cluster class
            if cluster is not None:  # e.g. a SLURMCluster whose jobs are submitted: cancel them
                try:
                    cluster.close()
                except Exception:  # noqa: BLE001
                    pass
            raise SchedulerError(f"cannot start the cluster {scheduler.cls}: {type(err).__name__}: "
                                 f"{str(err).splitlines()[0] if str(err) else ''}") from None
        return Connection(client, cluster, description=f"{scheduler.cls} at {cluster.scheduler_address}")
    if scheduler == "local":
        n = int(n_workers) if n_workers is not None else default_n_workers()
        cluster = LocalCluster(n_workers=n, threads_per_worker=1, processes=True, dashboard_address=None,
                               silence_logs=level)
        client = Client(cluster)
        return Connection(client, cluster, description=f"LocalCluster with {n} worker process(es)")
    try:
        address = check_scheduler_address(str(scheduler))
    except ValueError as err:
        raise SchedulerError(str(err)) from None
    try:
        client = Client(address, timeout=f"{timeout_s}s")
    except Exception as err:  # noqa: BLE001 - OSError, TimeoutError, ValueError of a bad address ...
        msg = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise SchedulerError(f"cannot connect to the dask scheduler at {address!r}: {msg}") from None
    if n_workers is not None:
        try:
            client.wait_for_workers(int(n_workers), timeout=timeout_s)
        except Exception:  # noqa: BLE001 - TimeoutError
            have = len(client.scheduler_info()["workers"])
            client.close()
            raise SchedulerError(f"the dask scheduler at {address!r} has {have} worker(s); {n_workers} did not "
                                 f"join within {timeout_s:g} s") from None
    return Connection(client, description=f"dask scheduler {address}")
