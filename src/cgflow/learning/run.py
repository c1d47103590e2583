"""The active-learning loop (method spec 3): train the flow by energy at the CG points of the
dataset, fit the PMF ensemble on importance-sampling labels, find new CG points where the
ensemble disagrees by Monte Carlo on its mean, add them, repeat.

Everything here is system-agnostic; the system enters only through :class:`cgflow.core.system.System`.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from tqdm.auto import tqdm

from cgflow.core import run_directory as rd
from cgflow.sampling.acquisition import farthest_point_selection, spread_uniform_ball
from cgflow.config import RunConfig, dump_config, validate_config
from cgflow.learning.dataset import EVALUATED, NOT_DRAWN, ALDataset
from cgflow.learning.diagnostics import iteration_warnings
from cgflow.pmf.ensemble import PMFEnsemble
from cgflow.core.evaluation_counter import EvaluationCounter
from cgflow.core.features import CGFeatures
from cgflow.flows import ConditionalAffineFlow, ConditionalFlow
from cgflow.sampling.mc import find_high_error_points
from cgflow.analysis.metrics import bin_centers_grid, forward_kld, pmf_errors, probabilities_from_pmf, reverse_kld
from cgflow.pmf.history import save_snapshot
from cgflow.pmf.pooled_labels import pooled_labels
from cgflow.pmf.labels import pmf_from_log_weights
from cgflow.core.system import System, with_defaults
from cgflow.systems import build_system
from cgflow.learning.training import EnergyTimer, test_loss, train_by_energy_epoch, train_by_example


class Reporter(Protocol):
    """Receives progress; the run's files do not depend on reporters."""

    def on_iteration(self, run: "ActiveLearningRun", row: dict) -> None: ...

    def on_finish(self, run: "ActiveLearningRun") -> None: ...


@dataclass
class RunState:
    iteration: int = 1
    counter: EvaluationCounter = field(default_factory=EvaluationCounter)
    mc_start: torch.Tensor | None = None
    rows: list[dict] = field(default_factory=list)
    done: bool = False
    stop_reason: str = ""
    wall_time_s: float = 0.0


def _noise_factor(noise2: torch.Tensor, se2: torch.Tensor) -> float:
    """sqrt(sum noise^2 / sum se^2) over entries where both are finite, at least 1 (1 if none)."""
    ok = torch.isfinite(noise2) & torch.isfinite(se2)
    if not bool(ok.any()) or float(se2[ok].sum()) <= 0:
        return 1.0
    return max(1.0, math.sqrt(float(noise2[ok].sum() / se2[ok].sum())))


def _config_for_object(cfg: RunConfig, system) -> RunConfig:
    """``cfg`` with its system section saying the system came as a Python object."""
    from cgflow.systems.python_factory import PythonSystemConfig

    inner = getattr(system, "wrapped", system)
    return cfg.model_copy(update={"system": PythonSystemConfig(
        factory=None, object=f"{type(inner).__module__}.{type(inner).__qualname__}")})


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' requested but torch sees no CUDA device")
    return torch.device(name)


def build_flow(cfg: RunConfig, system: System, features: CGFeatures) -> ConditionalFlow:
    if cfg.flow.kind == "affine":
        if any(system.fg_periodic):
            raise ValueError("flow.kind 'affine' cannot model periodic FG coordinates")
        return ConditionalAffineFlow(system.fg_dim, features, cfg.flow.hidden, cfg.flow.activation)
    if cfg.flow.kind == "spline":
        from cgflow.flows.spline import ConditionalSplineFlow

        f = cfg.flow
        return ConditionalSplineFlow(system.fg_dim, tuple(system.fg_periodic), features, n_blocks=f.n_blocks,
                                     hidden=f.hidden[0], n_res_blocks=f.n_res_blocks, n_bins=f.n_bins,
                                     tail_bound=f.tail_bound, seed=cfg.seed,
                                     dtype=torch.float32 if f.dtype == "float32" else torch.float64)
    raise ValueError(f"unknown flow kind {cfg.flow.kind!r}")


