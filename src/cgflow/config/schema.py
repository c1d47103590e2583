"""The run configuration as pydantic models: every section, key, type and default.

Unknown keys and wrong types are rejected with the offending key named
(:class:`ConfigError`).  ``--set key.sub=value`` overrides use the same dotted names.
"""

from __future__ import annotations

from typing import Annotated, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, model_validator

PositiveInt = Annotated[int, Field(gt=0)]
NonNegInt = Annotated[int, Field(ge=0)]
NonNegFloat = Annotated[float, Field(ge=0)]
PositiveFloat = Annotated[float, Field(gt=0)]
Fraction = Annotated[float, Field(ge=0, le=1)]


class ConfigError(ValueError):
    """A configuration problem, with a one-line message naming the key."""


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


# --- systems -----------------------------------------------------------------------------------
class MullerBrownConfig(Strict):
    name: Literal["muller-brown"] = "muller-brown"
    beta: PositiveFloat = 0.1
    domain: tuple[float, float] = (-2.5, 1.1)
    n_bins: PositiveInt = 100
    n_starting_points: PositiveInt = 100

    @model_validator(mode="after")
    def _domain(self):
        if not self.domain[0] < self.domain[1]:
            raise ValueError(f"domain must be (low, high) with low < high, got {self.domain}")
        return self


from cgflow.systems.molecules.config import MoleculeConfig  # noqa: E402
from cgflow.systems.python_factory import PythonSystemConfig  # noqa: E402

SystemConfig = Annotated[Union[MullerBrownConfig, MoleculeConfig, PythonSystemConfig], Field(discriminator="name")]


# --- method ------------------------------------------------------------------------------------
class FlowConfig(Strict):
    """affine: the Müller-Brown flow (MLPs with layer widths ``hidden`` and ``activation``);
    spline: RQ-spline coupling blocks for molecules (``n_blocks`` blocks, residual nets of width
    ``hidden[0]`` with ``n_res_blocks`` residual blocks, ``n_bins`` bins, linear tails at ``tail_bound``)."""

    kind: Literal["affine", "spline"] = "affine"
    hidden: list[PositiveInt] = [64, 64]
    activation: Literal["sigmoid", "relu", "tanh", "silu"] = "sigmoid"
    n_blocks: PositiveInt = 12
    n_res_blocks: PositiveInt = 1
    n_bins: Annotated[int, Field(ge=2)] = 8
    tail_bound: PositiveFloat = 5.0
    # how non-periodic CG inputs of the flow are standardized: with the starting data's mean/std
    # (reference code; far CG points then enter the network with large magnitude) or with the
    # mean/std of a uniform distribution over the CG domain
    context_standardization: Literal["starting_data", "domain"] = "domain"
    # the flow networks' dtype (spline flows); samples, log q, energies and labels stay float64
    dtype: Literal["float64", "float32"] = "float64"


class ByExampleConfig(Strict):
    """Forward-KL (maximum-likelihood) training on the starting data."""

    epochs: NonNegInt = 80
    batch_size: PositiveInt = 16
    lr: PositiveFloat = 5e-4


class ByEnergyConfig(Strict):
    """Reverse-KL training of the flow at the CG points of the dataset."""

    lr: PositiveFloat = 5e-3
    batch_size: PositiveInt = 8
    copies_per_point: PositiveInt = 30
    epochs_first: PositiveInt = 12
    epochs_later: PositiveInt = 7
    warmup_epochs_first: NonNegInt = 0
    warmup_epochs_later: NonNegInt = 0
    grad_clip_early: PositiveFloat = 20.0
    grad_clip_late: PositiveFloat = 20.0
    grad_clip_switch_epoch: NonNegInt = 0
    drop_top_k: NonNegInt = 0
    old_fraction: Fraction = 0.3
    # which older entries an epoch revisits: uniformly, or preferring points where more draws cut the
    # forward KLD most: probability ~ mix / N + (1 - mix) * exp(-F(s)) * se(s)^2 (ensemble mean F, label
    # standard error; needs labels.estimator pooled)
    old_selection: Literal["uniform", "boltzmann_se"] = "uniform"
    old_priority_mix: Fraction = 0.5
    test_loss: bool = True
    # after the warm-up: constant lr, or (grid mode) cosine decay to 0 over the remaining epochs
    lr_decay: Literal["none", "cosine"] = "none"


