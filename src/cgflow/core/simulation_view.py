"""What a baseline needs from a system: full-coordinate simulation, not internal coordinates.

A system that supports the baselines has a method ``simulation_view() -> SimulationView``.
Positions are particle coordinates in nm, shape (n_particles, 3) (a batch: (B, n_particles, 3)).
Energies are in kT unless a name says kJ/mol.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch

from cgflow.core.geometry import wrap_periodic
from cgflow.core.units import MOLAR_GAS_CONSTANT_KJ_PER_MOL_K


@dataclass
class SimulationView:
    """A system seen as particles for MD-type baselines.

    Attributes:
        name: the system's name.
        make_openmm_system: ``n_copies -> openmm.System``; ``n_copies`` non-interacting copies in
            one System (independent replicas in one OpenMM context), or raises ValueError if
            the system cannot be copied (molecules: implicit solvent couples everything).
        make_openmm_topology: ``n_copies -> openmm.app.Topology`` matching make_openmm_system.
        positions: a starting structure, (n_particles, 3) nm, of one copy.
        masses_amu: (n_particles,) of one copy.
        temperature_K: simulation temperature (kT = R T).
        timestep_fs: the default MD time step for this system.
        make_cg_forces: ``() -> list of openmm.Force``, one per CG coordinate, each force's energy
            (kJ/mol) equals that CG coordinate of copy 0 (for OpenMM's Metadynamics BiasVariable).
        cg_of_positions: (B, n_particles, 3) torch float64 -> s (B, cg_dim), wrapped into the CG
            domain's convention, differentiable (for restraints and for recording).
        reduced_energy_of_positions: (B, n_particles, 3) torch -> u (B,) kT, differentiable.
        cg_dim, cg_periodic, cg_domain, cg_names: as in the System protocol.
        positions_of_configurations: the system's configurations (what ``System.from_internal``
            returns, (B, ...)) -> positions (B, n_particles, 3) nm; None: they are positions already
            (reshaped). Used to start MD from flow samples (``cgflow validate``).
    """

    name: str
    make_openmm_system: Callable[[int], Any]
    make_openmm_topology: Callable[[int], Any]
    positions: np.ndarray
    masses_amu: np.ndarray
    temperature_K: float
    timestep_fs: float
    make_cg_forces: Callable[[], list]
    cg_of_positions: Callable[[torch.Tensor], torch.Tensor]
    reduced_energy_of_positions: Callable[[torch.Tensor], torch.Tensor]
    cg_dim: int
    cg_periodic: tuple[bool, ...]
    cg_domain: tuple[tuple[float, float], ...]
    cg_names: tuple[str, ...]
    positions_of_configurations: Callable[[torch.Tensor], torch.Tensor] | None = None

    def positions_of(self, configurations: torch.Tensor) -> torch.Tensor:
        """(B, n_particles, 3) float64 nm of the system's configurations (B, ...)."""
        x = configurations
        if self.positions_of_configurations is not None:
            x = self.positions_of_configurations(x)
        return x.reshape(x.shape[0], self.n_particles, 3).to(torch.float64)

    @property
    def kT_kJ_per_mol(self) -> float:
        return MOLAR_GAS_CONSTANT_KJ_PER_MOL_K * self.temperature_K

    @property
    def n_particles(self) -> int:
        return int(self.positions.shape[0])

    def cg_numpy(self, positions: np.ndarray) -> np.ndarray:
        """CG coordinates of positions (B, n_particles, 3) nm -> (B, cg_dim) float64, wrapped."""
        with torch.no_grad():
            s = self.cg_of_positions(torch.as_tensor(np.asarray(positions, dtype=np.float64)))
            return wrap_periodic(s, self.cg_periodic).numpy()


def simulation_view(system) -> SimulationView:
    """The system's SimulationView, or a clear error if it has none."""
    make = getattr(system, "simulation_view", None)
    if make is None:
        raise ValueError(f"system {getattr(system, 'name', system)!r} does not support the MD baselines "
                         f"(it has no simulation_view())")
    return make()
