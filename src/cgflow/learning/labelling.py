"""The label phase: importance-sampling PMF labels of the dataset's train CG points, as one typed
record (:class:`LabelSet`) whatever the estimator (``labels.estimator``: latest or pooled)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from cgflow.learning.dataset import EVALUATED, NOT_DRAWN, ALDataset
from cgflow.pmf.labels import pmf_from_log_weights
from cgflow.pmf.pooled_labels import pooled_labels


@dataclass
class LabelSet:
    """PMF labels of P CG points.  The fields after ``pmf_kT`` are None for the ``latest``
    estimator (it gives values only); the mean-force fields are None unless ``labels.mean_forces``.

    Attributes:
        index: (P,) int64 positions of the points in the dataset.
        points: (P, cg_dim) CG points.
        pmf_kT: (P,) PMF labels, kT.
        pmf_se_kT: (P,) standard errors of the labels from the importance weights, kT.
        pmf_noise2_kT2: (P,) empirical label variance from two halves of the draws, kT^2 (NaN where a
            half has none).
        ess: (P,) effective sample sizes; n_draws: (P,) pooled draws per point.
        se_factor: how much the SE formula understates the empirical noise (ratio of sums, >= 1).
        mean_force: (P, cg_dim) dF/ds, kT per CG unit; mean_force_se: its standard errors;
        mean_force_se_factor: as se_factor, for the mean forces.
    """

    index: torch.Tensor
    points: torch.Tensor
    pmf_kT: torch.Tensor
    pmf_se_kT: torch.Tensor | None = None
    pmf_noise2_kT2: torch.Tensor | None = None
    ess: torch.Tensor | None = None
    n_draws: torch.Tensor | None = None
    se_factor: float | None = None
    mean_force: torch.Tensor | None = None
    mean_force_se: torch.Tensor | None = None
    mean_force_se_factor: float | None = None

    @property
    def has_errors(self) -> bool:
        """Whether the estimator gave standard errors (pooled) or values only (latest)."""
        return self.pmf_se_kT is not None

    def metrics_row(self) -> dict:
        """The label columns of metrics.csv (none for the latest estimator)."""
        if self.ess is None:
            return {}
        return {"label_ess_median": float(self.ess.median()), "label_ess_min": float(self.ess.min()),
                "label_se_factor": self.se_factor, "label_se_median_kT": float(self.pmf_se_kT.median()),
                "n_draws_pooled": int(self.n_draws.sum())}


def noise_factor(noise2: torch.Tensor, se2: torch.Tensor) -> float:
    """sqrt(sum noise^2 / sum se^2) over entries where both are finite, at least 1 (1 if none)."""
    ok = torch.isfinite(noise2) & torch.isfinite(se2)
    if not bool(ok.any()) or float(se2[ok].sum()) <= 0:
        return 1.0
    return max(1.0, math.sqrt(float(noise2[ok].sum() / se2[ok].sum())))


def compute_label_set(ds: ALDataset, lc) -> LabelSet:
    """The labels of the train CG points of ``ds`` with >= 1 evaluated draw, per the ``labels``
    config section ``lc``."""
    use = ds.is_train & (ds.status == EVALUATED).any(1)
    if lc.estimator == "latest":
        f = pmf_from_log_weights(ds.log_w[use], drawn=ds.status[use] != NOT_DRAWN, top_k_clip=lc.top_k_clip)
        ok = torch.isfinite(f)
        return LabelSet(index=torch.nonzero(use).reshape(-1)[ok], points=ds.points[use][ok], pmf_kT=f[ok])
    cols = ds.draws.columns()
    lab = pooled_labels(len(ds), cols["point"], cols["iteration"], cols["log_w"], cols["grad_s"],
                        rule=lc.pool_rule, power=lc.pool_power, top_k_clip=lc.top_k_clip)
    # empirical label noise: the same estimator on two halves of the draws (alternate draws);
    # (F_1 - F_2)^2 / 4 estimates the variance of the full label without trusting the SE formula
    half = torch.arange(cols["point"].numel()) % 2 == 0
    halves = [pooled_labels(len(ds), *(cols[k][m] for k in ("point", "iteration", "log_w", "grad_s")),
                            rule=lc.pool_rule, power=lc.pool_power, top_k_clip=lc.top_k_clip)
              for m in (half, ~half)]
    noise2 = (halves[0].pmf_kT - halves[1].pmf_kT) ** 2 / 4
    noise2_g = (halves[0].mean_force - halves[1].mean_force) ** 2 / 4
    ok = use & torch.isfinite(lab.pmf_kT)
    if lc.bias_correction:  # E[-ln Z^] ~ F + Var(Z^)/(2 Z^2): remove the Jensen bias to first order
        lab.pmf_kT = lab.pmf_kT - 0.5 * lab.pmf_se_kT**2
    out = LabelSet(index=torch.nonzero(ok).reshape(-1), points=ds.points[ok], pmf_kT=lab.pmf_kT[ok],
                   pmf_se_kT=lab.pmf_se_kT[ok], pmf_noise2_kT2=noise2[ok], ess=lab.ess[ok], n_draws=lab.n_draws[ok],
                   se_factor=noise_factor(noise2[ok], lab.pmf_se_kT[ok] ** 2))
    if lc.mean_forces:
        out.mean_force, out.mean_force_se = lab.mean_force[ok], lab.mean_force_se[ok]
        out.mean_force_se_factor = noise_factor(noise2_g[ok], lab.mean_force_se[ok] ** 2)
    return out
