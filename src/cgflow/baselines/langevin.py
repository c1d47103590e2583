"""Batched Langevin dynamics in torch: many independent replicas integrated at once with a
differentiable energy (the torch energy backend on CPU or CUDA).

BAOAB splitting (Leimkuhler & Matthews), one energy + force evaluation per replica per step.
Units as in OpenMM: nm, ps, amu, kJ/mol; the energy function returns kT.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch

Tensor = torch.Tensor


@dataclass
class LangevinState:
    """positions, velocities: (R, n_particles, 3) float64 (nm, nm/ps); forces in kJ/mol/nm."""

    positions: Tensor
    velocities: Tensor
    forces: Tensor
    energies_kT: Tensor


class BatchedLangevin:
    """BAOAB Langevin integrator for R replicas of the same particles.

    Args:
        reduced_energy: x (R, n, 3) -> u (R,) in kT, differentiable in x.
        masses_amu: (n,).
        temperature_K, timestep_fs, friction_per_ps: as in OpenMM's LangevinMiddleIntegrator.
        generator: torch.Generator for the noise (its state belongs in checkpoints).
    """

    def __init__(self, reduced_energy: Callable[[Tensor], Tensor], masses_amu, temperature_K: float,
                 timestep_fs: float, friction_per_ps: float, generator: torch.Generator, device="cpu"):
        from cgflow.core.units import MOLAR_GAS_CONSTANT_KJ_PER_MOL_K

        self.reduced_energy = reduced_energy
        self.kT = MOLAR_GAS_CONSTANT_KJ_PER_MOL_K * temperature_K
        self.dt = timestep_fs * 1e-3
        self.c1 = math.exp(-friction_per_ps * self.dt)
        self.c2 = math.sqrt(1.0 - self.c1 ** 2)
        m = torch.as_tensor(masses_amu, dtype=torch.float64, device=device)
        self.inv_mass = (1.0 / m)[None, :, None]
        self.sigma_v = torch.sqrt(self.kT / m)[None, :, None]
        self.generator = generator
        self.n_nonfinite = 0

    def forces(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(forces kJ/mol/nm (R, n, 3), u kT (R,)); non-finite energies give zero force and are counted."""
        x = x.detach().requires_grad_(True)
        u = self.reduced_energy(x)
        g, = torch.autograd.grad(u.sum(), x)
        bad = ~torch.isfinite(u)
        if bool(bad.any()):
            self.n_nonfinite += int(bad.sum())
            g = torch.where(bad[:, None, None], torch.zeros_like(g), g)
        return (-self.kT * g).detach(), u.detach()

    def init_state(self, positions: Tensor) -> LangevinState:
        """Velocities drawn from Maxwell-Boltzmann; forces evaluated once (counted by the caller)."""
        x = positions.to(torch.float64)
        v = self.sigma_v * torch.randn(x.shape, dtype=x.dtype, device=x.device, generator=self.generator)
        f, u = self.forces(x)
        return LangevinState(x, v, f, u)

    def step(self, st: LangevinState, n_steps: int) -> LangevinState:
        """Advance every replica by n_steps (n_steps energy evaluations per replica)."""
        x, v, f = st.positions, st.velocities, st.forces
        h = 0.5 * self.dt
        u = st.energies_kT
        for _ in range(n_steps):
            v = v + h * f * self.inv_mass
            x = x + h * v
            v = self.c1 * v + self.c2 * self.sigma_v * torch.randn(v.shape, dtype=v.dtype, device=v.device,
                                                                   generator=self.generator)
            x = x + h * v
            f, u = self.forces(x)
            v = v + h * f * self.inv_mass
        return LangevinState(x, v, f, u)
