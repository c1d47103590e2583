"""Sanity warnings: signs that a run "succeeded" with a PMF that should not be trusted.

Each check returns a one-line warning (str) or None; :func:`iteration_warnings` runs those that
apply to an active-learning iteration.  Warnings never change what a run computes: they are printed
by the console reporter, recorded in metrics.csv (column ``warnings``, '; '-separated) and repeated
in the final summary.  The thresholds are module constants, chosen so that the shipped presets run
clean and the failures seen in practice (training MSE ~1e7 kT^2, ESS 1.5 of 20) are far beyond them.
"""

from __future__ import annotations

import math

import numpy as np

POOR_FIT_RMSE_KT = 2.0
"""Ensemble fit: warn when the RMSE on its own training labels exceeds this (kT)."""
LOW_LABEL_ESS = 2.0
"""Labels: a CG point whose importance weights have an effective sample size below this is
effectively one draw, its PMF label is unreliable."""
LOW_LABEL_ESS_FRACTION = 0.25
"""Labels: warn when more than this fraction of the labelled points has ESS < LOW_LABEL_ESS."""
SAMPLE_ESS_FRACTION = 0.1
SAMPLE_ESS_MIN = 5.0


def ensemble_fit_warning(fit: dict, limit_rmse_kT: float = POOR_FIT_RMSE_KT) -> str | None:
    """Poor fit: the ensemble's training MSE (``ensemble_train_mse``, kT^2) above ``limit_rmse_kT``^2
    (or not finite)."""
    mse = fit.get("ensemble_train_mse")
    if mse is None:
        return None
    mse = float(mse)
    if math.isfinite(mse) and mse <= limit_rmse_kT**2:
        return None
    return (f"poor ensemble fit: RMSE {math.sqrt(mse) if math.isfinite(mse) else mse:.3g} kT on its own training "
            f"labels (MSE {mse:.3g} kT^2, above {limit_rmse_kT:g} kT): the labels are noisy or the ensemble "
            f"undertrained (ensemble.epochs, ensemble.lr)")


def label_ess_warning(ess, low: float = LOW_LABEL_ESS, max_fraction: float = LOW_LABEL_ESS_FRACTION) -> str | None:
    """Low per-point ESS of the PMF labels: more than ``max_fraction`` of the points with an
    effective sample size below ``low`` (the flow is far from the target at those points)."""
    ess = np.asarray(ess, dtype=np.float64).ravel()
    ess = ess[~np.isnan(ess)]
    if ess.size == 0:
        return None
    frac = float(np.mean(ess < low))
    if frac <= max_fraction:
        return None
    return (f"low label ESS: {frac:.0%} of {ess.size} labelled CG points have an importance-sampling effective "
            f"sample size below {low:g} (median {np.median(ess):.3g}, min {ess.min():.3g}): the flow is far from "
            f"the target there (train the flow longer, by_energy.*)")


def _distance(a: np.ndarray, b: np.ndarray, periodic, domain) -> np.ndarray:
    """Euclidean distances from a (d,) to b (n, d), periodic dims wrapped over the domain width."""
    d = np.abs(b - a[None, :])
    for i, per in enumerate(periodic):
        if per:
            w = domain[i][1] - domain[i][0]
            d[:, i] = np.minimum(d[:, i] % w, w - d[:, i] % w)
    return np.sqrt((d**2).sum(1))


def minimum_without_data_warning(pmf_kT: np.ndarray, grid: np.ndarray, points: np.ndarray, periodic, domain,
                                 radius: float) -> str | None:
    """The PMF minimum (over the grid) lies farther than ``radius`` from every CG point with a label:
    the minimum is an extrapolation of the ensemble, not a measurement."""
    f = np.asarray(pmf_kT, dtype=np.float64).ravel()
    grid = np.asarray(grid, dtype=np.float64).reshape(f.size, -1)
    points = np.asarray(points, dtype=np.float64).reshape(-1, grid.shape[1])
    if not np.isfinite(f).any():
        return "the PMF is not finite anywhere on the grid"
    i = int(np.nanargmin(np.where(np.isfinite(f), f, np.nan)))
    if points.shape[0] == 0:
        return "the PMF minimum lies where there is no data (no labelled CG point)"
    dist = float(_distance(grid[i], points, periodic, domain).min())
    if dist <= radius:
        return None
    where = ", ".join(f"{v:.3g}" for v in grid[i])
    return (f"the PMF minimum (at {where}) lies {dist:.3g} from the nearest labelled CG point (more than "
            f"{radius:g}): it is extrapolated, not measured")