@dataclass
class MarginalSetup:
    """How a CG space of d > 2 dimensions is measured: 2-D marginals of ``pairs`` on ``edges`` (per
    CG dimension), against ``reference`` (marginal, or None), with ``n_points`` quasi-MC points; and
    the coarse full grid ``coarse_edges`` (about ``metrics.grid_points`` bins) on which the
    acquisition score, the error bar and the warnings are computed."""

    pairs: list
    edges: list
    reference: object
    n_points: int
    coarse_edges: list

    @classmethod
    def build(cls, system: System, mc) -> "MarginalSetup":
        from cgflow.analysis.marginals import MarginalReferencePMF, marginals_of_reference, resolve_pairs

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
        return cls(pairs, edges, ref, mc.n_integration_points, coarse)


def evaluation_grid(system: System):
    """Bin edges used for metrics and plots: the reference's, else 100 bins per CG dim."""
    ref = system.reference()
    if ref is not None:
        return ref.edges, ref
    return [np.linspace(lo, hi, 101) for lo, hi in system.cg_domain], None


class ActiveLearningRun:
    """One run, tied to a run directory.

    Args:
        cfg: validated configuration.
        run_dir: output directory; must not exist unless ``resume``.
        resume: continue from ``run_dir/checkpoint.pt`` (the config saved there is used; a
            different ``cfg`` is refused; None takes the saved one).
        reporters: progress observers.
        system: an object implementing :class:`cgflow.core.system.System` (a plug-in system, see
            docs/systems.md) used instead of building one from ``cfg.system``; the saved config then
            records ``system: {name: python, factory: null, object: <its class>}``, and a resume
            needs the object again.
    Constructing with ``resume=True`` only loads the state; nothing runs until :meth:`run`/:meth:`step`.
    """

    def __init__(self, cfg: RunConfig | None, run_dir: str | Path, *, resume: bool = False, reporters=(),
                 system: System | None = None):
        self.run_dir = Path(run_dir)
        self.reporters = list(reporters)
        if system is not None:
            system = with_defaults(system)
            if cfg is not None:
                cfg = _config_for_object(cfg, system)
        if resume:
            cfg = self._check_resumable(cfg)
        elif self.run_dir.exists() and any(self.run_dir.iterdir()):
            raise rd.RunDirectoryError(f"run directory {self.run_dir} already exists; use --resume to continue it "
                                       f"or choose another --out")
        self.cfg = cfg
        self.device = resolve_device(cfg.device)
        torch.manual_seed(cfg.seed)
        self.rng = np.random.default_rng(cfg.seed)
        self.system = system if system is not None else build_system(cfg.system, device=self.device)
        self.marginals = MarginalSetup.build(self.system, cfg.metrics) if self.system.cg_dim > 2 else None
        if self.marginals is None:
            self.edges, self.reference = evaluation_grid(self.system)
        else:  # d > 2: a coarse full grid for the acquisition score and the error bar; accuracy on marginals
            self.edges, self.reference = self.marginals.coarse_edges, None
        self.grid = torch.as_tensor(bin_centers_grid(self.edges), dtype=torch.float64)
        self.state = RunState()
        self.dataset = ALDataset(self.system.cg_dim, cfg.by_energy.copies_per_point)
        features = CGFeatures(self.system.cg_periodic)
        self.flow = build_flow(cfg, self.system, features).to(self.device)
        self.optimizer = torch.optim.Adam(self.flow.parameters(), lr=cfg.by_example.lr)
        e = cfg.ensemble
        self.ensemble = PMFEnsemble(CGFeatures(self.system.cg_periodic), e.n_models, e.hidden, e.activation,
                                    e.init).to(self.device)
        if resume:
            self._load_checkpoint()
        else:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            rd.atomic_write_text(self.run_dir / rd.CONFIG, dump_config(cfg))
            self._initialize()
            self._save_checkpoint()

    # --- set-up -------------------------------------------------------------------------------
    def _check_resumable(self, cfg: RunConfig | None) -> RunConfig:
        ckpt = self.run_dir / rd.CHECKPOINT
        if not ckpt.is_file():
            raise rd.RunDirectoryError(f"cannot resume: no checkpoint at {ckpt}")
        import yaml
        saved = validate_config(yaml.safe_load((self.run_dir / rd.CONFIG).read_text()))
        if cfg is not None:
            from cgflow.config import config_differences, describe_differences

            diff = [k for k in config_differences(saved, cfg) if k != "system.object"]  # informative only
            if diff:
                raise rd.RunDirectoryError(f"cannot resume {self.run_dir}: the given config differs from the saved "
                                           f"one in {describe_differences(saved, cfg, diff)}")
        return saved

    def _initialize(self) -> None:
        """Starting data, training by example, and the seed CG points (spec 3 steps 1-2)."""
        t0 = time.perf_counter()
        start = self.system.starting_data(self.cfg.seed)
        self.state.counter.starting_data = start.n_energy_evaluations
        s0, x0 = self.system.to_internal(start.x.to(torch.float64))
        if self.cfg.flow.context_standardization == "starting_data":
            self.flow.features.set_standardization(s0.mean(0), s0.std(0).clamp_min(1e-6))
        else:
            lo, hi = torch.tensor(self.system.cg_domain, dtype=torch.float64).T
            self.flow.features.set_standardization((lo + hi) / 2, (hi - lo) / math.sqrt(12))
        gen = torch.Generator().manual_seed(self.cfg.seed)
        c = self.cfg.by_example
        losses = train_by_example(self.flow, s0.to(self.device), x0.to(self.device), epochs=c.epochs,
                                  batch_size=c.batch_size, optimizer=self.optimizer, lr=c.lr, generator=gen,
                                  progress=self.cfg.progress)
        self.by_example_nll = losses[-1] if losses else math.nan
        seed_points = s0
        n_seed = self.cfg.acquisition.n_seed_points
        if self.cfg.mode == "grid":
            seed_points = self.cg_grid_points()
        elif n_seed is not None and n_seed < s0.shape[0]:
            seed_points = s0[torch.as_tensor(self.rng.choice(s0.shape[0], size=n_seed, replace=False))]
        n_fill = self.cfg.acquisition.n_space_filling_seed_points
        if self.cfg.mode != "grid" and n_fill:
            seed_points = torch.cat([seed_points, self.space_filling_points(n_fill)])
        self.dataset.add(seed_points, added_in=0, test_fraction=self.cfg.acquisition.test_fraction, rng=self.rng)
        self.state.wall_time_s += time.perf_counter() - t0

    def space_filling_points(self, n: int) -> torch.Tensor:
        """n points of a scrambled Sobol sequence over the CG domain (seeded by the run's rng), (n, cg_dim)."""
        from scipy.stats import qmc

        u = qmc.Sobol(d=self.system.cg_dim, scramble=True, seed=self.rng).random(n)
        lo, hi = np.array(self.system.cg_domain, dtype=np.float64).T
        return torch.as_tensor(lo + u * (hi - lo), dtype=torch.float64)

    def cg_grid_points(self) -> torch.Tensor:
        """The grid of grid conditioning: points_per_dim per CG dim over the domain, both ends included."""
        axes = [torch.linspace(lo, hi, self.cfg.grid.points_per_dim, dtype=torch.float64)
                for lo, hi in self.system.cg_domain]
        return torch.stack([m.reshape(-1) for m in torch.meshgrid(*axes, indexing="ij")], dim=1)

    # --- checkpoints --------------------------------------------------------------------------
    def _save_checkpoint(self) -> None:
        st = self.state
        rd.atomic_torch_save(self.run_dir / rd.CHECKPOINT, {
            "iteration": st.iteration, "counter": st.counter.as_dict(), "mc_start": st.mc_start,
            "rows": st.rows, "done": st.done, "stop_reason": st.stop_reason, "wall_time_s": st.wall_time_s,
            "flow": self.flow.state_dict(), "optimizer": self.optimizer.state_dict(),
            "ensemble": self.ensemble.state_dict(), "dataset": self.dataset.state_dict(),
            "torch_rng": torch.get_rng_state(), "numpy_rng": self.rng.bit_generator.state,
        })
        rd.write_metrics_csv(self.run_dir / rd.METRICS, st.rows)

    def _load_checkpoint(self) -> None:
        ck = torch.load(self.run_dir / rd.CHECKPOINT, map_location=self.device, weights_only=False)
        saved_dim = int(ck["dataset"]["points"].shape[1])
        if saved_dim != self.system.cg_dim:
            raise rd.RunDirectoryError(f"cannot resume {self.run_dir}: its CG points have {saved_dim} dimension(s), "
                                       f"the system {self.system.name!r} has cg_dim {self.system.cg_dim}")
        self.state = RunState(iteration=ck["iteration"], counter=EvaluationCounter.from_dict(ck["counter"]),
                              mc_start=ck["mc_start"], rows=ck["rows"], done=ck["done"],
                              stop_reason=ck["stop_reason"], wall_time_s=ck["wall_time_s"])
        self.flow.load_state_dict(ck["flow"])
        self.optimizer.load_state_dict(ck["optimizer"])
        res = self.ensemble.load_state_dict(ck["ensemble"], strict=False)
        if res.unexpected_keys or set(res.missing_keys) - {"fitted", "std_scale"}:  # buffers added later
            raise rd.RunDirectoryError(f"cannot resume {self.run_dir}: the checkpoint's ensemble does not match "
                                       f"({res.missing_keys or res.unexpected_keys})")
        self.dataset = ALDataset.from_state_dict(ck["dataset"])
        torch.set_rng_state(ck["torch_rng"])
        self.rng.bit_generator.state = ck["numpy_rng"]

    # --- one iteration ------------------------------------------------------------------------
    def _epoch_plan(self, iteration: int) -> tuple[int, int, int, int]:
        """(first epoch index, epochs now, warm-up epochs, epochs of the lr schedule) for this iteration.

        Active learning: each iteration is its own schedule (warm-up after every data update).
        Grid: one schedule over all grid.epochs, cut into chunks of grid.ensemble_every_epochs."""
        c = self.cfg.by_energy
        if self.cfg.mode == "grid":
            every, total = self.cfg.grid.ensemble_every_epochs, self.cfg.grid.epochs
            first = (iteration - 1) * every
            return first, min(every, total - first), c.warmup_epochs_first, total
        epochs = c.epochs_first if iteration == 1 else c.epochs_later
        warmup = c.warmup_epochs_first if iteration == 1 else c.warmup_epochs_later
        return 0, epochs, warmup, epochs

    def _lr_factor(self, epoch: int, warmup: int, total: int) -> float:
        if epoch < warmup:
            return (epoch + 1) / warmup
        if self.cfg.by_energy.lr_decay == "cosine" and total > warmup:
            return 0.5 * (1 + math.cos(math.pi * (epoch - warmup) / (total - warmup)))
        return 1.0

    def _train_flow(self, iteration: int, energy_timer: EnergyTimer | None = None) -> dict:
        c = self.cfg.by_energy
        first, epochs, warmup, total = self._epoch_plan(iteration)
        n_steps = self.dataset.epoch_size(c.old_fraction, c.batch_size) // c.batch_size
        bar = tqdm(total=epochs * n_steps, desc=f"iteration {iteration}: flow by energy",
                   leave=False, disable=not self.cfg.progress, mininterval=0.5)
        out, skipped = {}, 0
        for epoch in range(first, first + epochs):
            for g in self.optimizer.param_groups:
                g["lr"] = c.lr * self._lr_factor(epoch, warmup, total)
            clip = c.grad_clip_early if epoch < c.grad_clip_switch_epoch else c.grad_clip_late
            out = train_by_energy_epoch(self.flow, self.system, self.dataset, self.optimizer, self.state.counter,
                                        batch_size=c.batch_size, old_fraction=c.old_fraction,
                                        drop_top_k=c.drop_top_k, grad_clip=clip, rng=self.rng, progress_bar=bar,
                                        energy_timer=energy_timer, iteration=iteration,
                                        with_grad_s=self.cfg.labels.mean_forces)
            skipped += out["skipped"]
        bar.close()
        return {"flow_loss": out.get("loss", math.nan), "flow_epochs": first + epochs, "skipped_steps": skipped}

    def labels(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Importance-sampling PMF labels (kT) of the train CG points with >= 1 evaluated copy.
        Returns (points (P, cg_dim), labels (P,))."""
        lab = self.label_set()
        return lab["points"], lab["pmf_kT"]

    def label_set(self) -> dict:
        """The labels of the train CG points with >= 1 evaluated draw, per ``cfg.labels``.

        Returns a dict of tensors: index (P,) of the points in the dataset, points (P, cg_dim),
        pmf_kT (P,), and for the pooled estimator pmf_noise2_kT2 (P,) (an empirical estimate of each
        label's variance from two halves of its draws; NaN where a half has none),
        also pmf_se_kT (P,), mean_force (P, cg_dim) (dF/ds, kT per CG unit; NaN unless
        labels.mean_forces), mean_force_se (P, cg_dim), ess (P,), n_draws (P,)."""
        ds, lc = self.dataset, self.cfg.labels
        use = ds.is_train & (ds.status == EVALUATED).any(1)
        if lc.estimator == "latest":
            f = pmf_from_log_weights(ds.log_w[use], drawn=ds.status[use] != NOT_DRAWN, top_k_clip=lc.top_k_clip)
            ok = torch.isfinite(f)
            return {"index": torch.nonzero(use).reshape(-1)[ok], "points": ds.points[use][ok], "pmf_kT": f[ok]}
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
        out = {"index": torch.nonzero(ok).reshape(-1), "points": ds.points[ok], "pmf_kT": lab.pmf_kT[ok],
               "pmf_se_kT": lab.pmf_se_kT[ok], "pmf_noise2_kT2": noise2[ok],
               "ess": lab.ess[ok], "n_draws": lab.n_draws[ok]}
        # how much the standard-error formulas understate the empirical noise (ratio of sums; >= 1)
        out["se_factor"] = _noise_factor(noise2[ok], lab.pmf_se_kT[ok] ** 2)
        if lc.mean_forces:
            out["mean_force"], out["mean_force_se"] = lab.mean_force[ok], lab.mean_force_se[ok]
            out["mean_force_se_factor"] = _noise_factor(noise2_g[ok], lab.mean_force_se[ok] ** 2)
        return out

    @torch.no_grad()
    def pmf_on_grid(self) -> tuple[np.ndarray, np.ndarray]:
        """Ensemble mean and std (kT) at the evaluation-grid bin centres, shaped like the bins."""
        shape = tuple(len(e) - 1 for e in self.edges)
        mean, std = self.ensemble.mean_and_std(self.grid.to(self.device))
        return mean.cpu().numpy().reshape(shape), std.cpu().numpy().reshape(shape)

    def accuracy(self, mean: np.ndarray, std: np.ndarray | None = None) -> dict:
        """Forward/reverse KLD and the named PMF errors of :func:`cgflow.analysis.metrics.pmf_errors`
        (weighted RMSE, unweighted RMSE and max error where F_ref < 10 kT, ensemble std beside them)
        of ``mean`` on the evaluation grid.  For d > 2 ``mean`` and ``std`` are not used: the figures
        are those of the 2-D marginals of the ensemble mean (:meth:`marginal_pmfs`, kept for pmf.npz
        and the snapshot), averaged over the CG pairs."""
        if self.marginals is not None:
            return self._marginal_accuracy()
        if self.reference is None:
            return {}
        p_model = probabilities_from_pmf(mean)
        return {"forward_kld": forward_kld(self.reference.prob, p_model),
                "reverse_kld": reverse_kld(self.reference.prob, p_model),
                **pmf_errors(self.reference.prob, mean, std)}

    def marginal_pmfs(self):
        """The 2-D marginals of the ensemble mean (d > 2; :class:`~cgflow.analysis.marginals.MarginalPMFs`)."""
        from cgflow.analysis.marginals import marginal_pmfs

        import copy

        m = self.marginals
        ens32 = copy.deepcopy(self.ensemble).float()  # 2.8x faster on a CPU; ~1e-6 kT from float64

        def f(s):
            return ens32.mean_and_std(s.to(self.device, torch.float32))[0].cpu().double()

        centres = self.dataset.points.numpy() if self.cfg.metrics.integration == "importance" else None
        return marginal_pmfs(f, m.edges, self.system.cg_domain, m.pairs, n_points=m.n_points, seed=self.cfg.seed,
                             periodic=self.system.cg_periodic, centres=centres)

    def _marginal_accuracy(self) -> dict:
        from cgflow.analysis.marginals import marginal_accuracy

        self._last_marginals = self.marginal_pmfs()
        if self.marginals.reference is None:
            return {"marginal_integration_error_kld": float(np.mean(self._last_marginals.integration_error_kld))}
        return marginal_accuracy(self.marginals.reference, self._last_marginals, tuple(self.system.cg_names))

    def uncertainty(self, mean: np.ndarray, std: np.ndarray) -> dict:
        """The ensemble's own error bar, no reference needed: ``boltzmann_std_kT`` = sum_b p(b) sigma(b)
        with p from the ensemble mean; ``boltzmann_std_heldout_kT`` the same times the held-out factor k
        of :meth:`PMFEnsemble._calibrate` (an upper bound: the label noise it must subtract is hard to
        estimate, see docs/results.md).  With a reference also ``boltzmann_abs_err_kT`` = sum_b p(b)
        |F(b) - F_ref(b) - c| (c the p-weighted mean offset): the actual error it predicts."""
        p = probabilities_from_pmf(mean)
        k = float(self.ensemble.std_scale)
        out = {"boltzmann_std_kT": float(np.sum(p * std)), "boltzmann_std_heldout_kT": k * float(np.sum(p * std))}
        if self.reference is not None:
            ref = self.reference.prob
            ok = ref > 0
            with np.errstate(divide="ignore"):
                err = (mean - (-np.log(np.where(ok, ref, 1.0))))[ok]
            w = p[ok] / p[ok].sum()
            out["boltzmann_abs_err_kT"] = float(np.sum(w * np.abs(err - np.sum(w * err))))
        return out

    @torch.no_grad()
    def _set_old_priority(self, labels: dict) -> None:
        """Revisit probabilities of the dataset's points (lever: spend draws where the KLD is decided):
        mix / N + (1 - mix) * p(s) se(s)^2 / sum, p(s) ~ exp(-F_mean(s)); unlabelled points get the
        largest se."""
        ds, mix = self.dataset, self.cfg.by_energy.old_priority_mix
        f = self.ensemble.mean_and_std(ds.points.to(self.device))[0].cpu().double()
        boltz = torch.exp(-(f - f.min()).clamp_max(700))
        se = torch.full((len(ds),), math.nan, dtype=torch.float64)
        if "pmf_se_kT" in labels:
            se[labels["index"]] = labels["pmf_se_kT"].cpu().double()
        fill = float(se[torch.isfinite(se)].max()) if bool(torch.isfinite(se).any()) else 1.0
        se = torch.where(torch.isfinite(se), se, torch.full_like(se, fill))
        need = boltz * se**2
        need = need / need.sum() if float(need.sum()) > 0 else torch.full_like(need, 1.0 / len(ds))
        ds.old_priority = mix / len(ds) + (1 - mix) * need

    def _perturbation(self, labels: dict):
        """Label noise for the parametric bootstrap of the ensemble (None unless ensemble.perturb_labels):
        each label's standard error times the empirical factor by which the formula understates it."""
        if not self.cfg.ensemble.perturb_labels or "pmf_se_kT" not in labels:
            return None
        sd_v = labels["pmf_se_kT"] * labels["se_factor"]
        sd_g = labels["mean_force_se"] * labels["mean_force_se_factor"] if "mean_force_se" in labels else None
        return sd_v, sd_g

    def _fit_ensemble(self, labels: dict) -> dict:
        e, it = self.cfg.ensemble, self.state.iteration
        warm = e.warm_epochs is not None and bool(self.ensemble.fitted)
        se = e.weighting == "standard_error" and "pmf_se_kT" in labels
        dev = self.device
        return self.ensemble.fit(
            labels["points"].to(dev), labels["pmf_kT"].to(dev), epochs=e.warm_epochs if warm else e.epochs,
            batch_size=e.batch_size, lr=e.lr, split=e.split, train_fraction=e.train_fraction, rng=self.rng,
            progress=self.cfg.progress, warm_start=warm, patience=e.patience,
            grads=labels.get("mean_force"), gradient_weight=e.gradient_weight,
            value_se=labels["pmf_se_kT"] if se else None,
            grad_se=labels.get("mean_force_se") if se else None, se_floor=(e.se_floor_kT, e.se_floor_grad),
            value_noise2=labels.get("pmf_noise2_kT2"), perturb_sd=self._perturbation(labels),
            member_keys=labels["index"] if e.stable_membership else None)

    def _mc_starts(self) -> torch.Tensor:
        sc = self.cfg.sampler
        if self.state.mc_start is not None:
            base = self.state.mc_start[torch.as_tensor(self.rng.permutation(self.state.mc_start.shape[0]))]
        else:
            start = sc.start if sc.start is not None else self.system.default_mc_start
            if len(start) != self.system.cg_dim:
                raise ValueError(f"sampler.start has {len(start)} values, the CG space has {self.system.cg_dim}")
            base = torch.tensor([start], dtype=torch.float64)
        reps = math.ceil(sc.n_chains / base.shape[0])
        return base.repeat(reps, 1)[:sc.n_chains]

    def step(self) -> dict:
        """Run one AL iteration; returns its metrics row.

        Wall-time columns (seconds, this iteration): ``t_flow_s`` training by energy plus the test loss,
        **including** ``t_energy_s``, the time of the energy evaluations within it (training and test
        loss; forward evaluation only); ``t_labels_s`` the PMF labels; ``t_ensemble_s`` the ensemble
        fit; ``t_mc_s`` the ensemble on the grid, metrics and acquisition (MC).  ``t_flow_s +
        t_labels_s + t_ensemble_s + t_mc_s`` is the iteration's time up to saving; ``wall_time_s`` is
        cumulative over the run, initialization and saving included.
        """
        cfg, st = self.cfg, self.state
        it = st.iteration
        times = {}
        t0 = time.perf_counter()
        row = {"iteration": it}
        energy_timer = EnergyTimer()
        row.update(self._train_flow(it, energy_timer))
        if cfg.by_energy.test_loss:
            row["flow_test_loss"] = test_loss(self.flow, self.system, self.dataset, st.counter, energy_timer)
        t_energy = energy_timer.seconds()  # reads the CUDA events: one synchronization, inside t_flow_s
        times["t_flow_s"] = time.perf_counter() - t0
        times["t_energy_s"] = t_energy  # part of t_flow_s

        t1 = time.perf_counter()
        labels = self.label_set()
        pts = labels["points"]
        times["t_labels_s"] = time.perf_counter() - t1
        label_row = {}
        if "ess" in labels:
            label_row = {"label_ess_median": float(labels["ess"].median()), "label_ess_min": float(labels["ess"].min()),
                         "label_se_factor": labels["se_factor"],
                         "label_se_median_kT": float(labels["pmf_se_kT"].median()),
                         "n_draws_pooled": int(labels["n_draws"].sum())}

        t1 = time.perf_counter()
        fit = self._fit_ensemble(labels)
        times["t_ensemble_s"] = time.perf_counter() - t1
        if cfg.by_energy.old_selection == "boltzmann_se":
            self._set_old_priority(labels)

        t2 = time.perf_counter()
        mean, std = self.pmf_on_grid()
        acc = self.accuracy(mean, std)
        acc.update(self.uncertainty(mean, std))
        n_added, mc_row = 0, {}
        if cfg.mode == "grid":
            if row["flow_epochs"] >= cfg.grid.epochs:
                st.done, st.stop_reason = True, f"grid conditioning finished its {cfg.grid.epochs} epochs"
        else:
            n_added, mc_row = self._acquire(it, mean, std)
        times["t_mc_s"] = time.perf_counter() - t2
        kld = acc.get("forward_kld")
        if not st.done and cfg.stopping.kld_threshold is not None and kld is not None \
                and kld < cfg.stopping.kld_threshold:
            st.done, st.stop_reason = True, f"forward KLD {kld:.3g} < {cfg.stopping.kld_threshold:g}"
        b_std = acc.get("boltzmann_std_kT")
        if not st.done and cfg.stopping.std_target_kT is not None and b_std < cfg.stopping.std_target_kT:
            st.done, st.stop_reason = True, (f"Boltzmann-weighted ensemble std {b_std:.3g} kT < "
                                             f"{cfg.stopping.std_target_kT:g} kT")
        if not st.done and it >= cfg.stopping.max_iterations:
            st.done, st.stop_reason = True, f"reached stopping.max_iterations = {cfg.stopping.max_iterations}"

        st.wall_time_s += time.perf_counter() - t0
        row.update({
            "n_train_points_labelled": int(pts.shape[0]), "n_points_total": len(self.dataset),
            "n_points_added": n_added, **{f"evals_{k}": v for k, v in st.counter.as_dict().items()},
            **label_row, **acc, **fit, **mc_row,
            **times, "wall_time_s": st.wall_time_s,
        })
        row["warnings"] = "; ".join(iteration_warnings(self, fit, labels, mean))  # cgflow.learning.diagnostics
        st.rows.append(row)
        st.iteration += 1
        # PMF files first: a run killed before the checkpoint redoes this iteration and rewrites them
        self._save_pmf(mean, std)
        marg = {k: v for k, v in self._marginal_arrays().items() if k != "marginal_reference_prob"}
        save_snapshot(self.run_dir, it, self.edges, mean, st.counter.total, label=f"iteration {it}",
                      wall_time_s=st.wall_time_s, marginals=marg)
        self._save_checkpoint()
        for r in self.reporters:
            r.on_iteration(self, row)
        return row

    def _grid_score_candidates(self, mean: np.ndarray, std: np.ndarray) -> torch.Tensor:
        """n_find points: bins drawn with probability ~ exp(-beta F) sigma^2 (no repeats), uniform inside."""
        sc = self.cfg.sampler
        f, sig = mean.reshape(-1), std.reshape(-1)
        score = np.exp(-sc.beta * (f - np.nanmin(f))) * sig**2
        score = np.where(np.isfinite(score), score, 0.0)
        n = min(sc.n_find, int((score > 0).sum()))
        if n == 0:
            return torch.zeros(0, self.system.cg_dim, dtype=torch.float64)
        bins = self.rng.choice(score.size, size=n, replace=False, p=score / score.sum())
        idx = np.unravel_index(bins, mean.shape)
        lo = np.stack([e[i] for e, i in zip(self.edges, idx)], 1)
        hi = np.stack([e[i + 1] for e, i in zip(self.edges, idx)], 1)
        return torch.as_tensor(lo + self.rng.random(lo.shape) * (hi - lo), dtype=torch.float64)

    def _acquire(self, it: int, mean: np.ndarray, std: np.ndarray) -> tuple[int, dict]:
        """MC on the ensemble mean (or a draw on the grid), diversity selection and spreading; returns
        (points added, metrics)."""
        cfg, st, sc = self.cfg, self.state, self.cfg.sampler
        a = cfg.acquisition
        if sc.kind == "grid_score":
            pts, row = self._grid_score_candidates(mean, std), {}
            if pts.shape[0] < a.n_select:
                st.done, st.stop_reason = True, "the acquisition score is zero everywhere"
                return 0, row
        else:
            pts, row = self._mc_candidates()
            if pts is None:
                return 0, row
        centers = pts[farthest_point_selection(pts, a.n_select, self.system.cg_periodic, self.rng)]
        new = spread_uniform_ball(centers, a.spread_points, a.spread_radius, self.system.cg_periodic, self.rng)
        self.dataset.add(new, added_in=it, test_fraction=a.test_fraction, rng=self.rng)
        st.mc_start = centers
        return new.shape[0], row

    def _mc_candidates(self) -> tuple[torch.Tensor | None, dict]:
        """MC chains on the ensemble mean (method spec 2.9); (None, row) and the run stops if exhausted."""
        cfg, st, sc = self.cfg, self.state, self.cfg.sampler
        mc = find_high_error_points(self.ensemble.mean_and_std, self._mc_starts().to(self.device),
                                    periodic=self.system.cg_periodic, step_size=sc.step_size,
                                    threshold=sc.threshold, n_find=sc.n_find, min_steps=sc.min_steps,
                                    max_steps=sc.max_steps,
                                    domain=self.system.cg_domain if sc.confine_to_domain else None, beta=sc.beta,
                                    progress=cfg.progress)
        row = {"mc_steps": mc.steps, "mc_acceptance": mc.acceptance}
        if mc.exhausted:
            st.done, st.stop_reason = True, f"MC found no point with std > {sc.threshold} kT in {sc.max_steps} steps"
            return None, row
        return mc.points.cpu(), row

    def _save_pmf(self, mean, std) -> None:
        extra = {}
        if self.reference is not None:
            extra["reference_prob"] = self.reference.prob
        rd.atomic_savez(self.run_dir / rd.PMF, **{f"edges_{i}": e for i, e in enumerate(self.edges)},
                        pmf_kT=mean - np.nanmin(mean), std_kT=std, prob=probabilities_from_pmf(mean),
                        points=self.dataset.points.numpy(), points_added_in=self.dataset.added_in.numpy(),
                        points_is_train=self.dataset.is_train.numpy(), cg_names=np.array(self.system.cg_names),
                        cg_periodic=np.array(self.system.cg_periodic), **extra, **self._marginal_arrays())

    def _marginal_arrays(self) -> dict:
        """pmf.npz entries of the 2-D marginals (d > 2): marginal_pairs (K, 2), marginal_pmf_kT
        (K, n, n), marginal_edges_i per CG dimension, marginal_reference_prob (K, n, n) if any."""
        marg = getattr(self, "_last_marginals", None)
        if self.marginals is None or marg is None:
            return {}
        out = {"marginal_pairs": np.array(marg.pairs, dtype=np.int64), "marginal_pmf_kT": np.stack(marg.pmf_kT),
               **{f"marginal_edges_{i}": e for i, e in enumerate(self.marginals.edges)}}
        if self.marginals.reference is not None:
            out["marginal_reference_prob"] = np.stack([self.marginals.reference.prob_of(p) for p in marg.pairs])
        return out

    def run(self) -> RunState:
        while not self.state.done:
            self.step()
        for r in self.reporters:
            r.on_finish(self)
        return self.state
