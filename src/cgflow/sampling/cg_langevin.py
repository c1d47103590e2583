"""Langevin dynamics in CG space on a PMF F(s) (the ensemble mean), BAOAB splitting.

Reduced units: the potential is F (kT of the run), the mass of every CG coordinate 1, so time is in
CG-unit * sqrt(1 / kT) (for dihedrals: rad sqrt(mol/kJ ...) - only ratios matter); ``beta`` is the
inverse temperature relative to the run's (the stationary density of s is exp(-beta F(s))).  One step:

    B  p <- p - dt/2 grad F(s)
    A  s <- s + dt/2 p            (then periodic wrap / wall reflection)
    O  p <- c p + sqrt((1 - c^2) / beta) xi,   c = exp(-friction dt)
    A  s <- s + dt/2 p            (wrap / reflect)
    B  p <- p - dt/2 grad F(s)

(Leimkuhler & Matthews; its configurational sampling error is O(dt^2)).  Periodic coordinates are wrapped
with :func:`cgflow.core.geometry.wrap_periodic`; at a non-periodic domain edge a walker is reflected
(position mirrored, momentum flipped), which keeps exp(-beta F) restricted to the domain stationary.

:func:`histogram_agreement` compares a trajectory's histogram with exp(-beta F) on a grid, with the
sampling error estimated from independent walkers.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Callable, Sequence

import numpy as np
import torch

from cgflow.core.geometry import wrap_periodic

Tensor = torch.Tensor


@dataclass(frozen=True)
class LangevinSettings:
    """dt (reduced time), friction (1 / reduced time), beta (relative inverse temperature), n_steps, every
    (keep every this many steps), burn_in (steps before the first kept frame)."""

    dt: float = 0.01
    friction: float = 1.0
    beta: float = 1.0
    n_steps: int = 10000
    every: int = 10
    burn_in: int = 0

    def __post_init__(self):
        if not self.dt > 0:
            raise ValueError(f"dt must be > 0, got {self.dt}")
        if not self.friction > 0:
            raise ValueError(f"friction must be > 0, got {self.friction}")
        if not self.beta > 0:
            raise ValueError(f"beta must be > 0, got {self.beta}")
        if self.n_steps < 1 or self.every < 1 or self.burn_in < 0:
            raise ValueError(f"need n_steps >= 1, every >= 1, burn_in >= 0 (got {self.n_steps}, {self.every}, "
                             f"{self.burn_in})")

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass
class Trajectory:
    """positions (T, walkers, d) float64, times (T,) (reduced, from the end of burn-in), pmf_kT (T, walkers)
    F at the kept frames; n_force_evaluations counts walker-steps."""

    positions: np.ndarray
    times: np.ndarray
    pmf_kT: np.ndarray
    n_force_evaluations: int


def _value_and_grad(pmf: Callable[[Tensor], Tensor], s: Tensor) -> tuple[Tensor, Tensor]:
    s = s.detach().requires_grad_(True)
    with torch.enable_grad():
        f = pmf(s)
        (g,) = torch.autograd.grad(f.sum(), s)
    if not (torch.isfinite(f).all() and torch.isfinite(g).all()):
        raise FloatingPointError("the PMF or its gradient is not finite along the trajectory (dt too large?)")
    return f.detach(), g.detach()


def reflect_into(s: Tensor, p: Tensor, domain: Sequence[tuple[float, float]],
                 periodic: Sequence[bool]) -> tuple[Tensor, Tensor]:
    """Mirror non-periodic coordinates that left [lo, hi] back inside, flipping their momenta."""
    for j, ((lo, hi), per) in enumerate(zip(domain, periodic)):
        if per:
            continue
        x = s[:, j]
        for _ in range(4):  # a step longer than the domain is refused below; a few mirrors always suffice
            low, high = x < lo, x > hi
            if not (low.any() or high.any()):
                break
            x = torch.where(low, 2 * lo - x, torch.where(high, 2 * hi - x, x))
            p[:, j] = torch.where(low | high, -p[:, j], p[:, j])
        if ((x < lo) | (x > hi)).any():
            raise FloatingPointError("a walker jumped across the whole domain in one step (dt too large?)")
        s[:, j] = x
    return s, p


def baoab(pmf: Callable[[Tensor], Tensor], s0: Tensor, settings: LangevinSettings, *,
          periodic: Sequence[bool], domain: Sequence[tuple[float, float]], generator: torch.Generator | None = None,
          p0: Tensor | None = None, progress: Callable[[int], None] | None = None) -> Trajectory:
    """Run BAOAB Langevin dynamics of walkers s0 (W, d) on ``pmf`` (s (B, d) -> F (B,) kT, differentiable).

    Momenta start from their Maxwell distribution at ``beta`` unless ``p0`` is given.  Keeps every
    ``settings.every``-th step after ``settings.burn_in`` steps (the state after that step)."""
    st = settings
    periodic = tuple(bool(p) for p in periodic)
    s = wrap_periodic(s0.detach().to(torch.float64).clone(), periodic)
    s, _ = reflect_into(s, torch.zeros_like(s), domain, periodic)
    kT = 1.0 / st.beta
    if p0 is None:
        p = math.sqrt(kT) * torch.randn(s.shape, generator=generator, dtype=torch.float64, device=s.device)
    else:
        p = p0.detach().to(torch.float64).clone()
    c = math.exp(-st.friction * st.dt)
    noise = math.sqrt((1.0 - c * c) * kT)
    half = 0.5 * st.dt
    f, g = _value_and_grad(pmf, s)
    kept_s, kept_f, kept_t = [], [], []
    total = st.burn_in + st.n_steps
    for step in range(1, total + 1):
        p = p - half * g
        s, p = reflect_into(wrap_periodic(s + half * p, periodic), p, domain, periodic)
        p = c * p + noise * torch.randn(s.shape, generator=generator, dtype=torch.float64, device=s.device)
        s, p = reflect_into(wrap_periodic(s + half * p, periodic), p, domain, periodic)
        f, g = _value_and_grad(pmf, s)
        p = p - half * g
        if step > st.burn_in and (step - st.burn_in) % st.every == 0:
            kept_s.append(s.cpu().numpy().copy())
            kept_f.append(f.cpu().numpy().copy())
            kept_t.append((step - st.burn_in) * st.dt)
        if progress is not None:
            progress(step)
    w, d = s.shape
    positions = np.stack(kept_s) if kept_s else np.zeros((0, w, d))
    pmf_kT = np.stack(kept_f) if kept_f else np.zeros((0, w))
    return Trajectory(positions=positions, times=np.asarray(kept_t, dtype=np.float64), pmf_kT=pmf_kT,
                      n_force_evaluations=int(w * (total + 1)))


def boltzmann_draws(pmf_on_grid_kT: np.ndarray, edges: Sequence[np.ndarray], n: int, beta: float,
                    rng: np.random.Generator) -> np.ndarray:
    """n points drawn from exp(-beta F) on a grid of bins (F at the bin centres, shape (n_1, ..., n_d)), each
    uniform within its bin: starting points near equilibrium."""
    f = np.asarray(pmf_on_grid_kT, dtype=np.float64)
    w = np.exp(-beta * (f - np.nanmin(f)))
    w[~np.isfinite(w)] = 0.0
    w = w.reshape(-1) / w.sum()
    flat = rng.choice(w.size, size=n, p=w)
    idx = np.unravel_index(flat, f.shape)
    out = np.empty((n, len(edges)))
    for j, e in enumerate(edges):
        lo, hi = e[idx[j]], e[idx[j] + 1]
        out[:, j] = lo + rng.random(n) * (hi - lo)
    return out


@dataclass
class HistogramAgreement:
    """A trajectory's histogram vs exp(-beta F).

    chi2: sum over the bins used of ((p_hat - p) / se)^2, se from the spread between independent walkers
    (floored by the multinomial value of all frames as if independent); dof: the bins used (expected
    probability >= min_prob) minus 1; threshold: dof + 4 sqrt(2 dof) (a 4-sigma chi^2 bound);
    kl: KL(p_hat || p) over all bins (nats); kl_noise: its expected value from sampling noise alone,
    (dof) / (2 n_eff) with n_eff the frames' effective number; ok: chi2 <= threshold."""

    chi2: float
    dof: int
    threshold: float
    kl: float
    kl_noise: float
    n_eff: float
    ok: bool

    def as_dict(self) -> dict:
        return asdict(self)


