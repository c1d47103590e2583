"""Accuracy of a PMF against a reference on a grid of bins (method spec 2.11)."""

from __future__ import annotations

import numpy as np


def probabilities_from_pmf(pmf_kT: np.ndarray) -> np.ndarray:
    """Bin probabilities proportional to exp(-F) (any shape), normalized to sum 1."""
    f = np.asarray(pmf_kT, dtype=np.float64)
    w = np.exp(-(f - np.nanmin(f)))
    return w / w.sum()


def forward_kld(p_ref: np.ndarray, p_model: np.ndarray) -> float:
    """sum_b p_ref ln(p_ref / p_model) over bins with p_ref > 0 (nats).  Inf if the model gives
    zero probability where the reference has mass."""
    p_ref = np.asarray(p_ref, dtype=np.float64).ravel()
    p_model = np.asarray(p_model, dtype=np.float64).ravel()
    m = p_ref > 0
    with np.errstate(divide="ignore"):
        return float(np.sum(p_ref[m] * (np.log(p_ref[m]) - np.log(p_model[m]))))


def reverse_kld(p_ref: np.ndarray, p_model: np.ndarray, eps: float = 1e-10) -> float:
    """sum_b p_model ln(p_model / p_ref) with eps added to both (nats)."""
    p = np.asarray(p_model, dtype=np.float64).ravel() + eps
    q = np.asarray(p_ref, dtype=np.float64).ravel() + eps
    return float(np.sum(p * np.log(p / q)))


LOW_FREE_ENERGY_KT = 10.0
"""The region where barrier heights and basins matter to users: bins whose reference PMF is below
this many kT above its minimum (the unweighted figures below run over it)."""


def pmf_rmse(p_ref: np.ndarray, pmf_model_kT: np.ndarray) -> float:
    """**Weighted** RMSE (kT) between the model PMF and -ln p_ref over the populated bins, each bin
    weighted by its reference probability, after removing the best constant offset (the
    reference-weighted mean difference).  Dominated by the basins; barriers hardly count (see
    :func:`pmf_errors` for the unweighted figures)."""
    p_ref = np.asarray(p_ref, dtype=np.float64).ravel()
    f = np.asarray(pmf_model_kT, dtype=np.float64).ravel()
    m = p_ref > 0
    diff = f[m] + np.log(p_ref[m])
    diff -= np.average(diff, weights=p_ref[m])
    return float(np.sqrt(np.average(diff**2, weights=p_ref[m])))


def reference_pmf_kT(p_ref: np.ndarray) -> np.ndarray:
    """-ln p_ref shifted to minimum 0 (kT); inf where p_ref is 0."""
    p = np.asarray(p_ref, dtype=np.float64)
    with np.errstate(divide="ignore"):
        f = -np.log(p)
    return f - f[np.isfinite(f)].min()


def pmf_errors(p_ref: np.ndarray, pmf_model_kT: np.ndarray, std_kT: np.ndarray | None = None,
               f_max_kT: float = LOW_FREE_ENERGY_KT) -> dict:
    """Named accuracy figures of a model PMF against a reference (all kT unless a fraction).

    - ``pmf_rmse_weighted_kT``: :func:`pmf_rmse`, weighted by the reference probability, over the
      bins populated in the reference and finite in the model.
    - ``pmf_rmse_unweighted_kT`` and ``pmf_max_abs_error_kT``: every bin counts the same, over the
      region where the reference PMF is below ``f_max_kT`` above its minimum and the model is
      finite, after the constant shift that minimizes this RMSE (the mean difference there).
    - ``coverage``: the reference probability of the bins where the model PMF is finite (1 for a
      model defined everywhere; for a histogram, the mass of the visited bins).
    - with ``std_kT`` (the ensemble std on the same bins): ``ensemble_std_mean_kT``, its mean over
      that region, and ``ensemble_std_at_max_error_kT``, the std at the bin of the largest error,
      to read beside the actual errors (an std far below the error is overconfidence).
    NaN where the region is empty.
    """
    p_ref = np.asarray(p_ref, dtype=np.float64).ravel()
    f = np.asarray(pmf_model_kT, dtype=np.float64).ravel()
    finite = np.isfinite(f)
    populated = (p_ref > 0) & finite
    out = {"pmf_rmse_weighted_kT": pmf_rmse(np.where(populated, p_ref, 0.0), np.where(finite, f, 0.0))
           if populated.any() else float("nan")}
    f_ref = reference_pmf_kT(p_ref) if (p_ref > 0).any() else np.full_like(p_ref, np.inf)
    region = (f_ref < f_max_kT) & finite
    nan = float("nan")
    if region.any():
        diff = f[region] - f_ref[region]
        diff = diff - diff.mean()
        i = int(np.argmax(np.abs(diff)))
        out["pmf_rmse_unweighted_kT"] = float(np.sqrt(np.mean(diff**2)))
        out["pmf_max_abs_error_kT"] = float(np.abs(diff[i]))
    else:
        out["pmf_rmse_unweighted_kT"] = out["pmf_max_abs_error_kT"] = nan
    total = p_ref.sum()
    out["coverage"] = float(p_ref[finite].sum() / total) if total > 0 else nan
    if std_kT is not None:
        sd = np.asarray(std_kT, dtype=np.float64).ravel()
        if region.any():
            out["ensemble_std_mean_kT"] = float(np.mean(sd[region]))
            out["ensemble_std_at_max_error_kT"] = float(sd[region][i])
        else:
            out["ensemble_std_mean_kT"] = out["ensemble_std_at_max_error_kT"] = nan
    return out


def describe_errors(m: dict, std: bool = True) -> str:
    """The figures of :func:`pmf_errors` in words, e.g. for a console line."""
    parts = []
    if "pmf_rmse_weighted_kT" in m:
        parts.append(f"PMF RMSE weighted by p_ref {m['pmf_rmse_weighted_kT']:.3f} kT")
    if "pmf_rmse_unweighted_kT" in m:
        parts.append(f"unweighted (F < {LOW_FREE_ENERGY_KT:g} kT) {m['pmf_rmse_unweighted_kT']:.3f} kT")
    if "pmf_max_abs_error_kT" in m:
        parts.append(f"max |error| {m['pmf_max_abs_error_kT']:.2f} kT")
    if std and "ensemble_std_mean_kT" in m:
        parts.append(f"ensemble std {m['ensemble_std_mean_kT']:.3f} kT mean, "
                     f"{m['ensemble_std_at_max_error_kT']:.3f} kT at the max error")
    return ", ".join(parts)


def bin_centers_grid(edges: list[np.ndarray]) -> np.ndarray:
    """All bin centres of a regular grid, (n_1 * ... * n_d, d), in C order of the bins."""
    centers = [0.5 * (e[1:] + e[:-1]) for e in edges]
    mesh = np.meshgrid(*centers, indexing="ij")
    return np.stack([m.ravel() for m in mesh], axis=-1)
