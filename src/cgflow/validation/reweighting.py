"""What a PMF-biased simulation says about the 2-D marginals of a PMF in d > 3 CG dimensions, by reweighting.
Numpy only (no MD here; the driver is ``biased_md``).

In d > 3 the CG space cannot be histogrammed, but its 2-D marginals can.  The walkers of ``cgflow validate`` run
on ``u(x) - min(F(s) - F_min, C)`` (F the learned PMF, kT; C the ceiling), so a recorded frame with CG point s
carries the weight

    w = exp(-min(F(s) - F_min, C))

back to the unbiased ensemble, and the reweighted histogram of a pair (i, j),

    P_ij(a, b) ∝ sum over frames in bin (a, b) of w,        F_md(a, b) = -ln P_ij(a, b),

estimates the true marginal whatever F is (exactly so for equilibrated walkers; F only decides how evenly the
walkers cover the space).  Its residual against the run's marginal ``F_run`` (kT),

    r(a, b) = F_md(a, b) - F_run(a, b)     (= F_true - F, as in :mod:`cgflow.validation.flatness`),

is centred so that its model-probability-weighted mean over resolved bins is 0.  Walkers are independent, so
they are the blocks of a bootstrap (``residual_se_kT``; bins empty in > 10 % of the replicates are unresolved).
``z = r / sqrt(eb^2 + se^2)`` with ``eb`` the run's per-bin error bar averaged over the other coordinates
(model-probability weights, on the run's coarse d-dimensional grid).  The verdict is flatness's
(:func:`cgflow.validation.flatness.flag_test`) over the resolved bins of all pairs.

Frames that were not yet in equilibrium bias the estimate; ``drift_kT`` (the model-weighted mean |F_md| difference
between the first and the second half of every walker's frames) and the populations of both halves say whether
the walkers were long enough.  For every CG coordinate named ``phi...`` the population of phi > 0 (alpha_L of a
residue) is given from the MD (with its bootstrap error bar) and from the run.  Walkers whose halves differ by more
than ``DRIFT_FACTOR`` times the noise make the verdict INCONCLUSIVE (and ``consistent`` False): a basin the walkers
could not reach in their time keeps the population they started with, which is the run's.

Conventions: F in kT; ``frames`` (W, T, d) CG points (radians for angles), ``f_rel_kT`` (W, T) F(s) - F_min of
each frame; marginals indexed [bin of i, bin of j].
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np

from cgflow.validation.flatness import SQRT_2_OVER_PI, UNRESOLVED_FRACTION, flag_test

DRIFT_FACTOR = 3.0
"""Walkers count as equilibrated when the halves' model-weighted mean |difference| is at most this many times the
full estimate's noise (pure noise gives ~2)."""


@dataclass
class ReweightedMarginals:
    """The result, per pair (lists of (n_i, n_j) arrays, kT).

    Attributes:
        pairs: CG index pairs; edges: bin edges per CG dimension.
        md_pmf_kT: the reweighted marginal (min 0; NaN where empty); run_pmf_kT: the run's marginal (min 0).
        residual_kT, residual_se_kT, z: NaN where unresolved; resolved: bool masks.
        run_error_bar_kT: the run's per-bin error bar projected on the pair (NaN if not given).
        corrected_pmf_kT: run + shrunk residual on resolved bins (the run's value elsewhere), min 0.
        populations: per ``phi`` coordinate: {"md", "md_se", "md_first_half", "md_second_half", "run"}.
        summary: JSON-ready figures and the verdict.
    """

    pairs: list[tuple[int, int]]
    edges: list[np.ndarray]
    md_pmf_kT: list[np.ndarray]
    run_pmf_kT: list[np.ndarray]
    residual_kT: list[np.ndarray]
    residual_se_kT: list[np.ndarray]
    resolved: list[np.ndarray]
    z: list[np.ndarray]
    run_error_bar_kT: list[np.ndarray]
    corrected_pmf_kT: list[np.ndarray]
    populations: dict
    summary: dict


