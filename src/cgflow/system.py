"""The one narrow protocol through which a molecule (or toy potential) plugs into the core.

The core (flow, PMF labels, ensemble, sampler, active-learning loop) never looks inside a
system.  It only needs:

* the sizes and periodicity of the coarse-grained (CG) coordinates ``s`` and of the
  fine-grained (FG) coordinates ``x_fg``;
* the CG domain (the range used for metrics, plots and, optionally, confining Monte Carlo);
* ``log_target(s, x_fg)``: the unnormalized log density of the joint internal coordinates,
  ``-u(x)/kT + log|det J_{T^-1}(s, x_fg)|`` where ``x = T^-1(s, x_fg)`` are the full coordinates;
* ``to_internal`` / ``from_internal``: the map between full coordinates and ``(s, x_fg)``;
* ``starting_data``: a few full configurations (e.g. short MD) for training by example;
* optionally ``valid`` (e.g. a chirality filter applied *before* any energy is evaluated) and
  ``reference`` (an exact or reference PMF on a grid of bins for the accuracy metric).

Conventions: energies in kT, float64 for energies and internal coordinates, angles in
radians, periodic coordinates wrapped to [-pi, pi).  Shapes: ``B`` is the batch size.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import numpy as np
import torch

Tensor = torch.Tensor


@dataclass
class StartingData:
    """Full configurations used to seed a run.

    Attributes:
        x: full coordinates, shape (n, *system.full_shape), float64.
        n_energy_evaluations: configurations whose energy was computed to make them (MD steps,
            MC steps ...), counted into the run's budget.
        description: one line saying how the data was made.
    """

    x: Tensor
    n_energy_evaluations: int
    description: str = ""


@dataclass
class ReferencePMF:
    """A reference PMF binned on a regular grid over the CG domain.

    Attributes:
        edges: one array of bin edges per CG dimension, each of shape (n_bins_d + 1,).
        prob: normalized bin probabilities, shape (n_bins_1, ..., n_bins_cg_dim), indexed
            [i_1, i_2, ...] in the order of the CG coordinates.
        description: how the reference was obtained.
    """

    edges: list[np.ndarray]
    prob: np.ndarray
    description: str = ""
    meta: dict = field(default_factory=dict)

    @property
    def centers(self) -> list[np.ndarray]:
        return [0.5 * (e[1:] + e[:-1]) for e in self.edges]

    @property
    def pmf_kT(self) -> np.ndarray:
        """-ln prob, shifted to a minimum of 0 (inf in empty bins)."""
        with np.errstate(divide="ignore"):
            f = -np.log(self.prob)
        return f - f[np.isfinite(f)].min()


@runtime_checkable
class System(Protocol):
    """What the core needs to know about a molecule.  See the module docstring."""

    name: str
    cg_dim: int
    fg_dim: int
    cg_periodic: tuple[bool, ...]
    fg_periodic: tuple[bool, ...]
    cg_domain: tuple[tuple[float, float], ...]
    cg_names: tuple[str, ...]

    def log_target(self, s: Tensor, x_fg: Tensor) -> Tensor:
        """Unnormalized log density of (s, x_fg), shape (B,) float64; differentiable in x_fg.

        Non-finite values (clashes) are allowed and are handled by the caller."""
        ...

    def valid(self, s: Tensor, x_fg: Tensor) -> Tensor:
        """Boolean mask (B,): samples that may be evaluated (e.g. the right chirality)."""
        ...

    def to_internal(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Full coordinates (B, ...) -> (s (B, cg_dim), x_fg (B, fg_dim))."""
        ...

    def from_internal(self, s: Tensor, x_fg: Tensor) -> tuple[Tensor, Tensor]:
        """(s, x_fg) -> (full coordinates (B, ...), log|det J_{T^-1}| (B,))."""
        ...

    def starting_data(self, seed: int) -> StartingData:
        ...

    def reference(self) -> ReferencePMF | None:
        ...


def wrap_angle(a: Tensor) -> Tensor:
    """Wrap angles (radians) to [-pi, pi)."""
    return torch.remainder(a + torch.pi, 2 * torch.pi) - torch.pi


def wrap_periodic(s: Tensor, periodic: tuple[bool, ...]) -> Tensor:
    """Wrap the periodic columns of s (B, d) to [-pi, pi); leave the others unchanged."""
    if not any(periodic):
        return s
    mask = torch.tensor(periodic, device=s.device)
    return torch.where(mask, wrap_angle(s), s)
