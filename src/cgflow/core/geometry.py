"""Angles and internal-coordinate geometry, the one home of each formula.

All functions are batched over leading axes and differentiable (torch); angles in radians.
Dihedrals follow the IUPAC sign convention, as ``mdtraj.compute_dihedrals`` and OpenMM's
torsions do (checked against mdtraj by a test).
"""

from __future__ import annotations

import math

import torch

Tensor = torch.Tensor


def wrap_angle(a: Tensor) -> Tensor:
    """Wrap angles (radians) to [-pi, pi), derivative 1; never returns +pi (the float rounding of
    ``remainder(a + pi, 2 pi) - pi`` can give +pi just below an odd multiple of -pi)."""
    w = torch.remainder(a + math.pi, 2 * math.pi) - math.pi
    return torch.where(w >= math.pi, w - 2 * math.pi, w)


def wrap_periodic(s: Tensor, periodic: tuple[bool, ...]) -> Tensor:
    """Wrap the periodic columns of s (B, d) to [-pi, pi); leave the others unchanged."""
    if not any(periodic):
        return s
    mask = torch.tensor(periodic, device=s.device)
    return torch.where(mask, wrap_angle(s), s)


def compute_distances(x0: Tensor, x1: Tensor) -> Tensor:
    """|x1 - x0| over the last axis (x0, x1: (..., 3)) -> (...)."""
    return torch.linalg.vector_norm(x1 - x0, dim=-1)


def compute_angles(x0: Tensor, x1: Tensor, x2: Tensor) -> Tensor:
    """Angle x0-x1-x2 at x1 in [0, pi], (..., 3) each -> (...) (atan2 form, stable gradients away
    from 0 and pi)."""
    u = x0 - x1
    v = x2 - x1
    return torch.atan2(torch.linalg.vector_norm(torch.cross(u, v, dim=-1), dim=-1), (u * v).sum(-1))


def compute_dihedrals(x0: Tensor, x1: Tensor, x2: Tensor, x3: Tensor) -> Tensor:
    """Dihedral x0-x1-x2-x3 (IUPAC sign, as mdtraj.compute_dihedrals) in (-pi, pi], (..., 3) each
    -> (...)."""
    b1 = x1 - x0
    b2 = x2 - x1
    b3 = x3 - x2
    n1 = torch.cross(b1, b2, dim=-1)
    n2 = torch.cross(b2, b3, dim=-1)
    y = torch.linalg.vector_norm(b2, dim=-1) * (b1 * n2).sum(-1)
    x = (n1 * n2).sum(-1)
    return torch.atan2(y, x)
