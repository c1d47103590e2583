"""The 2-D Müller-Brown potential as a System (method spec 4.1).

Full coordinates (x, y); CG coordinate s = x - y; FG coordinate s_perp = x + y.
Reduced energy u = beta * U_MB(x, y) (dimensionless, "kT") with beta = 0.1 by default.
The exact PMF F(s) = -ln ∫ exp(-beta U(s + y, y)) dy is computed by adaptive quadrature.
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
import torch
from scipy import integrate

from cgflow.core.system import ReferencePMF, StartingData

A = (-200.0, -100.0, -170.0, 15.0)
a = (-1.0, -1.0, -6.5, 0.7)
b = (0.0, 0.0, 11.0, 0.6)
c = (-10.0, -10.0, -6.5, 0.7)
X0 = (1.0, 0.0, -0.5, -1.0)
Y0 = (0.0, 0.5, 1.5, 1.0)
MINIMUM_A = (-0.558, 1.442)


def muller_brown_potential(x, y):
    """U_MB(x, y) (dimensionless); works on numpy arrays, floats and torch tensors."""
    exp = torch.exp if isinstance(x, torch.Tensor) else np.exp
    u = 0.0
    for Ai, ai, bi, ci, xi, yi in zip(A, a, b, c, X0, Y0):
        dx, dy = x - xi, y - yi
        u = u + Ai * exp(ai * dx * dx + bi * dx * dy + ci * dy * dy)
    return u


@lru_cache(maxsize=8)
def exact_pmf(s_values: tuple[float, ...], beta: float) -> np.ndarray:
    """F(s) = -ln ∫ exp(-beta U(s + y, y)) dy (kT, not shifted), by adaptive quadrature over
    y in [-3, 5] (the integrand is < 1e-30 of its maximum beyond)."""
    out = []
    for s in s_values:
        val, _ = integrate.quad(lambda y: math.exp(-beta * muller_brown_potential(s + y, y)), -3.0, 5.0,
                                limit=400, epsabs=0.0, epsrel=1e-11, points=[-1.0, 0.0, 1.0, 2.0])
        out.append(-math.log(val))
    return np.array(out)


class MullerBrownSystem:
    """Müller-Brown with s = x - y.  Full coordinates have shape (B, 2): columns x, y."""

    name = "muller-brown"
    cg_dim = 1
    fg_dim = 1
    cg_periodic = (False,)
    fg_periodic = (False,)
    cg_names = ("s = x - y",)

    def __init__(self, beta: float = 0.1, domain: tuple[float, float] = (-2.5, 1.1), n_bins: int = 100,
                 n_starting_points: int = 100, starting_mc_step: float = 0.05, starting_mc_stride: int = 10,
                 starting_mc_burn_in: int = 1000):
        self.beta = beta
        self.cg_domain = (tuple(domain),)
        self.n_bins = n_bins
        self.n_starting_points = n_starting_points
        self.starting_mc_step = starting_mc_step
        self.starting_mc_stride = starting_mc_stride
        self.starting_mc_burn_in = starting_mc_burn_in
        self.default_mc_start = (MINIMUM_A[0] - MINIMUM_A[1],)

    # --- maps -------------------------------------------------------------------------------
    def reduced_energy(self, xy: torch.Tensor) -> torch.Tensor:
        """beta * U_MB, shape (B,), for xy (B, 2)."""
        return self.beta * muller_brown_potential(xy[:, 0], xy[:, 1])

    def to_internal(self, xy: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return (xy[:, 0] - xy[:, 1])[:, None], (xy[:, 0] + xy[:, 1])[:, None]

    def from_internal(self, s: torch.Tensor, x_fg: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = 0.5 * (s[:, 0] + x_fg[:, 0])
        y = 0.5 * (x_fg[:, 0] - s[:, 0])
        return torch.stack([x, y], dim=1), torch.full_like(x, math.log(0.5))

    def log_target(self, s: torch.Tensor, x_fg: torch.Tensor) -> torch.Tensor:
        xy, log_det = self.from_internal(s, x_fg)
        return -self.reduced_energy(xy) + log_det

    def valid(self, s: torch.Tensor, x_fg: torch.Tensor) -> torch.Tensor:
        return torch.ones(s.shape[0], dtype=torch.bool, device=s.device)

    # --- data -------------------------------------------------------------------------------
    def starting_data(self, seed: int) -> StartingData:
        """Metropolis MC at this beta from minimum A: burn-in, then every ``stride``-th state."""
        rng = np.random.default_rng(seed)
        pos = np.array(MINIMUM_A, dtype=np.float64)
        u = self.beta * muller_brown_potential(*pos)
        n_steps = self.starting_mc_burn_in + self.n_starting_points * self.starting_mc_stride
        out = []
        for step in range(1, n_steps + 1):
            prop = pos + self.starting_mc_step * rng.standard_normal(2)
            u_new = self.beta * muller_brown_potential(*prop)
            if rng.random() < math.exp(min(0.0, u - u_new)):
                pos, u = prop, u_new
            if step > self.starting_mc_burn_in and (step - self.starting_mc_burn_in) % self.starting_mc_stride == 0:
                out.append(pos.copy())
        return StartingData(x=torch.as_tensor(np.array(out)), n_energy_evaluations=n_steps + 1,
                            description=f"Metropolis MC from minimum A, {n_steps} steps, every "
                                        f"{self.starting_mc_stride}th of the last {len(out) * self.starting_mc_stride}")

    def reference(self) -> ReferencePMF:
        lo, hi = self.cg_domain[0]
        edges = np.linspace(lo, hi, self.n_bins + 1)
        centers = 0.5 * (edges[1:] + edges[:-1])
        f = exact_pmf(tuple(centers.tolist()), self.beta)
        p = np.exp(-(f - f.min()))
        return ReferencePMF(edges=[edges], prob=p / p.sum(),
                            description="exact: adaptive quadrature of exp(-beta U) along y at bin centres")

    # --- MD baselines ---------------------------------------------------------------------------
    def simulation_view(self, temperature_K: float = 300.0, mass_amu: float = 1.0, timestep_fs: float = 5.0,
                        z_spring_kj_mol_nm2: float = 1000.0):
        """Müller-Brown as one particle (x, y in nm; z held near 0 by a spring that does not touch
        the x, y marginal) with energy beta * U_MB * kT, so u = beta * U_MB in kT at any temperature.

        The mass (1 amu) and time step (5 fs, ~1/40 of the fastest harmonic period in the wells)
        only set the MD time scale; the baselines count energy evaluations, not time."""
        import openmm
        import openmm.app as app

        from cgflow.core.simulation_view import SimulationView
        from cgflow.core.units import MOLAR_GAS_CONSTANT_KJ_PER_MOL_K

        kT = MOLAR_GAS_CONSTANT_KJ_PER_MOL_K * temperature_K
        terms = "+".join(f"({Ai})*exp(({ai})*(x-({xi}))^2+({bi})*(x-({xi}))*(y-({yi}))+({ci})*(y-({yi}))^2)"
                         for Ai, ai, bi, ci, xi, yi in zip(A, a, b, c, X0, Y0))
        expression = f"{self.beta * kT!r}*({terms})+{0.5 * z_spring_kj_mol_nm2!r}*z^2"

        def make_system(n_copies: int):
            system, force = openmm.System(), openmm.CustomExternalForce(expression)
            for i in range(n_copies):
                system.addParticle(mass_amu)
                force.addParticle(i, [])
            system.addForce(force)
            return system

        def make_topology(n_copies: int):
            top = app.Topology()
            chain = top.addChain()
            for _ in range(n_copies):
                top.addAtom("P", None, top.addResidue("MB", chain))
            return top

        def make_cg_forces():
            f = openmm.CustomExternalForce("x-y")
            f.addParticle(0, [])
            return [f]

        def reduced_energy_of_positions(x):
            x = x.reshape(x.shape[0], 3)
            return self.reduced_energy(x[:, :2]) + 0.5 * z_spring_kj_mol_nm2 / kT * x[:, 2] ** 2

        return SimulationView(
            name=self.name, make_openmm_system=make_system, make_openmm_topology=make_topology,
            positions=np.array([[MINIMUM_A[0], MINIMUM_A[1], 0.0]]), masses_amu=np.array([mass_amu]),
            temperature_K=temperature_K, timestep_fs=timestep_fs, make_cg_forces=make_cg_forces,
            cg_of_positions=lambda x: (x.reshape(x.shape[0], 3)[:, 0] - x.reshape(x.shape[0], 3)[:, 1])[:, None],
            reduced_energy_of_positions=reduced_energy_of_positions, cg_dim=1, cg_periodic=self.cg_periodic,
            cg_domain=self.cg_domain, cg_names=self.cg_names,
            positions_of_configurations=lambda xy: torch.cat([xy, torch.zeros_like(xy[:, :1])], dim=1))
