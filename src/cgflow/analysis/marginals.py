"""2-D marginal PMFs of a CG space of any dimension, and their accuracy against a reference.

For a CG space of d > 2 dimensions a full grid is out of reach (100^d bins), so cgflow measures a
PMF by its **2-D marginals** over pairs of CG coordinates (i, j):

    F_ij(a, b) = -ln ∫ exp(-F(s)) ds_rest,   s = (a at i, b at j, s_rest at the others),

computed from any PMF function (e.g. the ensemble mean) at the bin centres of a 2-D grid, with the
integral over the other d - 2 coordinates taken by quasi-Monte Carlo: two independently scrambled
Sobol point sets over their domain, ``n_points`` in all, shared by every (a, b); or, given centres
where the PMF is low (a run's CG points), by importance sampling from a defensive mixture of the
uniform density and a kernel density around them (:func:`integration_points`), which needs far fewer
points where exp(-F) fills a small part of the other coordinates' space.  The estimate is the
log of the mean of exp(-F) over both sets; the forward KLD between the marginals from either set
alone (symmetrized: the mean of both directions), divided by 4, is its stated integration error:
with independent errors of variance sigma^2 (in F, per bin) the KLD between the two estimates is ~ sigma^2 and that of their average
against the truth ~ sigma^2 / 4.  Tests check the marginals against exact ones.

Conventions: F in kT, angles in radians; ``pairs`` are index pairs (i < j is not required; the
marginal is indexed [bin of i, bin of j]).
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import combinations

import numpy as np
import torch

from cgflow.analysis.metrics import forward_kld, probabilities_from_pmf, reverse_kld
from cgflow.core.system import MarginalReferencePMF


def resolve_pairs(spec, names: tuple[str, ...]) -> list[tuple[int, int]]:
    """CG pairs from a spec: None -> every pair (i < j); else a list of 2-entry lists of CG names
    or 0-based indices.  ValueError (one line) for unknown names, repeated coordinates or pairs."""
    d = len(names)
    if spec is None:
        return list(combinations(range(d), 2))
    out = []
    for entry in spec:
        if len(entry) != 2:
            raise ValueError(f"a CG pair needs two coordinates, got {list(entry)}")
        idx = []
        for v in entry:
            if isinstance(v, (int, np.integer)) and not isinstance(v, bool):
                if not 0 <= int(v) < d:
                    raise ValueError(f"CG pair {list(entry)}: index {v} outside 0..{d - 1}")
                idx.append(int(v))
            elif str(v) in names:
                idx.append(names.index(str(v)))
            else:
                raise ValueError(f"CG pair {list(entry)}: unknown coordinate {v!r} (the CG coordinates are "
                                 f"{', '.join(names)})")
        if idx[0] == idx[1]:
            raise ValueError(f"CG pair {list(entry)} names one coordinate twice")
        if tuple(idx) in out or tuple(idx[::-1]) in out:
            raise ValueError(f"CG pair {list(entry)} is listed twice")
        out.append(tuple(idx))
    if not out:
        raise ValueError("the list of CG pairs is empty")
    return out


def integration_points(domain, others: list[int], n_points: int, seed: int, periodic=None, centres=None,
                       bandwidth: float = 0.35, uniform_fraction: float = 0.25) -> list[tuple[np.ndarray, np.ndarray]]:
    """Two independent point sets over the coordinates ``others``, each ``(r (n_points // 2, len(others)),
    log_q (n_points // 2,))``; a single empty set if there are no other coordinates.

    Without ``centres``: scrambled Sobol points, uniform (log_q = 0: a constant cancels).  With
    ``centres`` (M, d) (e.g. the CG points of the run, which sit where the PMF is low): importance
    sampling from the defensive mixture q = u / V + (1 - u) KDE, a ``uniform_fraction`` u of Sobol points
    and the rest drawn from Gaussians of width ``bandwidth`` around the centres (periodic coordinates
    wrapped; a point outside a non-periodic domain has q but no integrand: log_q = +inf).  Each point is
    weighted by 1 / q(r) (multiple importance sampling with the balance heuristic: unbiased, and the
    weights stay below V / u)."""
    if not others:
        return [(np.zeros((1, 0)), np.zeros(1))]
    from scipy.special import logsumexp
    from scipy.stats import qmc

    lo, hi = np.array([domain[k] for k in others], dtype=np.float64).T
    per = np.array([bool(periodic[k]) for k in others]) if periodic is not None else np.zeros(len(others), bool)
    half = max(1, n_points // 2)
    sets = []
    for h in range(2):
        rng = np.random.default_rng([seed, h])
        if centres is None or len(centres) == 0:
            m = int(np.ceil(np.log2(half)))
            u = qmc.Sobol(d=len(others), scramble=True, seed=rng).random_base2(m)[:half]
            sets.append((lo + u * (hi - lo), np.zeros(half)))
            continue
        c = np.asarray(centres, dtype=np.float64)[:, others]
        n_u = max(1, int(round(uniform_fraction * half)))
        m = int(np.ceil(np.log2(n_u)))
        r_u = lo + qmc.Sobol(d=len(others), scramble=True, seed=rng).random_base2(m)[:n_u] * (hi - lo)
        r_k = c[rng.integers(len(c), size=half - n_u)] + bandwidth * rng.standard_normal((half - n_u, len(others)))
        r = np.concatenate([r_u, r_k])
        width = hi - lo
        r = np.where(per, lo + np.mod(r - lo, width), r)
        diff = r[:, None, :] - c[None, :, :]  # (K, M, n)
        diff = np.where(per, np.mod(diff + width / 2, width) - width / 2, diff)
        log_kde = (logsumexp(-0.5 * np.sum(diff**2, -1) / bandwidth**2, axis=1) - np.log(len(c))
                   - len(others) * np.log(np.sqrt(2 * np.pi) * bandwidth))
        u = n_u / half  # the fraction actually drawn uniformly (balance heuristic: exactly unbiased)
        log_q = np.logaddexp(np.log(u) - np.sum(np.log(width)), np.log1p(-u) + log_kde) if u < 1 else \
            np.full(half, -np.sum(np.log(width)))
        outside = np.any(~per & ((r < lo) | (r > hi)), axis=1)
        sets.append((r, np.where(outside, np.inf, log_q)))
    return sets


@torch.no_grad()
def _neg_log_mean_exp_neg(f_of_s, a_b: np.ndarray, rest: np.ndarray, pair, d: int, chunk: int,
                          log_q: np.ndarray | None = None) -> np.ndarray:
    """-ln mean_k exp(-F(a_b[p], rest[k]) - log_q[k]) for every row p of a_b (P, 2), rest (K, d - 2)."""
    i, j = pair
    others = [k for k in range(d) if k not in pair]
    P, K = a_b.shape[0], rest.shape[0]
    out = np.empty(P)
    per = max(1, chunk // K)
    for start in range(0, P, per):
        ab = a_b[start:start + per]
        s = np.empty((ab.shape[0], K, d))
        s[:, :, i] = ab[:, None, 0]
        s[:, :, j] = ab[:, None, 1]
        if others:
            s[:, :, others] = rest[None]
        f = np.asarray(f_of_s(torch.as_tensor(s.reshape(-1, d), dtype=torch.float64)), dtype=np.float64)
        f = f.reshape(ab.shape[0], K)
        if log_q is not None:
            f = f + log_q[None, :]
        fmin = f.min(1, keepdims=True)
        out[start:start + per] = fmin[:, 0] - np.log(np.mean(np.exp(-(f - fmin)), axis=1))
    return out


@dataclass
class MarginalPMFs:
    """2-D marginal PMFs.

    Attributes:
        pairs: CG index pairs.
        pmf_kT: per pair, (n_bins_i, n_bins_j), minimum 0.
        integration_error_kld: per pair, the stated quasi-Monte Carlo error (forward KLD, nats; 0 for
            d = 2, where nothing is integrated).
    """

    pairs: list[tuple[int, int]]
    pmf_kT: list[np.ndarray]
    integration_error_kld: list[float]


def marginal_pmfs(f_of_s, edges: list[np.ndarray], domain, pairs: list[tuple[int, int]], n_points: int = 256,
                  seed: int = 0, chunk: int = 200_000, periodic=None, centres=None) -> MarginalPMFs:
    """The 2-D marginals of the PMF ``f_of_s`` (a function (N, d) float64 tensor -> (N,) kT) at the bin
    centres of ``edges[i] x edges[j]`` for each pair, integrating the other coordinates over ``domain``
    with ``n_points`` quasi-Monte Carlo points, or importance-sampled around ``centres`` (M, d) if given
    (:func:`integration_points`; see the module docstring).  ``chunk`` bounds the points per call of
    ``f_of_s``."""
    d = len(edges)
    pmfs, errors = [], []
    for pair in pairs:
        i, j = pair
        ci, cj = (0.5 * (edges[k][1:] + edges[k][:-1]) for k in (i, j))
        ab = np.stack(np.meshgrid(ci, cj, indexing="ij"), -1).reshape(-1, 2)
        others = [k for k in range(d) if k not in pair]
        sets = integration_points(domain, others, n_points, seed, periodic, centres)
        parts = [_neg_log_mean_exp_neg(f_of_s, ab, r, pair, d, chunk, log_q) for r, log_q in sets]
        if len(parts) == 1:
            f, err = parts[0], 0.0
        else:
            f = -np.logaddexp(-parts[0], -parts[1]) + np.log(2.0)
            err = 0.25 * 0.5 * (forward_kld(probabilities_from_pmf(parts[0]), probabilities_from_pmf(parts[1]))
                                + forward_kld(probabilities_from_pmf(parts[1]), probabilities_from_pmf(parts[0])))
        f = f.reshape(len(ci), len(cj))
        pmfs.append(f - np.nanmin(f))
        errors.append(float(err))
    return MarginalPMFs(pairs=list(pairs), pmf_kT=pmfs, integration_error_kld=errors)


def pair_label(names, pair) -> str:
    return f"{names[pair[0]]}|{names[pair[1]]}"


def marginal_accuracy(ref: MarginalReferencePMF, marg: MarginalPMFs, names) -> dict:
    """Forward and reverse KLD (nats) of each marginal against the reference: ``forward_kld`` is
    their **mean over the pairs**, ``forward_kld_max_pair`` the largest, ``forward_kld[a|b]`` each
    one; the named PMF errors of :func:`cgflow.analysis.metrics.pmf_errors` averaged over the pairs; and
    ``marginal_integration_error_kld`` (the mean stated integration error)."""
    from cgflow.analysis.metrics import pmf_errors

    out, fk, rk, errs = {}, [], [], []
    for pair, f in zip(marg.pairs, marg.pmf_kT):
        p_ref = ref.prob_of(pair)
        q = probabilities_from_pmf(f)
        fk.append(forward_kld(p_ref, q))
        rk.append(reverse_kld(p_ref, q))
        errs.append(pmf_errors(p_ref, f))
        out[f"forward_kld[{pair_label(names, pair)}]"] = fk[-1]
    out["forward_kld"] = float(np.mean(fk))
    out["forward_kld_max_pair"] = float(np.max(fk))
    out["reverse_kld"] = float(np.mean(rk))
    for k in errs[0]:
        out[k] = float(np.nanmean([e[k] for e in errs]))
    out["marginal_integration_error_kld"] = float(np.mean(marg.integration_error_kld))
    return out


def histogram_marginals(samples: np.ndarray, edges: list[np.ndarray], pairs) -> list[np.ndarray]:
    """Normalized 2-D histograms (probabilities) of samples (N, d) for each pair, on edges[i] x edges[j]."""
    out = []
    for i, j in pairs:
        h, _, _ = np.histogram2d(samples[:, i], samples[:, j], bins=[edges[i], edges[j]])
        out.append(h / max(h.sum(), 1.0))
    return out


def marginals_of_reference(ref, pairs) -> MarginalReferencePMF:
    """The 2-D marginals of a full-grid :class:`cgflow.core.system.ReferencePMF` (summing its bin
    probabilities over the other coordinates)."""
    d = ref.prob.ndim
    probs = []
    for i, j in pairs:
        p = ref.prob.sum(axis=tuple(k for k in range(d) if k not in (i, j)))
        probs.append(p if i < j else p.T)
    return MarginalReferencePMF(pairs=list(pairs), edges=list(ref.edges), probs=probs, cg_dim=d,
                                description=ref.description, meta=dict(ref.meta))
