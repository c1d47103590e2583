"""The "dask" energy backend: OpenMM contexts held on the workers of a dask.distributed cluster.

:class:`DaskEnergyPool` has the interface of :class:`cgflow.systems.molecules.energy.openmm_pool.OpenMMEnergyPool`
and the same guarantees, on as many machines as the cluster spans:

* the ``openmm.System`` travels serialized (XML) inside a worker plugin registered with the
  scheduler; every worker, including one that joins or is restarted later, builds ONE OpenMM
  ``Context`` from it once (CPU platform, ``Threads=1``; "Reference" for exact tests);
* a batch ``(B, N, 3)`` is cut into chunks (:func:`~cgflow.systems.molecules.energy.openmm_pool.chunk_bounds`: at
  least one per worker, at most ``max_chunk`` each), evaluated as dask tasks, gathered in order;
* each configuration is evaluated by the same code as in the local pool
  (:func:`~cgflow.systems.molecules.energy.openmm_pool.evaluate_chunk`), so energies and forces are equal to
  the local backend's: bad configurations give NaN energies and forces, nothing raises for them;
* a worker that dies with a chunk in flight is replaced (by its nanny) and the scheduler runs the
  chunk again on a live worker; a chunk on which ``distributed.scheduler.allowed-failures`` + 1
  workers died raises :class:`~cgflow.systems.molecules.energy.openmm_pool.WorkerError` (the pool stays usable);
* :attr:`DaskEnergyPool.n_evaluations` counts every configuration passed in exactly once (retries
  are not counted again).

Units as in the local pool: positions nm; ``reduced_energies_and_forces`` returns ``E/kT`` (B,) and ``F/kT``
(B, N, 3) in 1/nm; ``reduced_energy`` is differentiable (gradient ``-F/kT``).
"""

from __future__ import annotations

import itertools
import threading
import uuid

import numpy as np

from cgflow.core.units import kT_kJ_per_mol
from cgflow.distributed.cluster import connect
from cgflow.systems.molecules.energy.openmm_pool import (
    LIVE_POOLS,
    BatchEnergyPool,
    WorkerError,
    chunk_bounds,
    evaluate_chunk,
)

__all__ = ["DaskEnergyPool", "OpenMMContextPlugin"]

try:
    from distributed.diagnostics.plugin import WorkerPlugin
except ImportError:  # pragma: no cover - distributed is a dependency
    WorkerPlugin = object


class OpenMMContextPlugin(WorkerPlugin):
    """Worker plugin holding one OpenMM Context per worker, built from the serialized System at set-up.

    A failure to build the Context is kept and raised (as :class:`WorkerError`) by the first task,
    so that it reaches the client with its message."""

    idempotent = False

    def __init__(self, name: str, system_xml: str, platform: str, properties: dict):
        self.name = name
        self.system_xml = system_xml
        self.platform = platform
        self.properties = dict(properties)
        self.context = None
        self.error: str | None = None
        self._lock = threading.Lock()

    def __getstate__(self):  # what travels to the scheduler and the workers
        return {"name": self.name, "system_xml": self.system_xml, "platform": self.platform,
                "properties": self.properties}

    def __setstate__(self, state):
        self.__init__(**state)

    def setup(self, worker=None) -> None:
        with self._lock:
            self._build()

    def _build(self) -> None:
        if self.context is not None or self.error is not None:
            return
        try:
            import openmm

            system = openmm.XmlSerializer.deserialize(self.system_xml)
            platform = openmm.Platform.getPlatformByName(self.platform)
            self.context = openmm.Context(system, openmm.VerletIntegrator(0.001), platform, dict(self.properties))
        except Exception as exc:  # noqa: BLE001 - reported by the tasks
            self.error = f"{type(exc).__name__}: {exc}"

    def teardown(self, worker=None) -> None:
        self.context = None

    def evaluate(self, x: np.ndarray, max_abs: float) -> tuple[np.ndarray, np.ndarray]:
        """Energies (kJ/mol) (b,) and forces (kJ/mol/nm) (b, N, 3) of x (b, N, 3) nm."""
        with self._lock:  # one Context, whatever the number of threads of the worker
            self._build()
            if self.error is not None:
                raise WorkerError(f"a dask worker could not create its OpenMM Context: {self.error}")
            return evaluate_chunk(self.context, x, max_abs)


def _evaluate_on_worker(plugin_name: str, x: np.ndarray, max_abs: float) -> tuple[np.ndarray, np.ndarray]:
    """The dask task: evaluate the chunk x with this worker's Context."""
    from distributed import get_worker

    plugin = get_worker().plugins.get(plugin_name)
    if plugin is None:
        raise WorkerError(f"worker plugin {plugin_name} is not installed on this dask worker")
    return plugin.evaluate(x, max_abs)


def _plugin_status(plugin_name: str, dask_worker=None) -> str | None:
    """Run on every worker at start: None if its Context exists, else the error."""
    plugin = dask_worker.plugins.get(plugin_name)
    if plugin is None:
        return "plugin not installed"
    with plugin._lock:
        plugin._build()
    return plugin.error