UNLABELLED_MASS_FRACTION = 0.05
"""Error bar: warn when more than this fraction of the model's probability lies in bins farther than
the labels' reach from every labelled CG point."""


def unlabelled_mass_warning(pmf_kT: np.ndarray, grid: np.ndarray, error_bar, names,
                            max_fraction: float = UNLABELLED_MASS_FRACTION) -> str | None:
    """Significant model probability where no CG point was labelled: the bins whose distance to the
    nearest labelled point exceeds the labels' reach (``error_bar``: a
    :class:`~cgflow.pmf.error_bar.ErrorBar`) hold more than ``max_fraction`` of exp(-F)."""
    if error_bar is None:
        return None
    f = np.asarray(pmf_kT, dtype=np.float64).ravel()
    fin = np.isfinite(f)
    if not fin.any():
        return None
    p = np.where(fin, np.exp(-(np.where(fin, f, 0.0) - f[fin].min())), 0.0)
    p /= p.sum()
    far = error_bar.distance_to_labels > error_bar.reach
    mass = float(p[far].sum())
    if mass <= max_fraction:
        return None
    grid = np.asarray(grid, dtype=np.float64).reshape(f.size, -1)
    i = int(np.argmax(np.where(far, p, -1.0)))
    where = ", ".join(f"{n}={v:.3g}" for n, v in zip(names, grid[i]))
    return (f"{mass:.0%} of the model's probability lies where no CG point was labelled (farther than "
            f"{error_bar.reach:.3g} from every label; most around {where}): the PMF there is extrapolated, "
            f"its error bar up to {float(error_bar.error_bar_kT[far].max()):.3g} kT")


def sample_ess_warning(ess: float, n: int, fraction: float = SAMPLE_ESS_FRACTION,
                       minimum: float = SAMPLE_ESS_MIN) -> str | None:
    """`cgflow sample`: the effective sample size of the importance weights is low (below
    ``fraction`` of the structures, at least ``minimum``, at most half of them)."""
    if n <= 0:
        return None
    limit = min(max(minimum, fraction * n), 0.5 * n)
    if ess >= limit:
        return None
    return (f"low effective sample size {ess:.3g} of {n} structures (below {limit:.3g}): a few structures carry "
            f"almost all the weight, the flow is poor at these CG values (reweight with the weights file or "
            f"train longer)")


def iteration_warnings(run, fit: dict, labels, pmf_kT: np.ndarray) -> list[str]:
    """The warnings of one active-learning iteration of ``run`` (an ActiveLearningRun): ensemble fit,
    per-point label ESS (when the label estimator provides it: ``labels.ess``, a
    :class:`~cgflow.learning.labelling.LabelSet`), PMF minimum without data."""
    out = [ensemble_fit_warning(fit)]
    if labels.ess is not None:
        out.append(label_ess_warning(_numpy(labels.ess)))
    system = run.system
    radius = run.cfg.acquisition.spread_radius
    if run.measure.marginal:  # d > 2: a coarse grid; its bin centres lie up to half a
        widths = [e[1] - e[0] for e in run.edges]     # bin diagonal away from data inside the bin
        radius = max(radius, 0.5 * float(np.sqrt(np.sum(np.square(widths)))))
    out.append(minimum_without_data_warning(pmf_kT, _numpy(run.grid), _numpy(labels.points), system.cg_periodic,
                                            system.cg_domain, radius))
    out.append(unlabelled_mass_warning(pmf_kT, _numpy(run.grid), getattr(run, "last_error_bar", None),
                                       list(system.cg_names)))
    return [w.replace(";", ",") for w in out if w]  # "; " separates warnings in metrics.csv


def _numpy(x) -> np.ndarray:
    return x.detach().cpu().numpy() if hasattr(x, "detach") else np.asarray(x)