def histogram_agreement(positions: np.ndarray, pmf_on_grid_kT: np.ndarray, edges: Sequence[np.ndarray], beta: float,
                        min_prob: float = 1e-3) -> HistogramAgreement:
    """Compare positions (T, W, d) (W independent walkers) with p(b) ∝ exp(-beta F(b)) on the bins of
    ``edges`` (F at the bin centres, shape (n_1, ..., n_d)).  Needs W >= 4."""
    t, w, d = positions.shape
    if w < 4:
        raise ValueError("histogram_agreement needs at least 4 independent walkers")
    f = np.asarray(pmf_on_grid_kT, dtype=np.float64)
    p = np.exp(-beta * (f - f.min()))
    p = (p / p.sum()).reshape(-1)
    per_walker = np.empty((w, p.size))
    for k in range(w):
        h, _ = np.histogramdd(positions[:, k, :], bins=list(edges))
        per_walker[k] = h.reshape(-1) / t
    p_hat = per_walker.mean(0)
    var_walkers = per_walker.var(0, ddof=1) / w
    n_all = t * w
    var = np.maximum(var_walkers, p * (1 - p) / n_all)
    used = p >= min_prob
    chi2 = float((((p_hat - p) ** 2 / var)[used]).sum())
    dof = int(used.sum()) - 1
    # effective frames: the iid variance over the walker-based variance, averaged over the used bins
    ratio = np.clip((p * (1 - p) / n_all)[used] / np.maximum(var_walkers[used], 1e-300), 0, 1)
    n_eff = float(n_all * ratio.mean())
    nz = p_hat > 0
    kl = float((p_hat[nz] * np.log(p_hat[nz] / p[nz])).sum())
    threshold = dof + 4.0 * math.sqrt(2.0 * max(dof, 1))
    return HistogramAgreement(chi2=chi2, dof=dof, threshold=threshold, kl=kl, kl_noise=dof / (2.0 * max(n_eff, 1.0)),
                              n_eff=n_eff, ok=chi2 <= threshold)


