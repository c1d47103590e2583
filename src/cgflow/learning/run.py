"""The active-learning loop (docs/method.md, "Active learning"): train the flow by energy at the CG
points of the dataset, fit the PMF ensemble on importance-sampling labels, find new CG points where
the ensemble disagrees by Monte Carlo on its mean, add them, repeat.

One iteration (:meth:`ActiveLearningRun.step`) runs named phases, each with typed inputs and
outputs: train flow -> label (:mod:`~cgflow.learning.labelling`) -> fit -> measure
(:mod:`~cgflow.learning.measure`) -> acquire -> decide (:mod:`~cgflow.learning.stopping`) -> save
(:mod:`~cgflow.learning.checkpoint`, pmf.npz, the snapshot).  docs/architecture.md draws it.

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

from cgflow.analysis.metrics import LOW_FREE_ENERGY_KT, probabilities_from_pmf
from cgflow.config import RunConfig, check_against_system, dump_config, validate_config
from cgflow.core import run_directory as rd
from cgflow.core.evaluation_counter import EvaluationCounter
from cgflow.core.features import CGFeatures
from cgflow.core.progress import bars_disabled
from cgflow.core.system import System, with_defaults
from cgflow.flows import ConditionalAffineFlow, ConditionalFlow
from cgflow.learning.checkpoint import Checkpoint
from cgflow.learning.dataset import ALDataset
from cgflow.learning.diagnostics import iteration_warnings
from cgflow.learning.labelling import LabelSet, compute_label_set
from cgflow.learning.measure import Measure, Measurement
from cgflow.learning.stopping import SCORE_ZERO, Stopping, StopReason, grid_finished, mc_exhausted
from cgflow.learning.training import EnergyTimer, test_loss, train_by_energy_epoch, train_by_example
from cgflow.pmf.ensemble import FitOptions, PMFEnsemble
from cgflow.pmf.error_bar import ErrorBar, ErrorBarInputs, actual_error, error_bar_per_bin, predicted_abs_error
from cgflow.pmf.history import save_snapshot
from cgflow.sampling.acquisition import (
    block_resampled_points,
    farthest_point_selection,
    reflect_into_domain,
    spread_uniform_ball,
)
from cgflow.sampling.mc import find_high_error_points
from cgflow.systems import build_system


class Reporter(Protocol):
    """Receives progress; the run's files do not depend on reporters."""

    def on_iteration(self, run: ActiveLearningRun, row: dict) -> None: ...

    def on_finish(self, run: ActiveLearningRun) -> None: ...


@dataclass
class RunState:
    iteration: int = 1
    counter: EvaluationCounter = field(default_factory=EvaluationCounter)
    mc_start: torch.Tensor | None = None
    rows: list[dict] = field(default_factory=list)
    done: bool = False
    stop_reason: str = ""
    stop_kind: str = ""  # a cgflow.learning.stopping kind ("" while running)

    def stop(self, reason: StopReason) -> None:
        self.done, self.stop_reason, self.stop_kind = True, reason.message, reason.kind
    wall_time_s: float = 0.0


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