class LabelsConfig(Strict):
    """PMF labels of the train CG points.

    estimator: "latest" (each copy's latest draw, the reference code) or "pooled" (every draw of the
    run, weighted per iteration, see cgflow.pmf.pooled_labels); pool_rule / pool_power: the pooling
    weights; mean_forces: also estimate dF/ds from the same draws (needs estimator pooled)."""

    top_k_clip: NonNegInt = 0
    estimator: Literal["latest", "pooled"] = "latest"
    pool_rule: Literal["inverse_variance", "uniform"] = "inverse_variance"
    pool_power: PositiveFloat = 2.0
    mean_forces: bool = False
    # subtract the first-order log bias se^2 / 2 of -ln(mean weight) from pooled value labels
    bias_correction: bool = False


class EnsembleConfig(Strict):
    n_models: Annotated[int, Field(ge=2)] = 10
    hidden: list[PositiveInt] = [64, 64]
    activation: Literal["sigmoid", "relu", "tanh", "silu"] = "sigmoid"
    init: Literal["xavier", "random_scale"] = "xavier"
    split: Literal["fraction", "bagging"] = "fraction"
    train_fraction: Annotated[float, Field(gt=0, le=1)] = 0.8
    epochs: PositiveInt = 1000
    batch_size: PositiveInt = 256
    lr: PositiveFloat = 5e-4
    # Sobolev fit: weight of the mean-force residuals (needs labels.mean_forces); 0: values only
    gradient_weight: NonNegFloat = 0.0
    # residual weights: uniform, or 1 / (standard error^2 + floor^2) of each label
    weighting: Literal["uniform", "standard_error"] = "uniform"
    se_floor_kT: PositiveFloat = 0.05
    se_floor_grad: PositiveFloat = 0.5
    # continue from the previous iteration's networks with warm_epochs epochs (None: refit from scratch)
    warm_epochs: PositiveInt | None = None
    # stop a fit once its training loss has not improved by 0.1 % for this many epochs (None: all epochs)
    patience: PositiveInt | None = None
    # parametric bootstrap: each model fits the labels plus Gaussian noise of their (empirically
    # rescaled) standard errors, so the ensemble spread carries the label noise (needs pooled labels)
    perturb_labels: bool = False
    # split "fraction": a point belongs to the same models in every fit (by a hash of its dataset index),
    # so warm-started models stay diverse; False: a new random subset per model and fit
    stable_membership: bool = False


class SamplerConfig(Strict):
    """How new CG points are found.

    kind "mc" (the reference method): Monte Carlo chains on the ensemble mean at inverse temperature
    ``beta``, each stopping where the ensemble std exceeds ``threshold``; the run stops when none does
    within ``max_steps``.  kind "grid_score": draw ``n_find`` bins of the evaluation grid with
    probability ~ exp(-beta F_mean) sigma^2, the expected forward-KLD reduction of labelling there
    (Boltzmann-probable and uncertain), a uniform point inside each; for CG spaces whose metric grid
    fits in memory (d <= 3).  Both then go through farthest-point selection and spreading."""

    kind: Literal["mc", "grid_score"] = "mc"
    step_size: PositiveFloat = 0.1
    threshold: PositiveFloat = 0.4
    n_chains: PositiveInt = 50
    n_find: PositiveInt = 1
    min_steps: NonNegInt = 10
    max_steps: PositiveInt = 30000
    start: list[float] | None = None
    confine_to_domain: bool = False
    beta: PositiveFloat = 1.0


class AcquisitionConfig(Strict):
    # how many CG points of the starting data seed the dataset (a random subset; None: all)
    n_seed_points: PositiveInt | None = None
    # plus this many space-filling seed points over the whole CG domain (scrambled Sobol sequence):
    # regions the starting MD never visited get labels from the start, not only when MC reaches them
    n_space_filling_seed_points: NonNegInt = 0
    n_select: PositiveInt = 1
    spread_radius: PositiveFloat = 0.5
    spread_points: PositiveInt = 65
    test_fraction: Fraction = 0.2


