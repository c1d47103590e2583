"""PMF labels by importance sampling through the conditional flow (method spec 2.7).

For a CG point s with samples x_i ~ q(. | s), log weights log w_i = log p~(x_i, s) - log q(x_i | s)
estimate Z(s) = E_q[w] and the PMF F(s) = -ln Z(s) + const (kT).
"""

from __future__ import annotations

import math

import torch


def clip_top_k(log_w: torch.Tensor, k: int) -> torch.Tensor:
    """Set the k largest log weights of every row to the k-th largest (weight clipping).

    Args:
        log_w: (P, M) log weights; -inf marks copies that contribute no weight.
        k: 0 or 1 disables clipping.
    Rows with fewer than k finite entries are clipped at their smallest finite value.
    """
    if k <= 1 or log_w.shape[1] < k:
        return log_w
    top = torch.topk(log_w, k, dim=1).values  # (P, k) descending
    kth = top[:, k - 1 : k]
    n_finite = torch.isfinite(log_w).sum(1, keepdim=True)
    smallest_finite = torch.where(torch.isfinite(log_w), log_w, torch.full_like(log_w, math.inf)).min(1, keepdim=True).values
    threshold = torch.where(n_finite >= k, kth, smallest_finite)
    return torch.minimum(log_w, threshold)


def pmf_from_log_weights(log_w: torch.Tensor, drawn: torch.Tensor | None = None, top_k_clip: int = 0) -> torch.Tensor:
    """F(s) = -ln( mean over drawn copies of w ), in kT, per CG point.

    Args:
        log_w: (P, M) float64 log importance weights.  NaN (failed evaluation) and -inf
            count as zero weight.
        drawn: (P, M) bool, which copies were drawn at all (evaluated or rejected by the
            system's filter: a rejected draw is a zero-weight sample of the estimator, so the
            result is the PMF restricted to the accepted region, e.g. L-chirality).  None:
            all copies.
        top_k_clip: clip the k largest weights per point to the k-th largest (0: off).
    Returns:
        (P,) float64 PMF values; NaN for points without any positive weight.
    """
    log_w = torch.where(torch.isnan(log_w), torch.full_like(log_w, -math.inf), log_w)
    if drawn is None:
        drawn = torch.ones_like(log_w, dtype=torch.bool)
    log_w = torch.where(drawn, log_w, torch.full_like(log_w, -math.inf))
    log_w = clip_top_k(log_w, top_k_clip)
    n_drawn = drawn.sum(1).to(log_w.dtype)
    lse = torch.logsumexp(log_w, dim=1) - torch.log(n_drawn)
    f = -lse
    return torch.where(torch.isfinite(f), f, torch.full_like(f, math.nan))
