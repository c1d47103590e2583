"""Conditional rational-quadratic (RQ) spline coupling flow over the FG internal coordinates.

Each block is a coupling layer (Durkan et al. 2019, "Neural Spline Flows"): a fixed, seeded random
half of the FG vector (the *identity half*) conditions the monotone RQ splines applied to the other
half (the *transformed half*).  Even blocks use the mask, odd blocks its complement.

* Circular FG dims (``fg_periodic``) use **circular** RQ splines on [-pi, pi] whose first and last
  knot derivatives are tied (Rezende et al. 2020), a diffeomorphism of the circle; their values are
  wrapped to [-pi, pi).  As conditioner inputs they enter as (cos, sin).
* Other FG dims use RQ splines on [-B, B] (``B = tail_bound``) with boundary derivatives 1 and
  identity (linear) tails outside.
* The spline parameters (bin widths, heights, knot derivatives; ``n_bins`` bins) of the transformed
  half come from a residual MLP of the identity half concatenated with the CG context features
  (``features(s)``); the context is concatenated into every residual block too.
* Optionally (default) the identity half also gets an unconditional learned elementwise RQ spline.
  It is evaluated together with the conditional splines (one spline call per block in the forward
  direction): the conditioner reads the identity half *before* this spline, so the inverse first
  undoes the unconditional spline, then the conditional one.
* After every second block (not after the last) the circular dims are shifted by a fixed seeded
  random angle and wrapped (volume preserving); after the last block the accumulated shift is
  undone (a fixed rotation), so that the whole flow is the identity at initialization.
* Identity initialization: the last layer of every parameter net (and the unconditional spline
  parameters) is zero with the derivative bias ``log(exp(1 - min_derivative) - 1)``, so every spline
  is the identity at initialization.

Everything runs with fixed shapes and without host synchronization (bins from a sum of
comparisons, parameters by ``gather``, inside/tail by ``torch.where``, masks as index buffers), so
forward and inverse can be captured by ``torch.compile(fullgraph=True)`` or CUDA graphs.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from cgflow.core.features import CGFeatures
from cgflow.core.geometry import wrap_angle
from cgflow.flows.base import ConditionalFlow

TWO_PI = 2.0 * math.pi


def _derivative_bias(min_derivative: float) -> float:
    """The softplus argument giving a knot derivative of exactly 1."""
    return math.log(math.expm1(1.0 - min_derivative))


def rq_spline(x: torch.Tensor, params: torch.Tensor, bound: torch.Tensor, circular: torch.Tensor, *,
              inverse: bool = False, min_bin_width: float = 1e-3, min_bin_height: float = 1e-3,
              min_derivative: float = 1e-3) -> tuple[torch.Tensor, torch.Tensor]:
    """Elementwise monotone rational-quadratic spline (Durkan et al. 2019, eqs. 4-8).

    Args:
        x: (B, D) inputs (outputs of the spline if ``inverse``).
        params: (B, 3K, D) unnormalized parameters: K widths, K heights, K derivatives (bins along
            dim 1, so that the per-bin operations run over contiguous rows of D values).  For
            non-circular dims derivative ``K-1`` is unused (both boundary derivatives are 1); for
            circular dims it is the shared boundary derivative (first knot = last knot).
        bound: (D,) the spline lives on [-bound, bound].
        circular: (D,) bool.  Circular dims: input wrapped into [-pi, pi) (bound must be pi) and
            output wrapped.  Others: identity outside [-bound, bound].
        inverse: evaluate the inverse map.

    Returns:
        (y, log|dy/dx|) both (B, D).
    """
    n, d3, dim = params.shape
    k = d3 // 3
    u = params.view(n, 3, k, dim)
    bound = bound.to(x.dtype)
    lo = -bound

    x = torch.where(circular, wrap_angle(x), x)
    inside = circular | ((x >= lo) & (x <= bound))
    # evaluate the spline formula only on values inside the interval (finite gradients everywhere)
    xc = torch.clamp(x, min=lo, max=bound)

    # knots: widths (row 0) and heights (row 1) together, (B, 2, K+1, D), exact end points -B and B
    frac = torch.softmax(u[:, :2], dim=2)
    if min_bin_width == min_bin_height:
        size = min_bin_width + (1.0 - min_bin_width * k) * frac
    else:
        size = torch.cat([min_bin_width + (1.0 - min_bin_width * k) * frac[:, :1],
                          min_bin_height + (1.0 - min_bin_height * k) * frac[:, 1:]], dim=1)
    cum = torch.cumsum(size, dim=2)
    edge = torch.zeros_like(cum[:, :, :1])
    cum = torch.cat([edge, cum[:, :, :-1], edge + 1.0], dim=2)
    knots = lo + (2.0 * bound) * cum
    # knot derivatives (B, K+1, D); boundary ones tied (circular) or 1 (linear tails)
    deriv = min_derivative + F.softplus(u[:, 2])
    d_edge = torch.where(circular, deriv[:, k - 1], torch.ones_like(deriv[:, k - 1]))[:, None]
    deriv = torch.cat([d_edge, deriv[:, :k - 1], d_edge], dim=1)

    idx = (xc[:, None] >= knots[:, 1 if inverse else 0, 1:k]).sum(dim=1, keepdim=True)  # (B, 1, D) in [0, K-1]
    idx2 = idx[:, None].expand(n, 2, 1, dim)
    left = torch.gather(knots, 2, idx2)[:, :, 0]  # (B, 2, D)
    right = torch.gather(knots, 2, idx2 + 1)[:, :, 0]
    x_k, y_k = left[:, 0], left[:, 1]
    w = right[:, 0] - x_k
    h = right[:, 1] - y_k
    d_k = torch.gather(deriv, 1, idx)[:, 0]
    d_k1 = torch.gather(deriv, 1, idx + 1)[:, 0]
    s = h / w
    dsum = d_k1 + d_k - 2.0 * s

    if not inverse:
        theta = (xc - x_k) / w
        t1 = theta * (1.0 - theta)
        denom = s + dsum * t1
        y_in = y_k + h * (s * theta * theta + d_k * t1) / denom
    else:
        dy = xc - y_k
        a = h * (s - d_k) + dy * dsum
        b = h * d_k - dy * dsum
        c = -s * dy
        sq = torch.sqrt(torch.clamp(b * b - 4.0 * a * c, min=0.0))
        # the root in [0, 1] is 2c / (-b - sq) = (-b + sq) / (2a); take the form without cancellation
        # (for b < 0 the root's a is > 0).  Safe denominators keep the unused branch finite.
        pos = b >= 0
        den1 = torch.where(pos, -b - sq, -torch.ones_like(b))
        den2 = torch.where(pos, torch.ones_like(a), 2.0 * a)
        theta = torch.where(pos, (2.0 * c) / den1, (-b + sq) / den2)
        theta = torch.clamp(theta, 0.0, 1.0)
        t1 = theta * (1.0 - theta)
        denom = s + dsum * t1
        y_in = x_k + theta * w
    one_m = 1.0 - theta
    log_deriv = (2.0 * torch.log(s) + torch.log(d_k1 * theta * theta + 2.0 * s * t1 + d_k * one_m * one_m)
                 - 2.0 * torch.log(denom))
    if inverse:
        log_deriv = -log_deriv

    y = torch.where(inside, y_in, x)
    y = torch.where(circular, wrap_angle(y), y)
    log_det = torch.where(inside, log_deriv, torch.zeros_like(log_deriv))
    return y, log_det


class _ResidualNet(nn.Module):
    """in -> hidden, n_res x [h + W2 relu(W1 [relu(h), ctx])], relu -> out (zero initialized)."""

    def __init__(self, n_in: int, n_ctx: int, hidden: int, n_out: int, n_res_blocks: int, out_bias: torch.Tensor,
                 dtype: torch.dtype):
        super().__init__()
        self.inp = nn.Linear(n_in + n_ctx, hidden, dtype=dtype)
        self.res1 = nn.ModuleList(nn.Linear(hidden + n_ctx, hidden, dtype=dtype) for _ in range(n_res_blocks))
        self.res2 = nn.ModuleList(nn.Linear(hidden, hidden, dtype=dtype) for _ in range(n_res_blocks))
        self.out = nn.Linear(hidden, n_out, dtype=dtype)
        with torch.no_grad():
            self.out.weight.zero_()
            self.out.bias.copy_(out_bias)

    def forward(self, x: torch.Tensor, ctx: torch.Tensor) -> torch.Tensor:
        h = self.inp(torch.cat([x, ctx], dim=-1))
        for l1, l2 in zip(self.res1, self.res2):
            t = l1(torch.cat([torch.relu(h), ctx], dim=-1))
            h = h + l2(torch.relu(t))
        return self.out(torch.relu(h))


class _CouplingBlock(nn.Module):
    """One RQ-spline coupling block on a fixed split (identity half ``id_idx``, transformed ``tr_idx``)."""

    def __init__(self, id_idx: torch.Tensor, tr_idx: torch.Tensor, periodic: torch.Tensor, n_ctx: int, hidden: int,
                 n_res_blocks: int, n_bins: int, tail_bound: float, unconditional_identity_spline: bool,
                 spline_kw: dict, dtype: torch.dtype):
        super().__init__()
        self.n_bins = n_bins
        self.n_id = int(id_idx.numel())
        self.n_tr = int(tr_idx.numel())
        self.spline_kw = spline_kw
        self.unconditional = bool(unconditional_identity_spline) and self.n_id > 0
        perm = torch.cat([id_idx, tr_idx])
        self.register_buffer("perm", perm)  # x[:, perm] = [x_id, x_tr]
        self.register_buffer("inv_perm", torch.argsort(perm))
        circ = periodic[perm]
        bound = torch.where(circ, torch.full(circ.shape, math.pi, dtype=torch.float64),
                            torch.full(circ.shape, float(tail_bound), dtype=torch.float64))
        self.register_buffer("circ_perm", circ)
        self.register_buffer("bound_perm", bound)
        id_circ = periodic[id_idx]
        # positions within the identity half of its circular / non-circular dims (conditioner inputs)
        self.register_buffer("id_circ_pos", torch.nonzero(id_circ).flatten())
        self.register_buffer("id_lin_pos", torch.nonzero(~id_circ).flatten())
        n_feat = 2 * int(id_circ.sum()) + int((~id_circ).sum())

        d_bias = _derivative_bias(spline_kw["min_derivative"])
        p_bias = torch.cat([torch.zeros(2 * n_bins, dtype=torch.float64), torch.full((n_bins,), d_bias,
                                                                                       dtype=torch.float64)])
        if self.n_tr > 0:
            self.net = _ResidualNet(n_feat, n_ctx, hidden, self.n_tr * 3 * n_bins, n_res_blocks,
                                    p_bias.repeat_interleave(self.n_tr), dtype)
        else:
            self.net = None
        if self.unconditional:
            self.id_params = nn.Parameter(p_bias[:, None].repeat(1, self.n_id).to(dtype))  # (3K, n_id)
        else:
            self.register_parameter("id_params", None)

    def _conditioner(self, x_id: torch.Tensor, ctx: torch.Tensor) -> torch.Tensor:
        xc = x_id.index_select(-1, self.id_circ_pos)
        xl = x_id.index_select(-1, self.id_lin_pos)
        feat = torch.cat([torch.cos(xc), torch.sin(xc), xl], dim=-1)
        p = self.net(feat, ctx)
        return p.view(p.shape[0], 3 * self.n_bins, self.n_tr)

    def forward(self, x: torch.Tensor, ctx: torch.Tensor, inverse: bool = False):
        xp = x.index_select(-1, self.perm)
        x_id, x_tr = xp[:, :self.n_id], xp[:, self.n_id:]
        n = x.shape[0]
        if self.net is None:  # nothing to transform conditionally (only when fg_dim == 1)
            if not self.unconditional:
                return x, torch.zeros(n, dtype=x.dtype, device=x.device)
            params = self.id_params[None].expand(n, -1, -1)
            y, ld = rq_spline(xp, params, self.bound_perm, self.circ_perm, inverse=inverse, **self.spline_kw)
            return y.index_select(-1, self.inv_perm), ld.sum(-1)

        if not inverse:
            p_tr = self._conditioner(x_id, ctx)
            if self.unconditional:
                params = torch.cat([self.id_params[None].expand(n, -1, -1), p_tr], dim=2)
                y, ld = rq_spline(xp, params, self.bound_perm, self.circ_perm, **self.spline_kw)
            else:
                y_tr, ld = rq_spline(x_tr, p_tr, self.bound_perm[self.n_id:], self.circ_perm[self.n_id:],
                                     **self.spline_kw)
                y = torch.cat([x_id, y_tr], dim=-1)
            return y.index_select(-1, self.inv_perm), ld.sum(-1)

        ld_id = torch.zeros(n, dtype=x.dtype, device=x.device)
        if self.unconditional:
            x_id, ld_u = rq_spline(x_id, self.id_params[None].expand(n, -1, -1), self.bound_perm[:self.n_id],
                                   self.circ_perm[:self.n_id], inverse=True, **self.spline_kw)
            ld_id = ld_u.sum(-1)
        p_tr = self._conditioner(x_id, ctx)
        z_tr, ld_tr = rq_spline(x_tr, p_tr, self.bound_perm[self.n_id:], self.circ_perm[self.n_id:], inverse=True,
                                **self.spline_kw)
        z = torch.cat([x_id, z_tr], dim=-1)
        return z.index_select(-1, self.inv_perm), ld_id + ld_tr.sum(-1)


class ConditionalSplineFlow(ConditionalFlow):
    """Conditional RQ-spline coupling flow q(x_fg | s) (see the module docstring).

    Args:
        fg_dim: number of FG coordinates.
        fg_periodic: per FG dim, whether it is an angle (circular spline, uniform base on [-pi, pi)).
        features: the CG context features (``features(s)`` -> (B, features.n_features)).
        n_blocks: coupling blocks.
        hidden: width of the residual conditioner MLPs.
        n_res_blocks: residual blocks per conditioner.
        n_bins: spline bins.
        tail_bound: non-circular splines act on [-tail_bound, tail_bound], identity outside.
        unconditional_identity_spline: also transform the identity half by a learned unconditional
            elementwise spline in every block.
        circular_shift: shift circular dims by a fixed random angle after every second block.
        seed: seed of the masks and shifts.
        dtype: parameter dtype (inputs are expected in this dtype).
        min_bin_width, min_bin_height, min_derivative: lower bounds of the spline parameters
            (widths and heights as fractions of the interval).
    """

    def __init__(self, fg_dim: int, fg_periodic: tuple[bool, ...] | None, features: CGFeatures, n_blocks: int = 12,
                 hidden: int = 256, n_res_blocks: int = 1, n_bins: int = 8, tail_bound: float = 5.0,
                 unconditional_identity_spline: bool = True, circular_shift: bool = True, seed: int = 0,
                 dtype: torch.dtype = torch.float64, min_bin_width: float = 1e-3, min_bin_height: float = 1e-3,
                 min_derivative: float = 1e-3):
        super().__init__(fg_dim, fg_periodic)
        if n_blocks < 1:
            raise ValueError("n_blocks must be >= 1")
        if n_bins < 2:
            raise ValueError("n_bins must be >= 2")
        if min(min_bin_width, min_bin_height) * n_bins >= 1.0:
            raise ValueError("min_bin_width * n_bins and min_bin_height * n_bins must be < 1")
        self.features = features
        self.n_blocks = n_blocks
        self.tail_bound = float(tail_bound)
        self._any_periodic = bool(self.periodic_mask.any())
        spline_kw = dict(min_bin_width=min_bin_width, min_bin_height=min_bin_height, min_derivative=min_derivative)

        gen = torch.Generator().manual_seed(seed)
        order = torch.randperm(fg_dim, generator=gen)
        mask = torch.zeros(fg_dim, dtype=torch.bool)
        mask[order[:fg_dim // 2]] = True  # identity half of the even blocks
        periodic = self.periodic_mask.clone()
        blocks = []
        for i in range(n_blocks):
            m = mask if i % 2 == 0 else ~mask
            id_idx = torch.nonzero(m).flatten()
            tr_idx = torch.nonzero(~m).flatten()
            blocks.append(_CouplingBlock(id_idx, tr_idx, periodic, features.n_features, hidden, n_res_blocks, n_bins,
                                         tail_bound, unconditional_identity_spline, spline_kw, dtype))
        self.blocks = nn.ModuleList(blocks)
        # shift after blocks 1, 3, 5, ... except the last
        self.shift_after = tuple(i for i in range(n_blocks) if circular_shift and self._any_periodic
                                 and i % 2 == 1 and i != n_blocks - 1)
        shifts = (torch.rand(max(len(self.shift_after), 1), fg_dim, generator=gen, dtype=torch.float64) * 2 - 1)
        shifts = torch.where(periodic, shifts * math.pi, torch.zeros_like(shifts))
        self.register_buffer("shifts", shifts)
        # after the last block the accumulated shift is undone (a fixed rotation, volume preserving),
        # so that the flow is exactly the identity at initialization
        self.register_buffer("unshift", -shifts[:len(self.shift_after)].sum(0))
        self._shift_slot = {b: j for j, b in enumerate(self.shift_after)}
        # (the networks are created in ``dtype``; the float64 buffers are cast where used, and the
        # passed-in ``features`` module is left as it is)

    # --- helpers -----------------------------------------------------------------------------------
    def _wrap(self, x: torch.Tensor) -> torch.Tensor:
        if not self._any_periodic:
            return x
        return torch.where(self.periodic_mask, wrap_angle(x), x)

    def _context(self, s: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        return self.features(s).to(like.dtype)

    # --- ConditionalFlow ----------------------------------------------------------------------------
    def forward(self, z: torch.Tensor, s: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        ctx = self._context(s, z)
        x = self._wrap(z)
        log_det = torch.zeros(z.shape[0], dtype=z.dtype, device=z.device)
        for i, block in enumerate(self.blocks):
            x, ld = block(x, ctx)
            log_det = log_det + ld
            if i in self._shift_slot:
                x = self._wrap(x + self.shifts[self._shift_slot[i]].to(x.dtype))
        if self.shift_after:
            x = x + self.unshift.to(x.dtype)
        return self._wrap(x), log_det

    def inverse(self, x: torch.Tensor, s: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        ctx = self._context(s, x)
        z = self._wrap(x)
        if self.shift_after:
            z = self._wrap(z - self.unshift.to(z.dtype))
        log_det = torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)
        for i in range(self.n_blocks - 1, -1, -1):
            if i in self._shift_slot:
                z = self._wrap(z - self.shifts[self._shift_slot[i]].to(z.dtype))
            z, ld = self.blocks[i](z, ctx, inverse=True)
            log_det = log_det + ld
        return self._wrap(z), log_det

    def sample_base(self, n: int, dtype=torch.float64, device=None) -> torch.Tensor:
        """As the base class, without a host synchronization (graph capturable)."""
        device = device if device is not None else self.periodic_mask.device
        gauss = torch.randn(n, self.fg_dim, dtype=dtype, device=device)
        if not self._any_periodic:
            return gauss
        unif = (torch.rand(n, self.fg_dim, dtype=dtype, device=device) * 2 - 1) * math.pi
        return torch.where(self.periodic_mask, unif, gauss)