class ActiveLearningRun:
    """One run, tied to a run directory.

    Args:
        cfg: validated configuration.
        run_dir: output directory; must not exist unless ``resume``.
        resume: continue from ``run_dir/checkpoint.pt`` (the config saved there is used; a
            different ``cfg`` is refused; None takes the saved one).
        reporters: progress observers. None by default: from Python a run prints no per-iteration lines and
            writes no plots; ``[ConsoleReporter(), PlotReporter()]`` (cgflow.learning.reporters,
            cgflow.analysis.plotting) does what ``cgflow run`` does.
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
        else:
            rd.require_new_run_directory(self.run_dir, "use --resume to continue it or choose another --out")
        self.cfg = cfg
        self.device = resolve_device(cfg.device)
        torch.manual_seed(cfg.seed)
        self.rng = np.random.default_rng(cfg.seed)
        self.system = system if system is not None else build_system(cfg.system, device=self.device)
        if not resume:  # system-dependent settings (MC start, step size, radii, grid size): before anything is written
            check_against_system(cfg, self.system)
        self.measure = Measure.for_system(self.system, cfg.metrics)  # full grid (d <= 2) or marginals (d > 2)
        self.last_measurement: Measurement | None = None
        self.last_labels: LabelSet | None = None  # the label phase's output of the latest iteration
        self.last_error_bar: ErrorBar | None = None  # the measure phase's per-bin error bar
        self.state = RunState()
        self.dataset = ALDataset(self.system.cg_dim, cfg.by_energy.copies_per_point)
        features = CGFeatures(self.system.cg_periodic)
        self.flow = build_flow(cfg, self.system, features).to(self.device)
        self.optimizer = torch.optim.Adam(self.flow.parameters(), lr=cfg.by_example.lr)
        e = cfg.ensemble
        self.ensemble = PMFEnsemble(CGFeatures(self.system.cg_periodic), e.n_models, e.hidden, e.activation,
                                    e.init, dtype=getattr(torch, e.dtype)).to(self.device)
        if resume:
            self._load_checkpoint()
        else:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            rd.atomic_write_text(self.run_dir / rd.CONFIG, dump_config(cfg))
            self._initialize()
            self._save_checkpoint()

    # --- what the measure holds (named for the evaluation grid; see cgflow.learning.measure) --------
    @property
    def edges(self) -> list[np.ndarray]:
        """Bin edges of the grid the ensemble is evaluated on (coarse for d > 2)."""
        return self.measure.edges

    @property
    def reference(self):
        """The full-grid reference on :attr:`edges`, or None (always None for d > 2)."""
        return self.measure.reference

    @property
    def grid(self) -> torch.Tensor:
        """(n_bins, cg_dim) float64 centres of :attr:`edges`."""
        return self.measure.grid

    @property
    def marginals(self):
        """The marginal setup (d > 2), else None."""
        return getattr(self.measure, "setup", None)

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
        self.dataset.add(self.in_domain(seed_points), added_in=0, test_fraction=self.cfg.acquisition.test_fraction,
                         rng=self.rng)
        self.state.wall_time_s += time.perf_counter() - t0

    def in_domain(self, points: torch.Tensor) -> torch.Tensor:
        """CG points folded into the system's cg_domain (:func:`~cgflow.sampling.acquisition.reflect_into_domain`):
        every point that reaches the dataset (seeds, spreading) lies inside it."""
        return reflect_into_domain(points.to(torch.float64).cpu(), self.system.cg_domain, self.system.cg_periodic)

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
        Checkpoint(iteration=st.iteration, counter=st.counter.as_dict(), mc_start=st.mc_start, rows=st.rows,
                   done=st.done, stop_reason=st.stop_reason, stop_kind=st.stop_kind, wall_time_s=st.wall_time_s,
                   flow=self.flow.state_dict(), optimizer=self.optimizer.state_dict(),
                   ensemble=self.ensemble.state_dict(), dataset=self.dataset.state_dict(),
                   torch_rng=torch.get_rng_state(), numpy_rng=self.rng.bit_generator.state,
                   ).save(self.run_dir / rd.CHECKPOINT)
        rd.write_metrics_csv(self.run_dir / rd.METRICS, st.rows)

    def _load_checkpoint(self) -> None:
        ck = Checkpoint.load(self.run_dir / rd.CHECKPOINT, map_location=self.device)
        saved_dim = int(ck.dataset["points"].shape[1])
        if saved_dim != self.system.cg_dim:
            raise rd.RunDirectoryError(f"cannot resume {self.run_dir}: its CG points have {saved_dim} dimension(s), "
                                       f"the system {self.system.name!r} has cg_dim {self.system.cg_dim}")
        self.state = RunState(iteration=ck.iteration, counter=EvaluationCounter.from_dict(ck.counter),
                              mc_start=ck.mc_start, rows=ck.rows, done=ck.done, stop_reason=ck.stop_reason,
                              stop_kind=ck.stop_kind, wall_time_s=ck.wall_time_s)
        self.flow.load_state_dict(ck.flow)
        self.optimizer.load_state_dict(ck.optimizer)
        try:
            self.ensemble.load_state_dict(ck.ensemble)
        except RuntimeError as err:
            raise rd.RunDirectoryError(f"cannot resume {self.run_dir}: the checkpoint's ensemble does not match "
                                       f"({str(err).splitlines()[0]})") from None
        self.dataset = ALDataset.from_state_dict(ck.dataset)
        torch.set_rng_state(ck.torch_rng)
        self.rng.bit_generator.state = ck.numpy_rng

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
                   leave=False, disable=bars_disabled(self.cfg.progress), mininterval=0.5)
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
        return lab.points, lab.pmf_kT

    def label_set(self) -> LabelSet:
        """The label phase: the labels of the train CG points with >= 1 evaluated draw, per ``cfg.labels``."""
        return compute_label_set(self.dataset, self.cfg.labels)

    @torch.no_grad()
    def pmf_on_grid(self) -> tuple[np.ndarray, np.ndarray]:
        """Ensemble mean and std (kT) at the evaluation-grid bin centres, shaped like the bins."""
        shape = tuple(len(e) - 1 for e in self.edges)
        mean, std = self.ensemble.mean_and_std(self.grid.to(self.device))
        return mean.cpu().numpy().reshape(shape), std.cpu().numpy().reshape(shape)

    def accuracy(self, mean: np.ndarray, std: np.ndarray | None = None) -> dict:
        """The measure phase: forward/reverse KLD and the named PMF errors of
        :func:`cgflow.analysis.metrics.pmf_errors` (weighted RMSE, unweighted RMSE and max error where
        F_ref < 10 kT, ensemble std beside them) of ``mean`` on the evaluation grid; for d > 2 those of
        the 2-D marginals of the ensemble mean, averaged over the CG pairs (``mean``/``std`` unused).
        The measurement is kept in :attr:`last_measurement` for pmf.npz and the snapshot."""
        self.last_measurement = self.measure.measure(mean, std, self)
        return self.last_measurement.accuracy

    def marginal_pmfs(self):
        """The 2-D marginals of the ensemble mean (d > 2; :class:`~cgflow.analysis.marginals.MarginalPMFs`)."""
        return self.measure.marginal_pmfs(self)

    @torch.no_grad()
    def error_bar(self, mean: np.ndarray, std: np.ndarray) -> ErrorBar:
        """The per-bin error bar (:mod:`cgflow.pmf.error_bar`) of the ensemble mean on the evaluation
        grid: ensemble std, label noise carried through the fit, distance to labelled data."""
        lab = self.last_labels if self.last_labels is not None else self.label_set()
        at_labels = self.ensemble.mean_and_std(lab.points.to(self.device))[0].cpu().double()
        inputs = ErrorBarInputs(
            grid=self.grid.numpy(), grid_shape=tuple(len(e) - 1 for e in self.edges), edges=self.edges,
            mean_kT=mean.reshape(-1), std_kT=std.reshape(-1), label_points=lab.points.numpy(),
            label_residual2_kT2=((at_labels - lab.pmf_kT.double()) ** 2).numpy(),
            periodic=np.asarray(self.system.cg_periodic, bool), domain=np.asarray(self.system.cg_domain, float))
        return error_bar_per_bin(inputs)

    def uncertainty(self, mean: np.ndarray, std: np.ndarray) -> dict:
        """The run's own error bar, no reference needed (kept in :attr:`last_error_bar`):
        ``error_bar_kT`` = the Boltzmann-weighted (model weights) absolute error that the per-bin error
        bar predicts (:func:`cgflow.pmf.error_bar.predicted_abs_error`); ``error_bar_max_low_F_kT`` its
        largest per-bin value where F_mean - min F_mean < LOW_FREE_ENERGY_KT (10 kT); the former
        figures ``boltzmann_std_kT`` = sum_b p(b) sigma_ens(b) and ``boltzmann_std_heldout_kT`` (times
        the held-out factor). With a reference also ``boltzmann_abs_err_kT`` (model weights, as before)
        and the calibration figures of :func:`cgflow.pmf.error_bar.actual_error` (reference weights:
        ``abs_err_ref_weighted_kT``, ``coverage_1sigma``, ``coverage_2sigma``)."""
        p = probabilities_from_pmf(mean)
        k = float(self.ensemble.std_scale)
        eb = self.last_error_bar = self.error_bar(mean, std)
        f = mean.reshape(-1)
        low = (f - np.nanmin(f)) < LOW_FREE_ENERGY_KT
        out = {"error_bar_kT": predicted_abs_error(f, eb.error_bar_kT),
               "error_bar_max_low_F_kT": float(eb.error_bar_kT[low].max()) if low.any() else math.nan,
               "boltzmann_std_kT": float(np.sum(p * std)), "boltzmann_std_heldout_kT": k * float(np.sum(p * std))}
        if self.reference is not None:
            ref = self.reference.prob
            ok = ref > 0
            with np.errstate(divide="ignore"):
                err = (mean - (-np.log(np.where(ok, ref, 1.0))))[ok]
            w = p[ok] / p[ok].sum()
            out["boltzmann_abs_err_kT"] = float(np.sum(w * np.abs(err - np.sum(w * err))))
            out.update(actual_error(mean, ref, eb.error_bar_kT))
        return out

    @torch.no_grad()
    def _set_old_priority(self, labels: LabelSet) -> None:
        """Revisit probabilities of the dataset's points (lever: spend draws where the KLD is decided):
        mix / N + (1 - mix) * p(s) se(s)^2 / sum, p(s) ~ exp(-F_mean(s)); unlabelled points get the
        largest se."""
        ds, mix = self.dataset, self.cfg.by_energy.old_priority_mix
        f = self.ensemble.mean_and_std(ds.points.to(self.device))[0].cpu().double()
        boltz = torch.exp(-(f - f.min()).clamp_max(700))
        se = torch.full((len(ds),), math.nan, dtype=torch.float64)
        if labels.has_errors:
            se[labels.index] = labels.pmf_se_kT.cpu().double()
        fill = float(se[torch.isfinite(se)].max()) if bool(torch.isfinite(se).any()) else 1.0
        se = torch.where(torch.isfinite(se), se, torch.full_like(se, fill))
        need = boltz * se**2
        need = need / need.sum() if float(need.sum()) > 0 else torch.full_like(need, 1.0 / len(ds))
        ds.old_priority = mix / len(ds) + (1 - mix) * need

    def _perturbation(self, labels: LabelSet):
        """Label noise for the parametric bootstrap of the ensemble (None unless ensemble.perturb_labels):
        each label's standard error times the empirical factor by which the formula understates it."""
        if not self.cfg.ensemble.perturb_labels or not labels.has_errors:
            return None
        sd_v = labels.pmf_se_kT * labels.se_factor
        sd_g = labels.mean_force_se * labels.mean_force_se_factor if labels.mean_force_se is not None else None
        return sd_v, sd_g

    def _fit_ensemble(self, labels: LabelSet) -> dict:
        """The fit phase: the ensemble on the labels (warm-started after the first fit if configured)."""
        e = self.cfg.ensemble
        warm = e.warm_epochs is not None and bool(self.ensemble.fitted)
        se = e.weighting == "standard_error" and labels.has_errors
        dev = self.device
        options = FitOptions(epochs=e.warm_epochs if warm else e.epochs, batch_size=e.batch_size, lr=e.lr,
                             split=e.split, train_fraction=e.train_fraction, progress=self.cfg.progress,
                             warm_start=warm, patience=e.patience, gradient_weight=e.gradient_weight,
                             se_floor=(e.se_floor_kT, e.se_floor_grad))
        return self.ensemble.fit(
            labels.points.to(dev), labels.pmf_kT.to(dev), options, rng=self.rng, grads=labels.mean_force,
            value_se=labels.pmf_se_kT if se else None, grad_se=labels.mean_force_se if se else None,
            value_noise2=labels.pmf_noise2_kT2, perturb_sd=self._perturbation(labels),
            member_keys=labels.index if e.stable_membership else None)

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
        self.last_labels = labels
        times["t_labels_s"] = time.perf_counter() - t1

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
                st.stop(grid_finished(cfg.grid.epochs))
        else:
            n_added, mc_row = self._acquire(it, mean, std)
        times["t_mc_s"] = time.perf_counter() - t2
        if not st.done:  # the decide phase
            reason = Stopping(cfg.stopping).check(it, acc)
            if reason is not None:
                st.stop(reason)
        final_points = getattr(cfg.metrics, "final_integration_points", None)
        if st.done and final_points and self.measure.marginal:  # the last figures, integrated more precisely
            t3 = time.perf_counter()
            self.last_measurement = self.measure.measure(mean, std, self, n_points=final_points)
            acc.update(self.last_measurement.accuracy)
            times["t_mc_s"] += time.perf_counter() - t3

        st.wall_time_s += time.perf_counter() - t0
        row.update({
            "n_train_points_labelled": int(labels.points.shape[0]), "n_points_total": len(self.dataset),
            "n_points_added": n_added, **{f"evals_{k}": v for k, v in st.counter.as_dict().items()},
            **labels.metrics_row(), **acc, **fit, **mc_row,
            **times, "wall_time_s": st.wall_time_s,
        })
        row["warnings"] = "; ".join(iteration_warnings(self, fit, labels, mean))  # cgflow.learning.diagnostics
        st.rows.append(row)
        st.iteration += 1
        self._save(it, mean, std)
        for r in self.reporters:
            r.on_iteration(self, row)
        return row

    def _save(self, it: int, mean: np.ndarray, std: np.ndarray) -> None:
        """The save phase.  PMF files first: a run killed before the checkpoint redoes this iteration
        and rewrites them."""
        st = self.state
        self._save_pmf(mean, std)
        marg = {k: v for k, v in self._marginal_arrays().items() if k != "marginal_reference_prob"}
        save_snapshot(self.run_dir, it, self.edges, mean, st.counter.total, label=f"iteration {it}",
                      wall_time_s=st.wall_time_s, marginals=marg)
        self._save_checkpoint()

    def add_points(self, points: torch.Tensor, *, evaluations: int = 0) -> int:
        """Add CG points (n, cg_dim) found outside the acquisition (e.g. frames of biased MD, ``cgflow refine``) to
        the latest iteration's points: the next training by energy draws at them first, and they are labelled and
        fitted like any other point.  ``evaluations``, the energies it cost to find them, are counted with the
        diagnostics.  Points outside the CG domain are dropped; saves the checkpoint.  Returns the number added."""
        pts = self.in_domain(torch.as_tensor(points, dtype=torch.float64).reshape(-1, self.system.cg_dim))
        if pts.shape[0]:
            self.dataset.add(pts, added_in=self.dataset.latest, test_fraction=self.cfg.acquisition.test_fraction,
                             rng=self.rng)
        self.state.counter.diagnostics += int(evaluations)
        self._save_checkpoint()
        return int(pts.shape[0])

    def _grid_score_candidates(self, mean: np.ndarray, std: np.ndarray) -> torch.Tensor:
        """n_find points: bins drawn with probability ~ exp(-beta F) sigma^2 (no repeats), uniform inside;
        ``sampler.block_find`` of them instead from the block pool (:meth:`_block_candidates`)."""
        sc = self.cfg.sampler
        f, sig = mean.reshape(-1), std.reshape(-1)
        score = np.exp(-sc.beta * (f - np.nanmin(f))) * sig**2
        score = np.where(np.isfinite(score), score, 0.0)
        from_blocks = self._block_candidates(float(np.nanmin(f))) if sc.block_find else torch.zeros(0, len(self.edges))
        n = min(sc.n_find - from_blocks.shape[0], int((score > 0).sum()))
        if n <= 0:
            return from_blocks.to(torch.float64)
        bins = self.rng.choice(score.size, size=n, replace=False, p=score / score.sum())
        idx = np.unravel_index(bins, mean.shape)
        lo = np.stack([e[i] for e, i in zip(self.edges, idx)], 1)
        hi = np.stack([e[i + 1] for e, i in zip(self.edges, idx)], 1)
        grid_pts = torch.as_tensor(lo + self.rng.random(lo.shape) * (hi - lo), dtype=torch.float64)
        return torch.cat([from_blocks.to(torch.float64), grid_pts])

    @torch.no_grad()
    def _block_candidates(self, f_min: float) -> torch.Tensor:
        """``sampler.block_find`` points drawn ~ exp(-beta (F - f_min)) sigma^2 (ensemble mean and std at the points,
        kT; no repeats) from ``sampler.block_pool`` block-resampled dataset points
        (:func:`~cgflow.sampling.acquisition.block_resampled_points`), (n, cg_dim)."""
        sc, ds = self.cfg.sampler, self.dataset
        f_pts = self.ensemble.mean_and_std(ds.points.to(self.device, self.grid.dtype))[0].cpu().double().numpy()
        pool = self.in_domain(block_resampled_points(ds.points, -sc.beta * f_pts, sc.block_pool, sc.block_size,
                                                     self.system.cg_domain, self.rng))
        f, sig = (t.cpu().double().numpy() for t in self.ensemble.mean_and_std(pool.to(self.device, self.grid.dtype)))
        score = np.exp(-sc.beta * np.clip(f - f_min, 0.0, None)) * sig**2
        score = np.where(np.isfinite(score), score, 0.0)
        n = min(sc.block_find, int((score > 0).sum()))
        if n == 0:
            return torch.zeros(0, self.system.cg_dim, dtype=torch.float64)
        return pool[torch.as_tensor(self.rng.choice(len(score), size=n, replace=False, p=score / score.sum()))]

    def _acquire(self, it: int, mean: np.ndarray, std: np.ndarray) -> tuple[int, dict]:
        """MC on the ensemble mean (or a draw on the grid), diversity selection and spreading; returns
        (points added, metrics)."""
        cfg, st, sc = self.cfg, self.state, self.cfg.sampler
        a = cfg.acquisition
        if sc.kind == "grid_score":
            pts, row = self._grid_score_candidates(mean, std), {}
            if pts.shape[0] < a.n_select:
                st.stop(SCORE_ZERO)
                return 0, row
        else:
            pts, row = self._mc_candidates()
            if pts is None:
                pts = self._unresolved_low_F_candidates(mean)
                if pts is None:
                    st.stop(mc_exhausted(sc.threshold, sc.max_steps))
                    return 0, row
                row["acquired_from_error_bar"] = int(pts.shape[0])
        pts = self.in_domain(pts)  # MC without confine_to_domain may end outside
        centers = pts[farthest_point_selection(pts, a.n_select, self.system.cg_periodic, self.rng)]
        new = self.in_domain(spread_uniform_ball(centers, a.spread_points, a.spread_radius, self.system.cg_periodic,
                                                 self.rng))
        self.dataset.add(new, added_in=it, test_fraction=a.test_fraction, rng=self.rng)
        st.mc_start = centers
        return new.shape[0], row

    def _mc_candidates(self) -> tuple[torch.Tensor | None, dict]:
        """MC chains on the ensemble mean (docs/method.md, active learning); (None, row) if exhausted
        (the caller then looks for unresolved low-F bins, or stops)."""
        cfg, sc = self.cfg, self.cfg.sampler
        mc = find_high_error_points(self.ensemble.mean_and_std, self._mc_starts().to(self.device),
                                    periodic=self.system.cg_periodic, step_size=sc.step_size,
                                    threshold=sc.threshold, n_find=sc.n_find, min_steps=sc.min_steps,
                                    max_steps=sc.max_steps,
                                    domain=self.system.cg_domain if sc.confine_to_domain else None, beta=sc.beta,
                                    progress=cfg.progress)
        row = {"mc_steps": mc.steps, "mc_acceptance": mc.acceptance}
        if mc.exhausted:
            return None, row
        return mc.points.cpu(), row

    def _unresolved_low_F_candidates(self, mean: np.ndarray) -> torch.Tensor | None:
        """When the MC finds no point of high ensemble std: uniform points in the bins where
        F_mean - min < LOW_FREE_ENERGY_KT and the per-bin error bar exceeds
        ``stopping.region_error_bar_kT`` (at most ``sampler.n_find`` bins, drawn ~ exp(-beta F)
        sigma^2), so that no run stops while such a region is left; None if there is none."""
        ceiling, eb = self.cfg.stopping.region_error_bar_kT, self.last_error_bar
        if ceiling is None or eb is None:
            return None
        f = mean.reshape(-1)
        bad = ((f - np.nanmin(f)) < LOW_FREE_ENERGY_KT) & (eb.error_bar_kT > ceiling)
        if not bad.any():
            return None
        score = np.where(bad, np.exp(-self.cfg.sampler.beta * (f - np.nanmin(f))) * eb.error_bar_kT**2, 0.0)
        n = min(max(self.cfg.sampler.n_find, self.cfg.acquisition.n_select), int(bad.sum()))
        bins = self.rng.choice(score.size, size=n, replace=False, p=score / score.sum())
        idx = np.unravel_index(bins, mean.shape)
        lo = np.stack([e[i] for e, i in zip(self.edges, idx)], 1)
        hi = np.stack([e[i + 1] for e, i in zip(self.edges, idx)], 1)
        return torch.as_tensor(lo + self.rng.random(lo.shape) * (hi - lo), dtype=torch.float64)

    def _save_pmf(self, mean, std) -> None:
        extra = {}
        if self.reference is not None:
            extra["reference_prob"] = self.reference.prob
        rd.atomic_savez(self.run_dir / rd.PMF, **{f"edges_{i}": e for i, e in enumerate(self.edges)},
                        pmf_kT=mean - np.nanmin(mean), std_kT=std, prob=probabilities_from_pmf(mean),
                        **self._error_bar_arrays(mean.shape),
                        points=self.dataset.points.numpy(), points_added_in=self.dataset.added_in.numpy(),
                        points_is_train=self.dataset.is_train.numpy(), cg_names=np.array(self.system.cg_names),
                        cg_periodic=np.array(self.system.cg_periodic), **extra, **self._marginal_arrays())

    def _error_bar_arrays(self, shape: tuple) -> dict:
        """pmf.npz entries of the per-bin error bar (kT, shaped like the bins) and its parts."""
        eb = self.last_error_bar
        if eb is None:
            return {}
        return {"error_bar_kT": eb.error_bar_kT.reshape(shape), "error_bar_label_noise_kT": eb.label_noise_kT.reshape(shape),
                "error_bar_extrapolation_kT": eb.extrapolation_kT.reshape(shape),
                "distance_to_labels": eb.distance_to_labels.reshape(shape)}

    def _marginal_arrays(self) -> dict:
        """pmf.npz entries of the 2-D marginals (d > 2; see :meth:`MarginalMeasure.pmf_arrays`)."""
        return self.measure.pmf_arrays(self.last_measurement)

    def run(self) -> RunState:
        while not self.state.done:
            self.step()
        for r in self.reporters:
            r.on_finish(self)
        return self.state
