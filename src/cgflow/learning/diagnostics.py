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
import torch

from cgflow.learning.dataset import NOT_DRAWN

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


NONFINITE_DRAW_FRACTION = 0.005
"""Energies: warn when more than this fraction (0.5 %) of an iteration's evaluated draws had a non-finite
energy (NaN/inf: a clash, a force-field failure).  Such a draw counts as a zero weight in the labels:
where they cluster the PMF label is biased up and may vanish."""
FILTERED_DRAW_FRACTION = 0.25
"""Filter: warn when more than this fraction (25 %) of an iteration's draws was rejected by the system's
filter (``valid``, e.g. the chirality check) before any energy was computed."""
REGION_BAD_FRACTION = 0.5
"""Per CG point: a point with more than this fraction of its draws of the iteration non-finite or filtered
(and at least :data:`REGION_MIN_DRAWS` draws) is named in the warning, as are points that lost their label."""
REGION_MIN_DRAWS = 4
MAX_NAMED_POINTS = 5


def nonfinite_draws_warning(n_evaluated: int, n_nonfinite: int, n_drawn: int, n_rejected: int,
                            max_nonfinite: float = NONFINITE_DRAW_FRACTION,
                            max_filtered: float = FILTERED_DRAW_FRACTION) -> str | None:
    """Too many draws of one iteration gave no usable weight: non-finite energies above ``max_nonfinite``
    of the evaluated draws, or filter rejections above ``max_filtered`` of all draws."""
    parts = []
    if n_evaluated > 0 and n_nonfinite / n_evaluated > max_nonfinite:
        parts.append(f"{n_nonfinite / n_evaluated:.2%} of the {n_evaluated:,} energies evaluated this iteration were "
                     f"not finite ({n_nonfinite:,}, above {max_nonfinite:.1%})")
    if n_drawn > 0 and n_rejected / n_drawn > max_filtered:
        parts.append(f"{n_rejected / n_drawn:.1%} of the {n_drawn:,} draws this iteration were rejected by the "
                     f"system's filter ({n_rejected:,}, above {max_filtered:.0%})")
    if not parts:
        return None
    return (" and ".join(parts) + ": such draws count as zero weights, so the PMF labels are biased up where they "
            "cluster (check the energy function and the domain)")


def _describe_points(points: np.ndarray, names) -> str:
    """'s=1.52, s=1.61, ... (s in [1.5, 1.8])' for up to MAX_NAMED_POINTS points (P, d)."""
    shown = ["(" + ", ".join(f"{n}={v:.3g}" for n, v in zip(names, p)) + ")" if len(names) > 1
             else f"{names[0]}={p[0]:.3g}" for p in points[:MAX_NAMED_POINTS]]
    more = f" and {len(points) - MAX_NAMED_POINTS} more" if len(points) > MAX_NAMED_POINTS else ""
    span = "; ".join(f"{n} in [{lo:.3g}, {hi:.3g}]" for n, lo, hi in zip(names, points.min(0), points.max(0)))
    return f"{', '.join(shown)}{more} ({span})"


def region_draws_warning(points: np.ndarray, names, lost: np.ndarray, bad_fraction: np.ndarray,
                         n_draws: np.ndarray, max_bad: float = REGION_BAD_FRACTION,
                         min_draws: int = REGION_MIN_DRAWS) -> str | None:
    """Per region: the train CG points (``points`` (P, d)) that lost their label (``lost`` (P,) bool: drawn,
    but no finite weight, so no label) or whose draws of this iteration were mostly non-finite or filtered
    (``bad_fraction`` (P,) over ``n_draws`` (P,) draws)."""
    points = np.asarray(points, dtype=np.float64).reshape(len(lost), -1)
    mostly_bad = (np.asarray(n_draws) >= min_draws) & (np.asarray(bad_fraction) > max_bad) & ~lost
    parts = []
    if lost.any():
        order = np.argsort(points[lost][:, 0], kind="stable")
        parts.append(f"{int(lost.sum())} CG point(s) lost their labels (every draw non-finite or filtered): "
                     f"{_describe_points(points[lost][order], names)}")
    if mostly_bad.any():
        order = np.argsort(points[mostly_bad][:, 0], kind="stable")
        parts.append(f"{int(mostly_bad.sum())} CG point(s) had more than {max_bad:.0%} of this iteration's draws "
                     f"non-finite or filtered: {_describe_points(points[mostly_bad][order], names)}")
    if not parts:
        return None
    return " and ".join(parts) + ": the PMF there is not measured"


def draw_warnings(run) -> list[str | None]:
    """The energy / filter warnings of the current iteration of ``run``: the iteration's share of non-finite
    and filtered draws (the evaluation counter minus the previous metrics row) and, per CG point, the
    points that lost their labels or whose draws were mostly bad (from the run's draw log)."""
    c, rows = run.state.counter, run.state.rows
    prev = rows[-1] if rows else {}
    d = {k: getattr(c, k) - int(prev.get(f"evals_{k}", 0)) for k in ("drawn", "training", "rejected", "nonfinite")}
    out = [nonfinite_draws_warning(d["training"], d["nonfinite"], d["drawn"], d["rejected"])]
    ds = run.dataset
    cols = ds.draws.columns()
    now = cols["iteration"] == run.state.iteration
    n = np.bincount(_numpy(cols["point"][now]), minlength=len(ds))
    bad = np.bincount(_numpy(cols["point"][now]), weights=_numpy(~torch.isfinite(cols["log_w"][now])).astype(float),
                      minlength=len(ds))
    lost_all = _numpy(ds.is_train) & (_numpy(ds.status) != NOT_DRAWN).any(1)
    lost_all[_numpy(run.last_labels.index) if run.last_labels is not None else []] = False
    lost_all &= n > 0  # drawn this iteration: news of this iteration, not an old loss repeated
    touched = lost_all | (n > 0)
    if touched.any():
        idx = np.flatnonzero(touched)
        out.append(region_draws_warning(_numpy(ds.points)[idx], list(run.system.cg_names), lost_all[idx],
                                        bad[idx] / np.maximum(n[idx], 1), n[idx]))
    return out


def iteration_warnings(run, fit: dict, labels, pmf_kT: np.ndarray) -> list[str]:
    """The warnings of one active-learning iteration of ``run`` (an ActiveLearningRun): ensemble fit,
    per-point label ESS (when the label estimator provides it: ``labels.ess``, a
    :class:`~cgflow.learning.labelling.LabelSet`), PMF minimum without data, unlabelled probability,
    non-finite / filtered draws of the iteration and the CG points that lost their labels
    (:func:`draw_warnings`)."""
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
    out.extend(draw_warnings(run))
    return [w.replace(";", ",") for w in out if w]  # "; " separates warnings in metrics.csv


def _numpy(x) -> np.ndarray:
    return x.detach().cpu().numpy() if hasattr(x, "detach") else np.asarray(x)
