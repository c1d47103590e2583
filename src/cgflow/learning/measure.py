"""How a run measures its PMF, chosen once at the start: on the full grid (CG spaces of d <= 2
dimensions) or on 2-D marginals (d > 2, a full grid being out of reach).

Either way the ensemble is evaluated on a full grid of bins (:attr:`Measure.edges`; for d > 2 a
coarse one of about ``metrics.grid_points`` bins) for the acquisition score, the error bar, the
warnings and pmf.npz; the accuracy figures come from that grid against :attr:`Measure.reference`
(d <= 2) or from the marginals against the marginal reference (d > 2)."""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field

import numpy as np
import torch

from cgflow.analysis.metrics import bin_centers_grid, forward_kld, pmf_errors, probabilities_from_pmf, reverse_kld
from cgflow.core.system import MarginalReferencePMF, ReferencePMF, System


@dataclass
class Measurement:
    """One iteration's measurement: ``accuracy`` (metrics.csv columns) and, for d > 2, the 2-D
    ``marginals`` (:class:`~cgflow.analysis.marginals.MarginalPMFs`) they came from."""

    accuracy: dict
    marginals: object | None = None


class Measure:
    """Full-grid measurement (d <= 2): the reference's bins, else 100 bins per CG dimension.

    Attributes:
        edges: bin edges per CG dimension of the grid the ensemble is evaluated on.
        reference: the full-grid reference PMF on those bins, or None.
        grid: (n_bins, cg_dim) float64 bin centres.
    """

    marginal = False

    def __init__(self, edges: list[np.ndarray], reference: ReferencePMF | None):
        self.edges, self.reference = edges, reference
        self.grid = torch.as_tensor(bin_centers_grid(edges), dtype=torch.float64)

    @classmethod
    def for_system(cls, system: System, metrics_cfg) -> Measure:
        """Full grid for d <= 2, marginals for d > 2."""
        if system.cg_dim > 2:
            return MarginalMeasure.build(system, metrics_cfg)
        ref = system.reference()
        if ref is not None:
            return cls(ref.edges, ref)
        return cls([np.linspace(lo, hi, 101) for lo, hi in system.cg_domain], None)

    def measure(self, mean: np.ndarray, std: np.ndarray, run, n_points: int | None = None) -> Measurement:
        """Forward/reverse KLD and the named PMF errors (:func:`cgflow.analysis.metrics.pmf_errors`) of
        ``mean`` (kT on :attr:`edges`) against the reference; {} without one (``n_points``: unused on a
        full grid)."""
        if self.reference is None:
            return Measurement({})
        p_model = probabilities_from_pmf(mean)
        return Measurement({"forward_kld": forward_kld(self.reference.prob, p_model),
                            "reverse_kld": reverse_kld(self.reference.prob, p_model),
                            **pmf_errors(self.reference.prob, mean, std)})

    def pmf_arrays(self, measurement: Measurement | None) -> dict:
        """Extra pmf.npz entries of this measure ({} on the full grid)."""
        return {}


@dataclass
class MarginalSetup:
    """2-D marginals of ``pairs`` on ``edges`` (per CG dimension), against ``reference`` (marginal,
    or None), integrated with ``n_points`` points; ``coarse_edges`` the coarse full grid."""

    pairs: list
    edges: list
    reference: MarginalReferencePMF | None
    n_points: int
    coarse_edges: list = field(default_factory=list)


class MarginalMeasure(Measure):
    """Marginal measurement (d > 2): accuracy on the 2-D marginals of the ensemble mean, averaged over
    the CG pairs; :attr:`reference` (full grid) is None, :attr:`setup` holds the marginal one."""

    marginal = True

    def __init__(self, setup: MarginalSetup, metrics_cfg):
        super().__init__(setup.coarse_edges, None)
        self.setup, self.cfg = setup, metrics_cfg

    @classmethod
    def build(cls, system: System, mc) -> MarginalMeasure:
        from cgflow.analysis.marginals import marginals_of_reference, resolve_pairs

        d, names = system.cg_dim, tuple(system.cg_names)
        ref = system.reference()
        if ref is not None and not isinstance(ref, MarginalReferencePMF):
            ref = marginals_of_reference(ref, resolve_pairs(None, names))
        pairs = resolve_pairs(mc.pairs if mc.pairs is not None else (ref.pairs if ref is not None else None), names)
        if ref is not None:
            lacking = [p for p in pairs if p not in ref.pairs and p[::-1] not in ref.pairs]
            if lacking:
                raise ValueError(f"metrics.pairs: the reference has no marginal of "
                                 f"{', '.join(f'{names[i]}|{names[j]}' for i, j in lacking)}")
            edges = ref.edges
        else:
            edges = [np.linspace(lo, hi, mc.n_bins + 1) for lo, hi in system.cg_domain]
        m = max(2, int(math.floor(mc.grid_points ** (1.0 / d) + 1e-9)))
        coarse = [np.linspace(lo, hi, m + 1) for lo, hi in system.cg_domain]
        return cls(MarginalSetup(pairs, edges, ref, mc.n_integration_points, coarse), mc)

    def marginal_pmfs(self, run, n_points: int | None = None):
        """The 2-D marginals of ``run``'s ensemble mean (:class:`~cgflow.analysis.marginals.MarginalPMFs`),
        integrated with ``n_points`` points per bin (None: ``metrics.n_integration_points``)."""
        from cgflow.analysis.marginals import marginal_pmfs

        m = self.setup
        ens32 = copy.deepcopy(run.ensemble).float()  # 2.8x faster on a CPU; ~1e-6 kT from float64

        def f(s):
            return ens32.mean_and_std(s.to(run.device, torch.float32))[0].cpu().double()

        centres = run.dataset.points.numpy() if self.cfg.integration == "importance" else None
        return marginal_pmfs(f, m.edges, run.system.cg_domain, m.pairs, n_points=n_points or m.n_points,
                             seed=run.cfg.seed,
                             periodic=run.system.cg_periodic, centres=centres)

    def measure(self, mean: np.ndarray, std: np.ndarray, run, n_points: int | None = None) -> Measurement:
        from cgflow.analysis.marginals import marginal_accuracy

        marg = self.marginal_pmfs(run, n_points)
        if self.setup.reference is None:
            return Measurement({"marginal_integration_error_kld": float(np.mean(marg.integration_error_kld))}, marg)
        return Measurement(marginal_accuracy(self.setup.reference, marg, tuple(run.system.cg_names)), marg)

    def pmf_arrays(self, measurement: Measurement | None) -> dict:
        """pmf.npz entries of the 2-D marginals: marginal_pairs (K, 2), marginal_pmf_kT (K, n, n),
        marginal_edges_i per CG dimension, marginal_reference_prob (K, n, n) if any."""
        marg = measurement.marginals if measurement is not None else None
        if marg is None:
            return {}
        out = {"marginal_pairs": np.array(marg.pairs, dtype=np.int64), "marginal_pmf_kT": np.stack(marg.pmf_kT),
               **{f"marginal_edges_{i}": e for i, e in enumerate(self.setup.edges)}}
        if self.setup.reference is not None:
            out["marginal_reference_prob"] = np.stack([self.setup.reference.prob_of(p) for p in marg.pairs])
        return out