class GridConfig(Strict):
    """Grid conditioning (mode: grid): train the flow on a fixed grid of CG points, no active learning."""

    points_per_dim: Annotated[int, Field(ge=2)] = 100
    epochs: PositiveInt = 100
    ensemble_every_epochs: PositiveInt = 10


class MetricsConfig(Strict):
    """How a CG space of more than two dimensions is measured (optional section; d <= 2 uses a full
    grid of the reference's bins, or 100 per dimension).  See :mod:`cgflow.analysis.marginals`."""

    # CG pairs whose 2-D marginals are measured and plotted: [[name, name], ...] (CG names or 0-based
    # indices); null: the reference's pairs, else every pair
    pairs: list[list[str | int]] | None = None
    n_bins: Annotated[int, Field(ge=4)] = 50  # marginal bins per dimension when there is no reference
    n_integration_points: Annotated[int, Field(ge=2)] = 256  # points over the other coordinates, per marginal
    # sobol: quasi-MC, uniform (best for a PMF spread over the space); importance: a defensive mixture of
    # uniform and kernels around the run's CG points (best where exp(-F) fills a small part of it, e.g. peptides)
    integration: Literal["sobol", "importance"] = "sobol"
    grid_points: Annotated[int, Field(ge=16)] = 100_000  # full coarse grid (acquisition score, error bar)


class StoppingConfig(Strict):
    """kld_threshold needs a reference (an oracle: for benchmarks); std_target_kT does not: stop when
    the ensemble's Boltzmann-weighted std sum_b p(b) sigma(b) (p from the ensemble mean) falls below it;
    error_bar_target_kT: stop when the run's error bar (``error_bar_kT``, the predicted Boltzmann-weighted
    absolute error, cgflow.pmf.error_bar) falls below it. Both are vetoed, and the MC-exhausted stop
    turns into acquisition there, while a bin with F - min F < 10 kT has a per-bin error bar above
    region_error_bar_kT (kT; null: no veto)."""

    kld_threshold: PositiveFloat | None = None
    std_target_kT: PositiveFloat | None = None
    error_bar_target_kT: PositiveFloat | None = None
    region_error_bar_kT: PositiveFloat | None = 1.0
    max_iterations: PositiveInt = 100


class RunConfig(Strict):
    """Everything a run needs; saved as config.yaml in the run directory."""

    system: SystemConfig = Field(default_factory=MullerBrownConfig)
    mode: Literal["active_learning", "grid"] = "active_learning"
    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    progress: bool = True
    flow: FlowConfig = Field(default_factory=FlowConfig)
    by_example: ByExampleConfig = Field(default_factory=ByExampleConfig)
    by_energy: ByEnergyConfig = Field(default_factory=ByEnergyConfig)
    labels: LabelsConfig = Field(default_factory=LabelsConfig)
    ensemble: EnsembleConfig = Field(default_factory=EnsembleConfig)
    sampler: SamplerConfig = Field(default_factory=SamplerConfig)
    acquisition: AcquisitionConfig = Field(default_factory=AcquisitionConfig)
    stopping: StoppingConfig = Field(default_factory=StoppingConfig)
    grid: GridConfig = Field(default_factory=GridConfig)
    metrics: MetricsConfig = Field(default_factory=MetricsConfig)

    @model_validator(mode="after")
    def _consistent(self):
        if self.acquisition.n_select > self.sampler.n_find:
            raise ValueError(f"acquisition.n_select ({self.acquisition.n_select}) must be <= "
                             f"sampler.n_find ({self.sampler.n_find})")
        if self.by_energy.old_selection != "uniform" and self.labels.estimator != "pooled":
            raise ValueError("by_energy.old_selection boltzmann_se needs labels.estimator: pooled")
        if self.labels.mean_forces and self.labels.estimator != "pooled":
            raise ValueError("labels.mean_forces needs labels.estimator: pooled")
        if self.ensemble.gradient_weight > 0 and not self.labels.mean_forces:
            raise ValueError("ensemble.gradient_weight > 0 needs labels.mean_forces: true")
        if self.sampler.n_find > self.sampler.n_chains:
            raise ValueError(f"sampler.n_find ({self.sampler.n_find}) must be <= sampler.n_chains "
                             f"({self.sampler.n_chains})")
        return self
