"""The run's error bar on its PMF, per bin and Boltzmann-weighted: what the error *is*, not only
how much the ensemble members disagree (maths only; the run calls it in its measure phase).

The ensemble std sigma_ens(b) sees only how differently the members fit the same labels. Two
errors it cannot see are added in quadrature (each measured from the run itself, no reference):

* **label noise carried through the fit**, sigma_lab(b)^2 = mean_{i in kNN(b)} r_i^2 / k: the
  variance of a k-nearest-neighbour average of labels whose squared residuals r_i^2 = (F_mean(s_i)
  - y_i)^2 (ensemble mean minus label at the k labelled CG points nearest to b) measure their
  noise. k = :data:`DEFAULT_K` was chosen on alanine dipeptide (seed 0 of aldp-fast) and checked
  on the other systems and seeds (docs/results.md, benchmarks/calibration.py).
* **distance to labelled data**, sigma_far(b) = G * max(0, dist(b) - h): dist(b) the distance of
  the bin centre to its nearest labelled CG point, h the median distance of a labelled point to its
  k-th labelled neighbour (the reach of the labels), G the median slope |grad F_mean| (kT per CG
  unit) over bins within h of a label. A bin no label has reached gets an error bar that grows
  with how far the fit extrapolates, whatever the members agree on there.

sigma(b) = sqrt(sigma_ens^2 + sigma_lab^2 + sigma_far^2).  The Boltzmann-weighted figure
:func:`predicted_abs_error` is the mean absolute error a Gaussian error of that std predicts,
sqrt(2/pi) sum_b p_model(b) sigma(b), with the model's weights (all a run without a reference has).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy.spatial import cKDTree

DEFAULT_K = 30
"""Labels per k-nearest-neighbour average of the label-noise term (see the module docstring)."""
SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)


@dataclass
class ErrorBarInputs:
    """What the error bar needs.

    Attributes:
        grid: (B, d) bin centres; grid_shape: the bins per dimension (prod = B); edges: bin edges
            per dimension (for the slope of the mean).
        mean_kT, std_kT: (B,) ensemble mean and std at the bin centres, kT.
        label_points: (P, d) labelled CG points; label_residual2_kT2: (P,) (F_mean - label)^2, kT^2.
        periodic: (d,) bools; domain: (d, 2) lower/upper bounds (the periods of periodic dims).
    """

    grid: np.ndarray
    grid_shape: tuple
    edges: list
    mean_kT: np.ndarray
    std_kT: np.ndarray
    label_points: np.ndarray
    label_residual2_kT2: np.ndarray
    periodic: np.ndarray
    domain: np.ndarray

    @classmethod
    def from_arrays(cls, d: dict) -> ErrorBarInputs:
        """From a ``benchmarks/calibration_collect.py`` dump (members on the grid and at the labels)."""
        members, at_labels = d["members_grid_kT"], d["members_at_labels_kT"]
        shape = tuple(int(n) for n in d["grid_shape"])
        return cls(grid=d["grid"], grid_shape=shape, edges=[d[f"edges_{i}"] for i in range(len(shape))],
                   mean_kT=members.mean(0), std_kT=members.std(0, ddof=1), label_points=d["label_points"],
                   label_residual2_kT2=(at_labels.mean(0) - d["label_pmf_kT"]) ** 2,
                   periodic=np.asarray(d["cg_periodic"], bool), domain=np.asarray(d["cg_domain"], float))


@dataclass
class ErrorBar:
    """Per-bin error bar (kT, (B,)) and its parts; ``reach`` = h (CG units), ``slope_kT`` = G."""

    error_bar_kT: np.ndarray
    std_kT: np.ndarray
    label_noise_kT: np.ndarray
    extrapolation_kT: np.ndarray
    distance_to_labels: np.ndarray
    reach: float
    slope_kT: float


def _tree_coords(x: np.ndarray, periodic: np.ndarray, domain: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Coordinates and box sizes for a cKDTree with periodic boundaries in the periodic dims."""
    length = domain[:, 1] - domain[:, 0]
    y = x - domain[:, 0]
    far = 1e6  # non-periodic dims: a box far larger than any distance, points moved into it
    return np.where(periodic, np.mod(y, length), y + far / 2), np.where(periodic, length, 2 * far)