class DaskEnergyPool(BatchEnergyPool):
    """Energies and forces of batches from OpenMM contexts on dask workers.

    Args:
        system: the ``openmm.System`` (serialized once; rebuilt on every worker).
        temperature_K: temperature of the reduced energies ``E/kT``.
        scheduler: "local" (start a LocalCluster of ``n_workers`` single-thread processes, default
            one per core), a scheduler address ("tcp://host:8786"), a
            :class:`~cgflow.distributed.cluster.ClusterSpec`, or a ``distributed.Client``
            (see :func:`cgflow.distributed.cluster.connect`).
        n_workers: LocalCluster size, or for an address the number of workers to wait for.
        platform: OpenMM platform of the workers' Contexts ("CPU"; "Reference" for exact tests).
        max_chunk: largest number of configurations in one task (default 1024: a task costs a few ms of
            scheduling, see docs/benchmarks.md; smaller chunks spread a batch over more workers).
        max_abs_coordinate: configurations with any |coordinate| above this (nm) get NaN.
        timeout_s: how long to wait for the scheduler (and for ``n_workers`` workers).

    Attributes:
        n_evaluations: configurations passed to :meth:`reduced_energies_and_forces` (each once, NaN ones
            included, retries not counted).
        kT: k_B T in kJ/mol.  n_particles: N.  client: the ``distributed.Client``.
    """

    def __init__(self, system, temperature_K: float, *, scheduler="local", n_workers: int | None = None,
                 platform: str = "CPU", max_chunk: int = 1024, max_abs_coordinate: float = 1e5,
                 timeout_s: float = 30.0):
        import openmm

        self._closed = True  # until connected
        self.n_particles = int(system.getNumParticles())
        self.temperature_K = float(temperature_K)
        self.kT = kT_kJ_per_mol(self.temperature_K)
        if max_chunk < 1:
            raise ValueError(f"max_chunk must be >= 1, got {max_chunk}")
        self.platform = platform
        self.max_chunk = int(max_chunk)
        self.max_abs_coordinate = float(max_abs_coordinate)
        self.n_evaluations = 0
        self._lock = threading.Lock()
        self._calls = itertools.count()
        self.plugin_name = f"cgflow-openmm-{uuid.uuid4().hex[:12]}"
        plugin = OpenMMContextPlugin(self.plugin_name, openmm.XmlSerializer.serialize(system), platform,
                                     {"Threads": "1"} if platform == "CPU" else {})
        self._connection = connect(scheduler, n_workers, timeout_s=timeout_s)
        self.client = self._connection.client
        self._closed = False
        LIVE_POOLS.add(self)
        try:
            self.client.register_plugin(plugin, name=self.plugin_name)
            errors = {w: e for w, e in self.client.run(_plugin_status, self.plugin_name).items() if e}
            if errors:
                worker, err = next(iter(errors.items()))
                raise WorkerError(f"{len(errors)} dask worker(s) could not create an OpenMM Context ({worker}: {err})")
        except BaseException:
            self.close()
            raise

    @property
    def n_workers(self) -> int:
        """Workers the scheduler knows now (the chunks of a batch are sized for them)."""
        return max(1, len(self.client.scheduler_info()["workers"]))

    @property
    def worker_addresses(self) -> list[str]:
        return sorted(self.client.scheduler_info()["workers"])

    def _run(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Energies (kJ/mol) and forces (kJ/mol/nm) of x (B, N, 3), the chunks as dask tasks gathered in
        order (called by :meth:`reduced_energies_and_forces`).  Raises WorkerError only when workers keep dying on
        the same chunk."""
        from distributed import KilledWorker

        b = x.shape[0]
        energies, forces = np.full(b, np.nan), np.full(x.shape, np.nan)
        chunks = chunk_bounds(b, self.n_workers, self.max_chunk)
        call = next(self._calls)
        futures = [self.client.submit(_evaluate_on_worker, self.plugin_name, x[s:e], self.max_abs_coordinate,
                                      key=f"{self.plugin_name}-{call}-{i}", pure=False)
                   for i, (s, e) in enumerate(chunks)]
        try:
            results = self.client.gather(futures)
        except KilledWorker as err:
            raise WorkerError(f"dask workers died repeatedly on the same chunk of configurations ({err})") from None
        finally:
            for f in futures:
                f.release()
        for (s, e), (en, fo) in zip(chunks, results):
            energies[s:e] = en
            forces[s:e] = fo
        return energies, forces

    def close(self) -> None:
        """Remove the Contexts from the workers and disconnect (closing a LocalCluster started here)."""
        if getattr(self, "_closed", True):
            return
        self._closed = True
        try:
            self.client.unregister_worker_plugin(self.plugin_name)
        except Exception:  # noqa: BLE001 - the cluster may be gone already
            pass
        self._connection.close()
        LIVE_POOLS.discard(self)

    def __repr__(self) -> str:
        return (f"DaskEnergyPool(n_particles={self.n_particles}, {self._connection.description}, "
                f"platform={self.platform!r}, closed={self._closed})")