def binned_pmf(pmf: Callable[[Tensor], Tensor], edges: Sequence[np.ndarray], beta: float, sub: int | None = None,
               batch_size: int = 65536) -> np.ndarray:
    """The PMF of each bin at ``beta``, -ln(mean over sub^d midpoints of exp(-beta F)) / beta (kT, shape
    (n_1, ..., n_d)): what a histogram of exp(-beta F) samples estimates (default sub: 4 for d <= 2, else 1)."""
    d = len(edges)
    sub = sub if sub is not None else (4 if d <= 2 else 1)
    axes = []
    for e in edges:
        e = np.asarray(e, dtype=np.float64)
        frac = (np.arange(sub) + 0.5) / sub
        axes.append((e[:-1, None] + frac[None, :] * np.diff(e)[:, None]).reshape(-1))
    mesh = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1).reshape(-1, d)
    parts = []
    with torch.no_grad():
        for start in range(0, mesh.shape[0], batch_size):
            parts.append(pmf(torch.as_tensor(mesh[start:start + batch_size], dtype=torch.float64)).cpu().numpy())
    f = np.concatenate(parts).astype(np.float64)
    shape = sum(((len(e) - 1, sub) for e in edges), ())
    x = -beta * (f - f.min())
    w = np.exp(x).reshape(shape).mean(axis=tuple(range(1, 2 * d, 2)))
    with np.errstate(divide="ignore"):
        return -np.log(w) / beta + f.min()
