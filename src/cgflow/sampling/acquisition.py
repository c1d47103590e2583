"""Choosing and spreading new CG points (method spec 2.10)."""

from __future__ import annotations

import numpy as np
import torch

from cgflow.core.geometry import wrap_angle, wrap_periodic


def periodic_difference(a: torch.Tensor, b: torch.Tensor, periodic: tuple[bool, ...]) -> torch.Tensor:
    """a - b with periodic dims taken as the shortest signed angle; broadcasting shapes (..., d)."""
    diff = a - b
    mask = torch.tensor(periodic, device=diff.device)
    return torch.where(mask, wrap_angle(diff), diff)


def farthest_point_selection(points: torch.Tensor, n: int, periodic: tuple[bool, ...],
                             rng: np.random.Generator) -> torch.Tensor:
    """Greedy farthest-point sampling: a random first point, then repeatedly the point with the
    largest minimum (periodic-aware Euclidean) distance to those selected.

    Args:
        points: (P, d).  n: how many to keep (<= P).
    Returns:
        (n,) indices into points.
    """
    P = points.shape[0]
    if n >= P:
        return torch.arange(P)
    chosen = [int(rng.integers(P))]
    dmin = periodic_difference(points, points[chosen[0]], periodic).norm(dim=1)
    for _ in range(n - 1):
        nxt = int(torch.argmax(dmin))
        chosen.append(nxt)
        dmin = torch.minimum(dmin, periodic_difference(points, points[nxt], periodic).norm(dim=1))
    return torch.tensor(chosen)


def distance_to_nearest(points: torch.Tensor, existing: torch.Tensor, periodic: tuple[bool, ...],
                        chunk: int = 2048) -> torch.Tensor:
    """(P,) periodic-aware Euclidean distance of each row of points (P, d) to its nearest row of existing (E, d)."""
    if existing.shape[0] == 0:
        return torch.full((points.shape[0],), float("inf"), dtype=points.dtype)
    out = []
    for start in range(0, points.shape[0], chunk):
        diff = periodic_difference(points[start:start + chunk, None, :], existing[None, :, :], periodic)
        out.append(diff.norm(dim=-1).min(dim=1).values)
    return torch.cat(out)


def novel_points(candidates: torch.Tensor, existing: torch.Tensor, n: int, radius: float,
                 periodic: tuple[bool, ...], rng: np.random.Generator) -> torch.Tensor:
    """Up to n of the candidates (C, d) that lie farther than ``radius`` from every existing point (E, d), spread
    by farthest-point selection: where something (e.g. biased MD) went that the existing points do not cover.
    Returns (m, d), m <= n (0 if no candidate is that far)."""
    far = candidates[distance_to_nearest(candidates, existing, periodic) > radius]
    if far.shape[0] == 0:
        return far
    return far[farthest_point_selection(far, n, periodic, rng)]


def block_resampled_points(points: torch.Tensor, log_weight: torch.Tensor, n: int, block: int, domain,
                           rng: np.random.Generator) -> torch.Tensor:
    """Candidates that combine what is known with what is not: n points drawn from ``points`` (P, d) with
    probability ~ exp(log_weight) (P,), each with one block of ``block`` consecutive CG coordinates (a random
    start, wrapping around the coordinate list) redrawn uniformly over the domain ((d, 2) lower/upper bounds).

    In a CG space made of nearly independent parts (the (phi, psi) pairs of a peptide), a basin of one part next
    to the low-free-energy states of the others is reached in one move, while uniform or grid draws over all d
    coordinates land mostly where every part is high.  Returns (n, d) float64."""
    P, d = points.shape
    if n <= 0 or P == 0:
        return torch.zeros(0, d, dtype=torch.float64)
    lw = np.asarray(log_weight, dtype=np.float64)
    lw = np.where(np.isfinite(lw), lw, -np.inf)
    w = np.exp(lw - lw.max())
    pick = rng.choice(P, size=n, p=w / w.sum())
    out = points[torch.as_tensor(pick)].to(torch.float64).clone()
    lo, hi = np.asarray(domain, dtype=np.float64).T
    b = min(block, d)
    start = rng.integers(d, size=n)
    for r in range(n):
        cols = [(int(start[r]) + j) % d for j in range(b)]
        out[r, cols] = torch.as_tensor(lo[cols] + rng.random(b) * (hi[cols] - lo[cols]))
    return out


def spread_uniform_ball(centers: torch.Tensor, n_per_center: int, radius: float, periodic: tuple[bool, ...],
                        rng: np.random.Generator) -> torch.Tensor:
    """Replace each center by n_per_center points uniform in the d-ball of the given radius
    around it (1-D: an interval, 2-D: a disc); periodic dims wrapped.

    Args:
        centers: (C, d).
    Returns:
        (C * n_per_center, d), grouped by center.
    """
    C, d = centers.shape
    direction = rng.standard_normal((C, n_per_center, d))
    direction /= np.linalg.norm(direction, axis=-1, keepdims=True)
    r = radius * rng.random((C, n_per_center, 1)) ** (1.0 / d)
    pts = centers[:, None, :].cpu().numpy() + r * direction
    return wrap_periodic(torch.as_tensor(pts.reshape(C * n_per_center, d), dtype=centers.dtype), periodic)


def reflect_into_domain(points: torch.Tensor, domain, periodic: tuple[bool, ...]) -> torch.Tensor:
    """``points`` (P, d) folded into the CG domain: a non-periodic coordinate beyond an end is mirrored
    back at it (repeatedly, so any value lands inside [low, high]); periodic ones are wrapped.  Points
    inside are unchanged.  Spreading near an end so keeps its density inside the domain (a reflecting
    wall), and no CG point that reaches the flow lies where the system's domain says none should be."""
    pts = wrap_periodic(points.clone(), periodic)
    for i, ((lo, hi), per) in enumerate(zip(domain, periodic)):
        if per:
            continue
        lo, hi = float(lo), float(hi)
        x = pts[:, i]
        outside = (x < lo) | (x > hi)
        if bool(outside.any()):
            w = hi - lo
            t = torch.remainder(x - lo, 2 * w)
            pts[:, i] = torch.where(outside, lo + torch.where(t <= w, t, 2 * w - t), x)
    return pts
