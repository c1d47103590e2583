"""The interface every conditional flow implements.

A flow is a bijection ``x_fg = g(z; s)`` for each CG point ``s`` with a base density ``q_Z``.
Shapes: z, x are (B, fg_dim); s is (B, cg_dim); log-dets and densities are (B,).
"""

from __future__ import annotations

import math

import torch
from torch import nn

LOG_2PI = math.log(2 * math.pi)


class ConditionalFlow(nn.Module):
    """Base class.  Subclasses implement :meth:`forward` and :meth:`inverse`.

    ``fg_periodic`` marks the FG dimensions that are angles: their base is uniform on
    [-pi, pi); all others have a standard normal base.
    """

    def __init__(self, fg_dim: int, fg_periodic: tuple[bool, ...] | None = None):
        super().__init__()
        self.fg_dim = fg_dim
        periodic = tuple(fg_periodic) if fg_periodic is not None else (False,) * fg_dim
        if len(periodic) != fg_dim:
            raise ValueError(f"fg_periodic has {len(periodic)} entries, expected fg_dim={fg_dim}")
        self.register_buffer("periodic_mask", torch.tensor(periodic, dtype=torch.bool))

    # --- to implement -------------------------------------------------------------------
    def forward(self, z: torch.Tensor, s: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x = g(z; s) and log|det dg/dz|, shapes (B, fg_dim) and (B,)."""
        raise NotImplementedError

    def inverse(self, x: torch.Tensor, s: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """z = g^-1(x; s) and log|det dg^-1/dx|, shapes (B, fg_dim) and (B,)."""
        raise NotImplementedError

    # --- base distribution ----------------------------------------------------------------
    def sample_base(self, n: int, dtype=torch.float64, device=None) -> torch.Tensor:
        device = device if device is not None else self.periodic_mask.device
        gauss = torch.randn(n, self.fg_dim, dtype=dtype, device=device)
        if not bool(self.periodic_mask.any()):
            return gauss
        unif = (torch.rand(n, self.fg_dim, dtype=dtype, device=device) * 2 - 1) * math.pi
        return torch.where(self.periodic_mask, unif, gauss)

    def base_log_prob(self, z: torch.Tensor) -> torch.Tensor:
        gauss = -0.5 * (z**2 + LOG_2PI)
        unif = torch.full_like(z, -math.log(2 * math.pi))
        return torch.where(self.periodic_mask, unif, gauss).sum(-1)

    # --- distribution API -------------------------------------------------------------------
    @property
    def param_dtype(self) -> torch.dtype:
        """The dtype the networks compute in (float32 flows are faster; energies stay float64)."""
        p = next(self.parameters(), None)
        return p.dtype if p is not None else torch.float64

    def sample(self, s: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One reparameterized sample per row of s: (x (B, fg_dim), log q(x | s) (B,)), in s's dtype
        (computed in :attr:`param_dtype`)."""
        pd = self.param_dtype
        z = self.sample_base(s.shape[0], dtype=pd, device=s.device)
        x, log_det = self.forward(z, s.to(pd))
        return x.to(s.dtype), (self.base_log_prob(z) - log_det).to(s.dtype)

    def log_prob(self, x: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        """log q(x | s), shape (B,), in x's dtype (computed in :attr:`param_dtype`)."""
        pd = self.param_dtype
        z, log_det = self.inverse(x.to(pd), s.to(pd))
        return (self.base_log_prob(z) + log_det).to(x.dtype)
