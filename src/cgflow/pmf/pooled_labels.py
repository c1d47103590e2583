"""PMF labels that reuse every draw of a run: pooled importance-sampling values and mean forces.

Every draw i at CG point s_p, made by the flow q_t of its moment, gives an unbiased estimate
``w_i = p~(x_i, s_p) / q_t(x_i | s_p)`` of ``Z(s_p) = int p~(x, s_p) dx`` (a draw the system's filter
rejected is a sample with w = 0: the PMF is then that of the accepted region, e.g. L-chirality).
Any combination ``Z^ = sum_i c_i w_i / sum_i c_i`` with weights c_i fixed independently of the w_i is
unbiased too.  Draws of a poor flow (early iterations) have heavy-tailed weights; we weight them
by an inverse-variance rule per iteration t,

    c_t = (exp(sigma_t^2) - 1)^-power,   sigma_t^2 = median over points of the variance of log w at t,

where exp(sigma^2) - 1 is the relative variance Var(w)/Z^2 of log-normal weights.  sigma_t^2 is pooled
over all the points of an iteration (thousands of draws), so c_t barely depends on any one point's
weights.  power = 1 would be inverse-variance weighting if the weights were log-normal; flows trained
by reverse KL are narrower than the target, their weights heavier-tailed than log-normal, and the
log-normal variance understates theirs.  power = 2 (the default) was the most robust in the Gaussian
scenarios of tests/test_pooled_labels.py (never worse than the latest iteration alone, much better
than uniform pooling when early proposals are poor, equal to uniform when all are alike).

Mean forces (method: thermodynamic integration by importance sampling): in internal coordinates
``F(s) = -ln int p~(s, x) dx`` so ``dF/ds = -E_{x|s}[ d ln p~(s, x) / ds ]`` at fixed FG coordinates x,
estimated with the same (self-normalized) weights; ``ln p~`` includes the log-Jacobian of the
internal-coordinate map.  Self-normalization makes it consistent (bias O(1/ESS)), not unbiased.

Units: F in kT, dF/ds in kT per CG unit (kT/rad for angles).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

MAX_LOG_VARIANCE = 50.0


@dataclass
class PooledLabels:
    """Labels of P CG points (NaN where a point has no positive weight).

    Attributes:
        pmf_kT: (P,) F(s_p) = -ln Z^(s_p) (a common additive constant is arbitrary).
        mean_force: (P, cg_dim) dF/ds (kT per CG unit); NaN where unknown.
        pmf_se_kT: (P,) standard error of pmf_kT (delta method from the weights).
        mean_force_se: (P, cg_dim) standard error of each mean-force component.
        ess: (P,) effective sample size of the pooled weights, (sum w)^2 / sum w^2.
        n_draws: (P,) draws pooled (rejected and non-finite ones included as zero weights).
    """

    pmf_kT: torch.Tensor
    mean_force: torch.Tensor
    pmf_se_kT: torch.Tensor
    mean_force_se: torch.Tensor
    ess: torch.Tensor
    n_draws: torch.Tensor


def iteration_weights(point: torch.Tensor, iteration: torch.Tensor, log_w: torch.Tensor,
                      rule: str = "inverse_variance", power: float = 2.0) -> torch.Tensor:
    """Per-draw pooling weights c_i (N,) float64, one value per iteration.

    Args:
        point, iteration: (N,) int64 point index and iteration of each draw.
        log_w: (N,) float64 log weights (-inf: zero weight).
        rule: "inverse_variance" (c_t = expm1(sigma_t^2)^-power, see the module docstring) or "uniform".
    """
    n = log_w.shape[0]
    if rule == "uniform" or n == 0:
        return torch.ones(n, dtype=torch.float64)
    if rule != "inverse_variance":
        raise ValueError(f"unknown pooling rule {rule!r}")
    finite = torch.isfinite(log_w)
    iters, it_idx = torch.unique(iteration, return_inverse=True)
    # groups (point, iteration) of finite draws: within-group variance of log w
    key = point * (int(iters.numel()) + 1) + it_idx
    g_keys, g_idx = torch.unique(key[finite], return_inverse=True)
    G = g_keys.numel()
    lw = log_w[finite]
    cnt = torch.zeros(G, dtype=torch.float64).index_add_(0, g_idx, torch.ones_like(lw))
    s1 = torch.zeros(G, dtype=torch.float64).index_add_(0, g_idx, lw)
    mean = s1 / cnt.clamp_min(1)
    s2 = torch.zeros(G, dtype=torch.float64).index_add_(0, g_idx, (lw - mean[g_idx]) ** 2)
    var = s2 / (cnt - 1).clamp_min(1)
    g_iter = torch.remainder(g_keys, int(iters.numel()) + 1)
    multi = cnt >= 2
    T = iters.numel()
    # the median over groups: a clash (log w of -1e4) makes its own group's variance enormous without
    # mattering for Var(w); a mean would let a handful of such groups decide every weight
    overall = float(var[multi].median()) if bool(multi.any()) else 1.0
    sigma2 = torch.full((T,), overall, dtype=torch.float64)
    for t in torch.unique(g_iter[multi]).tolist():
        sigma2[t] = var[multi & (g_iter == t)].median()
    c_t = torch.expm1(sigma2.clamp(0.0, MAX_LOG_VARIANCE)).clamp_min(1e-3) ** -power
    return c_t[it_idx]


def _segment_logsumexp(values: torch.Tensor, seg: torch.Tensor, n_seg: int) -> torch.Tensor:
    """log sum exp of values (N,) within segments seg (N,) -> (n_seg,); -inf for empty segments."""
    mx = torch.full((n_seg,), -math.inf, dtype=values.dtype).scatter_reduce(0, seg, values, "amax")
    safe = torch.where(torch.isfinite(mx), mx, torch.zeros_like(mx))
    tot = torch.zeros(n_seg, dtype=values.dtype).index_add_(0, seg, torch.exp(values - safe[seg]))
    return torch.log(tot) + safe


def clip_top_k_segments(log_v: torch.Tensor, seg: torch.Tensor, n_seg: int, k: int) -> torch.Tensor:
    """Set the k largest values of every segment to the segment's k-th largest (weight clipping).

    Segments with fewer than k finite values are left as they are.  ``k`` <= 1 disables it."""
    if k <= 1 or log_v.numel() == 0:
        return log_v
    order = torch.argsort(log_v, descending=True, stable=True)
    order = order[torch.argsort(seg[order], stable=True)]  # grouped by segment, descending inside
    seg_sorted = seg[order]
    counts = torch.bincount(seg, minlength=n_seg)
    starts = torch.cumsum(counts, 0) - counts
    rank = torch.arange(order.numel()) - starts[seg_sorted]
    vals = log_v[order]
    n_finite = torch.zeros(n_seg, dtype=torch.long).index_add_(0, seg, torch.isfinite(log_v).long())
    kth = torch.full((n_seg,), math.inf, dtype=log_v.dtype)
    at_k = rank == (k - 1)
    kth[seg_sorted[at_k]] = vals[at_k]
    kth = torch.where(n_finite >= k, kth, torch.full_like(kth, math.inf))
    clipped = torch.minimum(vals, kth[seg_sorted])
    out = torch.empty_like(log_v)
    out[order] = clipped
    return out


def pooled_labels(n_points: int, point: torch.Tensor, iteration: torch.Tensor, log_w: torch.Tensor,
                  grad_s: torch.Tensor, *, rule: str = "inverse_variance", power: float = 2.0,
                  top_k_clip: int = 0) -> PooledLabels:
    """Pooled PMF values and mean forces of points 0..n_points-1 from all their draws.

    Args:
        n_points: P.
        point, iteration: (N,) int64; log_w: (N,) float64 (-inf: zero weight);
        grad_s: (N, cg_dim) float64, d ln p~/ds at fixed FG coordinates of each draw.
        rule, power: pooling weights across iterations, see :func:`iteration_weights`.
        top_k_clip: clip the k largest pooled weights c_i w_i of each point (0: off).
    Returns:
        :class:`PooledLabels` for all P points.
    """
    d = grad_s.shape[1]
    log_c = torch.log(iteration_weights(point, iteration, log_w, rule, power))
    log_v = clip_top_k_segments(log_w + log_c, point, n_points, top_k_clip)  # log(c_i w_i)
    lse_v = _segment_logsumexp(log_v, point, n_points)
    lse_c = _segment_logsumexp(log_c, point, n_points)
    f = -(lse_v - lse_c)
    # self-normalized weights within each point
    safe = torch.where(torch.isfinite(lse_v), lse_v, torch.zeros_like(lse_v))
    omega = torch.where(torch.isfinite(lse_v[point]), torch.exp(log_v - safe[point]), torch.zeros_like(log_v))
    sum_o2 = torch.zeros(n_points, dtype=torch.float64).index_add_(0, point, omega**2)
    ess = torch.where(sum_o2 > 0, 1.0 / sum_o2.clamp_min(1e-300), torch.zeros_like(sum_o2))
    c = torch.exp(log_c - lse_c[point])
    sum_c2 = torch.zeros(n_points, dtype=torch.float64).index_add_(0, point, c**2)
    # Var(ln Z^) ~ Var(Z^)/Z^2 ~ sum omega^2 - sum c^2 (exact relation for uniform c: 1/ESS - 1/N)
    var_f = (sum_o2 - sum_c2).clamp_min(0.0)
    m = torch.zeros(n_points, d, dtype=torch.float64).index_add_(0, point, omega[:, None] * grad_s)
    dev2 = (grad_s - m[point]) ** 2
    var_m = torch.zeros(n_points, d, dtype=torch.float64).index_add_(0, point, omega[:, None] ** 2 * dev2)
    # when one weight dominates, sum omega^2 (g - m)^2 -> 0 although the estimate rests on one sample:
    # floor it by the plain spread of the point's gradient samples over its ESS (inf with < 2 samples)
    fin = torch.isfinite(log_w)
    n_f = torch.zeros(n_points, dtype=torch.float64).index_add_(0, point[fin], torch.ones_like(log_w[fin]))
    s1 = torch.zeros(n_points, d, dtype=torch.float64).index_add_(0, point[fin], grad_s[fin])
    s2 = torch.zeros(n_points, d, dtype=torch.float64).index_add_(0, point[fin], grad_s[fin] ** 2)
    spread = ((s2 - s1**2 / n_f.clamp_min(1)[:, None]) / (n_f - 1).clamp_min(1)[:, None]).clamp_min(0.0)
    spread = torch.where((n_f >= 2)[:, None], spread, torch.full_like(spread, math.inf))
    var_m = torch.maximum(var_m, spread / ess.clamp_min(1e-300)[:, None])
    n_draws = torch.bincount(point, minlength=n_points)
    known = torch.isfinite(f)
    nan = torch.full_like(f, math.nan)
    return PooledLabels(pmf_kT=torch.where(known, f, nan),
                        mean_force=torch.where(known[:, None], -m, torch.full_like(m, math.nan)),
                        pmf_se_kT=torch.where(known, var_f.sqrt(), nan),
                        mean_force_se=torch.where(known[:, None], var_m.sqrt(), torch.full_like(m, math.nan)),
                        ess=ess, n_draws=n_draws)
