"""A 1-D double-well plug-in System for the tests (issue 18): CG s in [-1.8, 1.8] (non-periodic), one FG
coordinate y.  Reduced energy (kT)

    u(s, y) = H (s^2 - 1)^2 + TILT s + y^2 / (2 sigma(s)^2),   sigma(s) = 0.4 + 0.1 s^2

so the exact PMF is F(s) = H (s^2 - 1)^2 + TILT s - ln(sqrt(2 pi) sigma(s)).

Options for the tests: ``nan_fraction`` makes that fraction of the energies NaN (at random, seeded),
``nan_above`` makes every energy at s > nan_above NaN (a region the "force field" cannot evaluate),
``n_outside`` appends starting configurations whose s lies outside the domain (0.3 beyond each end).

YAML: ``system: {name: python, factory: "double_well_system:make_system", kwargs: {...}}``.
"""

from __future__ import annotations

import numpy as np
import torch

from cgflow.core.system import ReferencePMF, StartingData

H, TILT = 2.0, 0.2
DOMAIN = (-1.8, 1.8)


def exact_pmf_kT(s: np.ndarray) -> np.ndarray:
    sigma = 0.4 + 0.1 * s**2
    return H * (s**2 - 1) ** 2 + TILT * s - np.log(np.sqrt(2 * np.pi) * sigma)


class DoubleWellSystem:
    def __init__(self, n_bins: int = 60, n_starting_points: int = 100, nan_fraction: float = 0.0,
                 nan_above: float | None = None, n_outside: int = 0, seed: int = 0):
        self.name = "double-well"
        self.cg_dim, self.fg_dim = 1, 1
        self.cg_periodic, self.fg_periodic = (False,), (False,)
        self.cg_domain = (DOMAIN,)
        self.cg_names = ("s",)
        self.n_bins, self.n_starting_points, self.n_outside = n_bins, n_starting_points, n_outside
        self.nan_fraction, self.nan_above = nan_fraction, nan_above
        self._gen = torch.Generator().manual_seed(seed)
        self.n_calls = self.n_nan = 0

    def reduced_energy(self, x: torch.Tensor) -> torch.Tensor:
        s, y = x[:, 0], x[:, 1]
        sigma = 0.4 + 0.1 * s**2
        u = H * (s**2 - 1) ** 2 + TILT * s + y**2 / (2 * sigma**2)
        bad = torch.zeros_like(u, dtype=torch.bool)
        if self.nan_fraction > 0:
            bad |= torch.rand(u.shape, generator=self._gen, dtype=torch.float64).to(u.device) < self.nan_fraction
        if self.nan_above is not None:
            bad |= s.detach() > self.nan_above
        self.n_calls += u.numel()
        self.n_nan += int(bad.sum())
        return torch.where(bad, torch.full_like(u, float("nan")), u)

    def log_target(self, s: torch.Tensor, x_fg: torch.Tensor) -> torch.Tensor:
        x, log_det = self.from_internal(s, x_fg)
        return -self.reduced_energy(x) + log_det

    def to_internal(self, x: torch.Tensor):
        return x[:, :1], x[:, 1:]

    def from_internal(self, s: torch.Tensor, x_fg: torch.Tensor):
        x = torch.cat([s, x_fg], dim=1).to(torch.float64)
        return x, torch.zeros(x.shape[0], dtype=torch.float64, device=x.device)

    def starting_data(self, seed: int) -> StartingData:
        """Exact draws from the left well (s < 0; inverse CDF on a fine grid), plus ``n_outside`` points
        beyond the domain's ends."""
        rng = np.random.default_rng(seed)
        grid = np.linspace(DOMAIN[0], 0.0, 2001)
        cdf = np.cumsum(np.exp(-exact_pmf_kT(grid)))
        s = np.interp(rng.random(self.n_starting_points), cdf / cdf[-1], grid)
        if self.n_outside:
            out = np.where(np.arange(self.n_outside) % 2 == 0, DOMAIN[0] - 0.3, DOMAIN[1] + 0.3)
            s = np.concatenate([s, out])
        y = (0.4 + 0.1 * s**2) * rng.standard_normal(s.size)
        return StartingData(torch.tensor(np.stack([s, y], 1), dtype=torch.float64), s.size, "exact draws")

    def reference(self):
        edges = np.linspace(*DOMAIN, self.n_bins + 1)
        fine = np.linspace(*DOMAIN, 8 * self.n_bins + 1)
        mid = 0.5 * (fine[1:] + fine[:-1])
        w = np.exp(-exact_pmf_kT(mid)).reshape(self.n_bins, 8).sum(1)
        return ReferencePMF([edges], w / w.sum(), "exact (8 midpoints per bin)")


def make_system(**kwargs) -> DoubleWellSystem:
    return DoubleWellSystem(**kwargs)