def error_bar_per_bin(inp: ErrorBarInputs, k: int = DEFAULT_K) -> ErrorBar:
    """The per-bin error bar of the module docstring."""
    P = inp.label_points.shape[0]
    k_eff = max(1, min(k, P))
    box = _tree_coords(inp.grid, inp.periodic, inp.domain)[1]
    tree = cKDTree(_tree_coords(inp.label_points, inp.periodic, inp.domain)[0], boxsize=box)
    dist, idx = tree.query(_tree_coords(inp.grid, inp.periodic, inp.domain)[0], k=k_eff)
    dist, idx = dist.reshape(len(inp.grid), k_eff), idx.reshape(len(inp.grid), k_eff)
    r2 = np.where(np.isfinite(inp.label_residual2_kT2), inp.label_residual2_kT2, 0.0)
    label_noise = np.sqrt(r2[idx].mean(1) / k_eff)
    if P > 1:
        dl, _ = tree.query(_tree_coords(inp.label_points, inp.periodic, inp.domain)[0], k=min(k_eff + 1, P))
        reach = float(np.median(dl.reshape(P, -1)[:, -1]))
    else:
        reach = 0.0
    mean = inp.mean_kT.reshape(inp.grid_shape)
    spacing = [float(e[1] - e[0]) for e in inp.edges]
    grads = np.gradient(mean, *spacing) if mean.ndim > 1 else [np.gradient(mean, spacing[0])]
    slope = np.sqrt(sum(g**2 for g in grads)).reshape(-1)
    near = dist[:, 0] <= reach
    G = float(np.median(slope[near])) if near.any() else float(np.median(slope))
    extrap = G * np.maximum(0.0, dist[:, 0] - reach)
    total = np.sqrt(inp.std_kT**2 + label_noise**2 + extrap**2)
    return ErrorBar(total, inp.std_kT, label_noise, extrap, dist[:, 0], reach, G)


def model_probabilities(mean_kT: np.ndarray) -> np.ndarray:
    """p(b) ~ exp(-F_mean(b)), normalized over the bins (NaN bins get 0)."""
    f = np.where(np.isfinite(mean_kT), mean_kT, np.inf)
    w = np.exp(-(f - f.min()))
    return w / w.sum()


def predicted_abs_error(mean_kT: np.ndarray, error_bar_kT: np.ndarray) -> float:
    """sqrt(2/pi) sum_b p_model(b) sigma(b): the Boltzmann-weighted (model weights) mean absolute
    error that a Gaussian error of std sigma(b) per bin predicts, kT."""
    p = model_probabilities(mean_kT.reshape(-1))
    return SQRT_2_OVER_PI * float(np.sum(p * error_bar_kT.reshape(-1)))


def actual_error(mean_kT: np.ndarray, reference_prob: np.ndarray, error_bar_kT: np.ndarray) -> dict:
    """Against a reference (bins with p_ref > 0): ``abs_err_ref_weighted_kT`` = sum_b p_ref(b)
    |F(b) - F_ref(b) - c| (c the p_ref-weighted mean of F - F_ref: reference weights), and the
    coverages ``coverage_1sigma`` / ``coverage_2sigma``: the p_ref mass of the bins whose |F - F_ref
    - c| lies within 1 / 2 error bars (nominal 0.683 / 0.954 for a calibrated Gaussian error)."""
    p_ref, f, s = reference_prob.reshape(-1), mean_kT.reshape(-1), error_bar_kT.reshape(-1)
    ok = (p_ref > 0) & np.isfinite(f)
    w = p_ref[ok] / p_ref[ok].sum()
    diff = f[ok] + np.log(p_ref[ok])
    e = np.abs(diff - np.sum(w * diff))
    return {"abs_err_ref_weighted_kT": float(np.sum(w * e)),
            "coverage_1sigma": float(np.sum(w * (e <= s[ok]))),
            "coverage_2sigma": float(np.sum(w * (e <= 2 * s[ok])))}
