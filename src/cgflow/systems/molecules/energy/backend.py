"""One small interface over the two energy backends of a molecule.

Both :class:`cgflow.systems.molecules.energy.torch_energy.TorchEnergy` ("torch": batched PyTorch, differentiable by
autograd, CPU or CUDA) and :class:`cgflow.systems.molecules.energy.openmm_pool.OpenMMEnergyPool` ("openmm": OpenMM
CPU worker processes, differentiable through a custom autograd Function) provide

* ``reduced_energy(x: Tensor (B, N, 3) nm) -> Tensor (B,)``: ``E / kT``, differentiable in x
  (gradient ``-F / kT``), non-finite for bad configurations (never raising for them);
* ``kT`` (kJ/mol), ``temperature_K``, ``n_particles``.

:func:`make_energy_backend` builds either by name; :func:`close_energy_backend` releases the worker
processes of the "openmm" backend (a no-op for "torch").
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch

__all__ = ["EnergyBackend", "ENERGY_BACKENDS", "make_energy_backend", "close_energy_backend"]

ENERGY_BACKENDS = ("torch", "openmm", "dask")


@runtime_checkable
class EnergyBackend(Protocol):
    kT: float
    temperature_K: float
    n_particles: int

    def reduced_energy(self, x: torch.Tensor) -> torch.Tensor:
        """E/kT (B,) for positions (B, N, 3) in nm; differentiable in x."""
        ...


def make_energy_backend(name: str, system, temperature_K: float, *, dtype: torch.dtype = torch.float64,
                        device: str | torch.device = "cpu", n_workers: int | None = None, **kw) -> EnergyBackend:
    """The energy backend ``name`` ("torch", "openmm" or "dask") for an ``openmm.System``.

    "torch": ``TorchEnergy(system, temperature_K, dtype, device)`` (raises
    :class:`~cgflow.systems.molecules.energy.torch_energy.UnsupportedForceError` for forces it does not implement).
    "openmm": ``OpenMMEnergyPool(system, temperature_K, n_workers, **kw)``; its energies come back
    with the dtype and device of the positions passed in (``dtype``/``device`` are not used).
    "dask": ``DaskEnergyPool(system, temperature_K, n_workers=n_workers, **kw)`` (OpenMM contexts on the
    workers of a dask.distributed cluster; ``scheduler="local"`` or an address, see
    :mod:`cgflow.systems.molecules.energy.dask_pool`), otherwise like "openmm".
    """
    if name == "torch":
        from cgflow.systems.molecules.energy.torch_energy import TorchEnergy

        if kw:
            raise TypeError(f"unexpected options for the torch energy backend: {sorted(kw)}")
        return TorchEnergy(system, temperature_K, dtype=dtype, device=device)
    if name == "openmm":
        from cgflow.systems.molecules.energy.openmm_pool import OpenMMEnergyPool

        return OpenMMEnergyPool(system, temperature_K, n_workers=n_workers, **kw)
    if name == "dask":
        from cgflow.systems.molecules.energy.dask_pool import DaskEnergyPool

        return DaskEnergyPool(system, temperature_K, n_workers=n_workers, **kw)
    raise ValueError(f"unknown energy backend {name!r}; choose one of {ENERGY_BACKENDS}")


def close_energy_backend(backend) -> None:
    """Release the resources of a backend (worker processes of "openmm", Contexts and cluster of "dask")."""
    close = getattr(backend, "close", None)
    if callable(close):
        close()