def frame_weights(f_rel_kT: np.ndarray, ceiling_kT: float) -> np.ndarray:
    """exp(-min(F - F_min, C)) per frame: the weight of a biased frame in the unbiased ensemble."""
    return np.exp(-np.minimum(np.asarray(f_rel_kT, dtype=np.float64), ceiling_kT))


def _pair_histograms(frames: np.ndarray, weights: np.ndarray, edges: list[np.ndarray], pair) -> np.ndarray:
    """(W, n_i, n_j) weighted histograms of each walker's frames."""
    i, j = pair
    W = frames.shape[0]
    ni, nj = len(edges[i]) - 1, len(edges[j]) - 1
    bi = np.clip(np.searchsorted(edges[i], frames[..., i], side="right") - 1, 0, ni - 1)
    bj = np.clip(np.searchsorted(edges[j], frames[..., j], side="right") - 1, 0, nj - 1)
    flat = (np.arange(W)[:, None] * ni * nj + bi * nj + bj).reshape(-1)
    h = np.bincount(flat, weights=weights.reshape(-1), minlength=W * ni * nj)
    return h.reshape(W, ni, nj)


def _centred_residual(h: np.ndarray, f_run: np.ndarray, p_run: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        r = -np.log(h / h.sum()) - f_run
    r[~np.isfinite(r)] = np.nan
    ok = np.isfinite(r)
    if ok.any():
        r = r - np.sum(p_run[ok] * r[ok]) / np.sum(p_run[ok])
    return r


def _phi_population(prob: np.ndarray, edges: np.ndarray, axis: int) -> float:
    """Mass at phi > 0 of a 2-D marginal (axis: which index is phi)."""
    centres = 0.5 * (edges[1:] + edges[:-1])
    m = prob.sum(axis=1 - axis)
    return float(m[centres > 0].sum() / m.sum()) if m.sum() > 0 else math.nan


def estimate_marginals(frames: np.ndarray, f_rel_kT: np.ndarray, ceiling_kT: float, edges: list[np.ndarray],
                       pairs: list[tuple[int, int]], run_pmf_kT: list[np.ndarray], cg_names: tuple[str, ...],
                       run_error_bar_kT: list[np.ndarray] | None = None, *, n_bootstrap: int = 200,
                       seed: int = 0) -> ReweightedMarginals:
    """The reweighted marginals, their residual against the run's, bootstrap error bars and the verdict.

    Args:
        frames: (W, T, d) CG points of the recorded frames of W walkers; f_rel_kT: (W, T) F(s) - F_min.
        ceiling_kT: C of the bias; edges: per CG dimension; pairs: the run's marginal pairs.
        run_pmf_kT: per pair the run's marginal (n_i, n_j) kT; run_error_bar_kT: per pair its per-bin error
            bar (kT) or None.
    """
    frames = np.asarray(frames, dtype=np.float64)
    W, T, _ = frames.shape
    w = frame_weights(f_rel_kT, ceiling_kT)
    rng = np.random.default_rng(seed)
    boot_idx = rng.integers(0, W, size=(n_bootstrap, W))
    half = T // 2
    out = {k: [] for k in ("md", "run", "r", "se", "ok", "z", "eb", "corr")}
    probs_md, probs_first, probs_second, probs_boot = [], [], [], []
    kld, drift = [], []
    for p, pair in enumerate(pairs):
        f_run = np.asarray(run_pmf_kT[p], dtype=np.float64)
        f_run = f_run - np.nanmin(f_run)
        p_run = np.exp(-f_run)
        p_run /= p_run.sum()
        hw = _pair_histograms(frames, w, edges, pair)  # (W, ni, nj)
        h = hw.sum(0)
        r = _centred_residual(h, f_run, p_run)
        boots = np.stack([_centred_residual(hw[b].sum(0), f_run, p_run) for b in boot_idx])
        empty = np.mean(~np.isfinite(boots), axis=0)
        ok = np.isfinite(r) & (empty <= UNRESOLVED_FRACTION) & (W > 1)
        with np.errstate(invalid="ignore"), warnings.catch_warnings():  # all-NaN bins: unresolved anyway
            warnings.simplefilter("ignore", RuntimeWarning)
            se = np.where(ok, np.nanstd(np.where(np.isfinite(boots), boots, np.nan), axis=0), np.nan) \
                if ok.any() else np.full(r.shape, np.nan)
        r = np.where(ok, r, np.nan)
        if ok.any():
            r = r - np.nansum(p_run * r) / p_run[ok].sum()
        eb = (np.asarray(run_error_bar_kT[p], dtype=np.float64) if run_error_bar_kT is not None
              else np.full(r.shape, np.nan))
        z = r / np.sqrt(np.nan_to_num(eb) ** 2 + se ** 2)
        with np.errstate(divide="ignore", invalid="ignore"):
            shrunk = np.where(ok, r * np.maximum(0.0, 1.0 - se**2 / np.maximum(r**2, 1e-300)), 0.0)
            md = -np.log(h / h.sum())
        corr = f_run + shrunk
        out["md"].append(np.where(np.isfinite(md), md - np.nanmin(md[np.isfinite(md)]), np.nan))
        out["run"].append(f_run)
        out["r"].append(r)
        out["se"].append(se)
        out["ok"].append(ok)
        out["z"].append(z)
        out["eb"].append(eb)
        out["corr"].append(corr - corr.min())
        pm = h / h.sum()
        probs_md.append(pm)
        probs_boot.append(np.stack([hw[b].sum(0) for b in boot_idx]))
        h1 = _pair_histograms(frames[:, :half], w[:, :half], edges, pair).sum(0)
        h2 = _pair_histograms(frames[:, half:], w[:, half:], edges, pair).sum(0)
        probs_first.append(h1 / max(h1.sum(), 1e-300))
        probs_second.append(h2 / max(h2.sum(), 1e-300))
        both = ok & (h1 > 0) & (h2 > 0)
        drift.append(float(np.sum(p_run[both] * np.abs(np.log(h1[both] / h1.sum()) - np.log(h2[both] / h2.sum())))
                           / max(p_run[both].sum(), 1e-300)) if both.any() else math.nan)
        q = np.maximum(p_run, 1e-10)
        m = pm > 0
        kld.append(float(np.sum(pm[m] * np.log(pm[m] / q[m]))))
    populations = {}
    for k, name in enumerate(cg_names):
        if not name.startswith("phi"):
            continue
        where = [(p, pair.index(k)) for p, pair in enumerate(pairs) if k in pair]
        if not where:
            continue
        p, axis = where[0]
        e = edges[k]
        boot = [_phi_population(b, e, axis) for b in probs_boot[p]]
        populations[name] = {"md": _phi_population(probs_md[p], e, axis), "md_se": float(np.nanstd(boot)),
                             "md_first_half": _phi_population(probs_first[p], e, axis),
                             "md_second_half": _phi_population(probs_second[p], e, axis),
                             "run": _phi_population(np.exp(-out["run"][p]), e, axis)}
    all_ok = np.concatenate([o.reshape(-1) for o in out["ok"]])
    all_z = np.concatenate([z.reshape(-1) for z in out["z"]])
    test = flag_test(all_z, all_ok)
    pmass = [np.where(o, np.exp(-f), 0.0) for o, f in zip(out["ok"], out["run"])]
    abs_err = [float(np.nansum(pm * np.abs(r)) / max(pm.sum(), 1e-300)) for pm, r in zip(pmass, out["r"])]
    noise = [float(SQRT_2_OVER_PI * np.nansum(pm * se) / max(pm.sum(), 1e-300)) for pm, se in zip(pmass, out["se"])]
    pop_text = "; ".join(f"{n} > 0: MD {v['md']:.4f} ± {v['md_se']:.4f}, run {v['run']:.4f}"
                         for n, v in populations.items())
    # pure noise makes the halves differ by ~2 x the full estimate's noise (each half has twice its variance)
    drift_mean, noise_mean = float(np.nanmean(drift)) if np.isfinite(drift).any() else math.nan, float(np.mean(noise))
    equilibrated = bool(np.isfinite(drift_mean) and drift_mean <= DRIFT_FACTOR * noise_mean)
    if not equilibrated:
        verdict = (f"INCONCLUSIVE (the walkers are not equilibrated: the first and second half of their frames differ "
                   f"by {drift_mean:.2f} kT, noise alone gives ~{2 * noise_mean:.2f}; run longer, --steps)")
    else:
        verdict = ("consistent with the run's error bar" if test["consistent"]
                   else "NOT consistent with the run's error bar")
    test["consistent"] = bool(test["consistent"] and equilibrated)
    summary = {
        "mode": "marginals (reweighted)", "n_walkers": int(W), "frames_per_walker": int(T),
        "forward_kld_md_vs_run": kld, "forward_kld_md_vs_run_mean": float(np.mean(kld)),
        "md_abs_error_kT": abs_err, "md_noise_floor_kT": noise, "drift_kT": drift,
        "md_abs_error_mean_kT": float(np.mean(abs_err)), "drift_mean_kT": drift_mean, "equilibrated": equilibrated,
        "populations_phi_positive": populations, **test,
        "verdict": (f"{verdict}: {test['flagged_bins']} of {test['n_resolved_bins']} resolved bins of the "
                    f"{len(pairs)} marginals lie beyond 2 combined error bars (chance: "
                    f"{test['expected_flagged']:.1f}; tail probability {test['flagged_bins_p_value']:.2g}), "
                    f"{test['n_bins_beyond_strong_z']} beyond {test['strong_z']:g}; forward KLD MD || run "
                    f"{np.mean(kld):.3f} (mean of the pairs), Boltzmann-weighted |MD - run| {np.mean(abs_err):.3f} kT "
                    f"(MD noise {noise_mean:.3f}, drift between halves {drift_mean:.3f})"
                    + (f"; {pop_text}" if pop_text else "")),
    }
    return ReweightedMarginals(list(pairs), list(edges), out["md"], out["run"], out["r"], out["se"], out["ok"],
                               out["z"], out["eb"], out["corr"], populations, summary)


def project_error_bar(fine_edges: list[np.ndarray], fine_pmf_kT: np.ndarray, fine_error_bar_kT: np.ndarray,
                      pair: tuple[int, int], edges_i: np.ndarray, edges_j: np.ndarray) -> np.ndarray:
    """The run's per-bin error bar (kT) on a pair's marginal bins (n_i, n_j): in the fine d-dimensional bin column
    (i, j) that holds each marginal bin's centre, the model-probability-weighted mean of the fine bins' error bar
    over the other coordinates.  ``fine_pmf_kT``, ``fine_error_bar_kT``: (n_fine,) C order on ``fine_edges``."""
    i, j = pair
    shape = tuple(len(e) - 1 for e in fine_edges)
    f = np.asarray(fine_pmf_kT, dtype=np.float64).reshape(shape)
    p = np.exp(-(f - np.nanmin(f)))
    eb = np.asarray(fine_error_bar_kT, dtype=np.float64).reshape(shape)
    others = tuple(k for k in range(len(shape)) if k not in pair)
    with np.errstate(invalid="ignore", divide="ignore"):
        col = (p * eb).sum(axis=others) / p.sum(axis=others)
    if i > j:
        col = col.T
    fi = np.clip(np.searchsorted(fine_edges[i], 0.5 * (edges_i[1:] + edges_i[:-1]), side="right") - 1, 0, shape[i] - 1)
    fj = np.clip(np.searchsorted(fine_edges[j], 0.5 * (edges_j[1:] + edges_j[:-1]), side="right") - 1, 0, shape[j] - 1)
    return col[np.ix_(fi, fj)]
