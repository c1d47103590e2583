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


def pmf_rmse(p_ref: np.ndarray, pmf_model_kT: np.ndarray) -> float:
    """RMSE (kT) between the model PMF and -ln p_ref over the populated bins, after removing
    the best constant offset (the reference-weighted mean difference)."""
    p_ref = np.asarray(p_ref, dtype=np.float64).ravel()
    f = np.asarray(pmf_model_kT, dtype=np.float64).ravel()
    m = p_ref > 0
    diff = f[m] + np.log(p_ref[m])
    diff -= np.average(diff, weights=p_ref[m])
    return float(np.sqrt(np.average(diff**2, weights=p_ref[m])))


def bin_centers_grid(edges: list[np.ndarray]) -> np.ndarray:
    """All bin centres of a regular grid, (n_1 * ... * n_d, d), in C order of the bins."""
    centers = [0.5 * (e[1:] + e[:-1]) for e in edges]
    mesh = np.meshgrid(*centers, indexing="ij")
    return np.stack([m.ravel() for m in mesh], axis=-1)
