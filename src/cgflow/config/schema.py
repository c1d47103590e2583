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
# Every key carries a ``description`` with its unit (``cgflow presets NAME --describe`` prints them;
# tests/test_config_descriptions.py checks that none is missing).  "CG units": the units of the CG
# coordinates (radians for dihedrals; the Müller-Brown coordinate s = x - y in its own length units).
class MullerBrownConfig(Strict):
    name: Literal["muller-brown"] = Field(default="muller-brown", description="the system: the 2-D Müller-Brown "
                                          "potential with the CG coordinate s = x - y")
    beta: PositiveFloat = Field(default=0.1, description="inverse temperature of the potential (1 / Müller-Brown "
                                "energy units): the reduced energy is beta * U_MB, in kT")
    domain: tuple[float, float] = Field(default=(-2.5, 1.1), description="(low, high) range of s = x - y "
                                        "(Müller-Brown length units): the CG domain and the range of the metric grid")
    n_bins: PositiveInt = Field(default=100, description="bins of the metric grid over the domain (count)")
    n_starting_points: PositiveInt = Field(default=100, description="starting-data states from Metropolis MC at beta "
                                           "from minimum A (count)")

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

    kind: Literal["affine", "spline"] = Field(default="affine", description="flow family: affine (conditional affine "
                                              "map, Müller-Brown) or spline (RQ-spline coupling blocks, molecules)")
    hidden: list[PositiveInt] = Field(default=[64, 64], description="hidden layer widths of the flow networks (units "
                                      "per layer; spline: hidden[0] is the residual nets' width)")
    activation: Literal["sigmoid", "relu", "tanh", "silu"] = Field(
        default="sigmoid", description="activation of the affine flow's MLPs")
    n_blocks: PositiveInt = Field(default=12, description="spline flow: coupling blocks (count)")
    n_res_blocks: PositiveInt = Field(default=1, description="spline flow: residual blocks per coupling network "
                                      "(count)")
    n_bins: Annotated[int, Field(ge=2)] = Field(default=8, description="spline flow: spline bins per dimension (count)")
    tail_bound: PositiveFloat = Field(default=5.0, description="spline flow: half-width of the spline interval of "
                                      "non-periodic dimensions, linear tails outside (standardized units)")
    context_standardization: Literal["starting_data", "domain"] = Field(
        default="domain", description="how non-periodic CG inputs of the flow are standardized: with the starting "
        "data's mean/std (reference code; far CG points then enter the network with large magnitude) or with the "
        "mean/std of a uniform distribution over the CG domain")
    dtype: Literal["float64", "float32"] = Field(default="float64", description="the flow networks' dtype (spline "
                                                 "flows); samples, log q, energies and labels stay float64")


class ByExampleConfig(Strict):
    """Forward-KL (maximum-likelihood) training on the starting data."""

    epochs: NonNegInt = Field(default=80, description="passes over the starting data (count; 0: no training by "
                              "example)")
    batch_size: PositiveInt = Field(default=16, description="starting-data configurations per optimizer step (count)")
    lr: PositiveFloat = Field(default=5e-4, description="Adam learning rate (per step, dimensionless)")


class ByEnergyConfig(Strict):
    """Reverse-KL training of the flow at the CG points of the dataset."""

    lr: PositiveFloat = Field(default=5e-3, description="Adam learning rate after the warm-up (dimensionless)")
    batch_size: PositiveInt = Field(default=8, description="dataset entries (CG point, copy) per optimizer step, one "
                                    "flow draw and energy evaluation each (count)")
    copies_per_point: PositiveInt = Field(default=30, description="copies (slots for a draw) per CG point of the "
                                          "dataset (count)")
    epochs_first: PositiveInt = Field(default=12, description="epochs in the first active-learning iteration (count)")
    epochs_later: PositiveInt = Field(default=7, description="epochs in every later iteration (count)")
    warmup_epochs_first: NonNegInt = Field(default=0, description="linear learning-rate warm-up (e+1)/W over this "
                                           "many epochs of the first iteration (count; 0: none)")
    warmup_epochs_later: NonNegInt = Field(default=0, description="the same warm-up in every later iteration (count; "
                                           "0: none)")
    grad_clip_early: PositiveFloat = Field(default=20.0, description="gradient-norm clip for the first "
                                           "grad_clip_switch_epoch epochs of an iteration (L2 norm of the loss "
                                           "gradient, kT per parameter)")
    grad_clip_late: PositiveFloat = Field(default=20.0, description="gradient-norm clip for the later epochs of an "
                                          "iteration (same units)")
    grad_clip_switch_epoch: NonNegInt = Field(default=0, description="epoch of an iteration from which grad_clip_late "
                                              "applies (count)")
    drop_top_k: NonNegInt = Field(default=0, description="largest per-sample losses dropped from each batch (count)")
    old_fraction: Fraction = Field(default=0.3, description="an epoch adds this fraction x (entries of the latest "
                                   "iteration) of random older entries (fraction, 0-1)")
    old_selection: Literal["uniform", "boltzmann_se"] = Field(
        default="uniform", description="which older entries an epoch revisits: uniformly, or preferring points where "
        "more draws cut the forward KLD most: probability ~ mix / N + (1 - mix) * exp(-F(s)) * se(s)^2 (ensemble mean "
        "F, label standard error; needs labels.estimator pooled)")
    old_priority_mix: Fraction = Field(default=0.5, description="boltzmann_se: the uniform share `mix` of the revisit "
                                       "probability (fraction, 0-1)")
    test_loss: bool = Field(default=True, description="compute the reverse-KL loss at the test CG points once per "
                            "iteration (one draw each, counted as evals_diagnostics)")
    lr_decay: Literal["none", "cosine"] = Field(default="none", description="after the warm-up: constant lr, or (grid "
                                                "mode) cosine decay to 0 over the remaining epochs")


class LabelsConfig(Strict):
    """PMF labels of the train CG points.

    estimator: "latest" (each copy's latest draw, the reference code) or "pooled" (every draw of the
    run, weighted per iteration, see cgflow.pmf.pooled_labels); pool_rule / pool_power: the pooling
    weights; mean_forces: also estimate dF/ds from the same draws (needs estimator pooled)."""

    top_k_clip: NonNegInt = Field(default=0, description="set the k largest importance weights of a point to the k-th "
                                  "largest (count; 0 or 1: no clipping)")
    estimator: Literal["latest", "pooled"] = Field(default="latest", description="latest: each copy's latest draw "
                                                   "(the reference code); pooled: every draw of the run, weighted per "
                                                   "iteration (cgflow.pmf.pooled_labels)")
    pool_rule: Literal["inverse_variance", "uniform"] = Field(
        default="inverse_variance", description="pooled: iteration weights c_t = expm1(sigma_t^2)^-pool_power "
        "(sigma_t^2 the median within-iteration variance of log w) or c_t = 1")
    pool_power: PositiveFloat = Field(default=2.0, description="pooled, inverse_variance: the exponent of the "
                                      "iteration weights (dimensionless)")
    mean_forces: bool = Field(default=False, description="also estimate the mean force dF/ds (kT per CG unit) from "
                              "the same draws (needs estimator pooled)")
    bias_correction: bool = Field(default=False, description="subtract the first-order log bias se^2 / 2 (kT) of "
                                  "-ln(mean weight) from pooled value labels")


class EnsembleConfig(Strict):
    n_models: Annotated[int, Field(ge=2)] = Field(default=10, description="networks in the PMF ensemble (count)")
    hidden: list[PositiveInt] = Field(default=[64, 64], description="hidden layer widths of each network (units per "
                                      "layer)")
    activation: Literal["sigmoid", "relu", "tanh", "silu"] = Field(
        default="sigmoid", description="activation of the ensemble's networks")
    init: Literal["xavier", "random_scale"] = Field(default="xavier", description="weight initialization: "
                                                    "Xavier-uniform with zero biases, or N(0, sigma) with sigma ~ "
                                                    "U(0.1, 3) per layer and model")
    split: Literal["fraction", "bagging"] = Field(default="fraction", description="fraction: each model fits its own "
                                                  "random train_fraction of the labels; bagging: a common "
                                                  "train/held-out split and bootstrap resamples")
    train_fraction: Annotated[float, Field(gt=0, le=1)] = Field(
        default=0.8, description="share of the labels a model trains on (fraction, 0-1]")
    epochs: PositiveInt = Field(default=1000, description="epochs of a fit from scratch (count)")
    batch_size: PositiveInt = Field(default=256, description="labels per optimizer step (count; more than the labels: "
                                    "full batch)")
    lr: PositiveFloat = Field(default=5e-4, description="Adam learning rate (dimensionless)")
    gradient_weight: NonNegFloat = Field(default=0.0, description="Sobolev fit: weight of the mean-force residuals "
                                         "(lambda in loss = values^2 + lambda |dF/ds residual|^2, CG units^2; needs "
                                         "labels.mean_forces); 0: values only")
    weighting: Literal["uniform", "standard_error"] = Field(default="uniform", description="residual weights: "
                                                            "uniform, or 1 / (standard error^2 + floor^2) of each "
                                                            "label")
    se_floor_kT: PositiveFloat = Field(default=0.05, description="standard_error weighting: floor added to the value "
                                       "labels' standard errors (kT)")
    se_floor_grad: PositiveFloat = Field(default=0.5, description="standard_error weighting: floor added to the "
                                         "mean-force labels' standard errors (kT per CG unit)")
    warm_epochs: PositiveInt | None = Field(default=None, description="continue from the previous iteration's "
                                            "networks with this many epochs (count; null: refit from scratch)")
    patience: PositiveInt | None = Field(default=None, description="stop a fit once its training loss has not "
                                         "improved by 0.1 % for this many epochs (count; null: all epochs)")
    perturb_labels: bool = Field(default=False, description="parametric bootstrap: each model fits the labels plus "
                                 "Gaussian noise of their (empirically rescaled) standard errors, so the ensemble "
                                 "spread carries the label noise (needs pooled labels)")
    dtype: Literal["float64", "float32"] = Field(default="float64", description="the ensemble networks' weights and "
                                                 "arithmetic; labels, offset, outputs and losses stay float64 "
                                                 "(float32: ~3x faster fits on a CPU core)")
    stable_membership: bool = Field(default=False, description="split fraction: a point belongs to the same models in "
                                    "every fit (by a hash of its dataset index), so warm-started models stay diverse; "
                                    "false: a new random subset per model and fit")


class SamplerConfig(Strict):
    """How new CG points are found.

    kind "mc" (the reference method): Monte Carlo chains on the ensemble mean at inverse temperature
    ``beta``, each stopping where the ensemble std exceeds ``threshold``; the run stops when none does
    within ``max_steps``.  kind "grid_score": draw ``n_find`` bins of the evaluation grid with
    probability ~ exp(-beta F_mean) sigma^2, the expected forward-KLD reduction of labelling there
    (Boltzmann-probable and uncertain), a uniform point inside each; for CG spaces whose metric grid
    fits in memory (d <= 3).  Both then go through farthest-point selection and spreading."""

    kind: Literal["mc", "grid_score"] = Field(default="mc", description="mc: Monte Carlo chains on the ensemble mean "
                                              "(the reference method); grid_score: draw grid bins with probability ~ "
                                              "exp(-beta F_mean) sigma^2 (d <= 3)")
    step_size: PositiveFloat = Field(default=0.1, description="mc: proposal step of the chains (CG units)")
    threshold: PositiveFloat = Field(default=0.4, description="mc: a chain finishes where the ensemble std exceeds "
                                     "this (kT)")
    n_chains: PositiveInt = Field(default=50, description="mc: parallel chains (count)")
    n_find: PositiveInt = Field(default=1, description="candidate points found per iteration (finished chains, or "
                                "grid_score bins) (count)")
    min_steps: NonNegInt = Field(default=10, description="mc: a chain finishes only after more than this many steps "
                                 "(count)")
    max_steps: PositiveInt = Field(default=30000, description="mc: parallel steps before the sampler gives up and the "
                                   "run stops (MC exhausted) (count)")
    start: list[float] | None = Field(default=None, description="mc: where the chains of the first iteration start, "
                                      "one value per CG coordinate (CG units; null: the system's default_mc_start)")
    confine_to_domain: bool = Field(default=False, description="mc: reject proposals leaving the CG domain in "
                                    "non-periodic dimensions")
    beta: PositiveFloat = Field(default=1.0, description="inverse temperature on the ensemble mean F (per kT; the "
                                "chains sample exp(-beta F)); reference: 1")
    block_pool: NonNegInt = Field(default=0, description="grid_score: candidates per iteration made from the dataset's "
                                  "CG points (drawn ~ exp(-beta F_mean)) with one block of block_size consecutive "
                                  "coordinates redrawn uniformly, scored at the points like the grid bins (count; "
                                  "0: off)")
    block_find: NonNegInt = Field(default=0, description="grid_score: how many of the n_find candidates are drawn from "
                                  "the block pool (~ exp(-beta F) sigma^2, no repeats) instead of the grid (count)")
    block_size: PositiveInt = Field(default=2, description="grid_score: consecutive CG coordinates redrawn per block "
                                    "candidate (count; a peptide's (phi_k, psi_k) pair: 2)")


class AcquisitionConfig(Strict):
    n_seed_points: PositiveInt | None = Field(default=None, description="how many CG points of the starting data seed "
                                              "the dataset (a random subset; count; null: all)")
    n_space_filling_seed_points: NonNegInt = Field(default=0, description="plus this many space-filling seed points "
                                                   "over the whole CG domain (scrambled Sobol sequence; count): "
                                                   "regions the starting MD never visited get labels from the start")
    n_select: PositiveInt = Field(default=1, description="new centres per iteration, chosen from the n_find "
                                  "candidates by farthest-point selection (count; <= sampler.n_find)")
    spread_radius: PositiveFloat = Field(default=0.5, description="radius of the ball around each new centre in which "
                                         "its points are spread (CG units)")
    spread_points: PositiveInt = Field(default=65, description="CG points spread uniformly in each ball (count)")
    test_fraction: Fraction = Field(default=0.2, description="share of every batch of new CG points kept as test "
                                    "points (fraction, 0-1)")


class GridConfig(Strict):
    """Grid conditioning (mode: grid): train the flow on a fixed grid of CG points, no active learning."""

    points_per_dim: Annotated[int, Field(ge=2)] = Field(default=100, description="grid CG points per CG dimension "
                                                        "(count)")
    epochs: PositiveInt = Field(default=100, description="training-by-energy epochs over the grid in all (count)")
    ensemble_every_epochs: PositiveInt = Field(default=10, description="labels and an ensemble fit (one row of "
                                               "metrics.csv) after every this many epochs (count)")


class MetricsConfig(Strict):
    """How a CG space of more than two dimensions is measured (optional section; d <= 2 uses a full
    grid of the reference's bins, or 100 per dimension).  See :mod:`cgflow.analysis.marginals`."""

    pairs: list[list[str | int]] | None = Field(default=None, description="CG pairs whose 2-D marginals are measured "
                                                "and plotted: [[name, name], ...] (CG names or 0-based indices); "
                                                "null: the reference's pairs, else every pair")
    n_bins: Annotated[int, Field(ge=4)] = Field(default=50, description="marginal bins per dimension when there is no "
                                                "reference (count)")
    n_integration_points: Annotated[int, Field(ge=2)] = Field(
        default=256, description="points over the other coordinates, per marginal bin (count)")
    integration: Literal["sobol", "importance"] = Field(
        default="sobol", description="sobol: quasi-MC, uniform (best for a PMF spread over the space); importance: a "
        "defensive mixture of uniform and kernels around the run's CG points (best where exp(-F) fills a small part "
        "of it, e.g. peptides; benchmarks/marginal_integration.py)")
    final_integration_points: Annotated[int, Field(ge=2)] | None = Field(
        default=None, description="d > 2: the last iteration's marginals (pmf.npz, the final metrics.csv row and "
        "console figures) with this many points per bin instead of n_integration_points (count; the integration "
        "error falls ~1/points: benchmarks/marginal_integration.py); null: the same as every iteration")
    grid_points: Annotated[int, Field(ge=16)] = Field(default=100_000, description="points of the coarse full grid "
                                                      "(acquisition score, error bar) (count)")


class StoppingConfig(Strict):
    """kld_threshold needs a reference (an oracle: for benchmarks); std_target_kT does not: stop when
    the ensemble's Boltzmann-weighted std sum_b p(b) sigma(b) (p from the ensemble mean) falls below it;
    error_bar_target_kT: stop when the run's error bar (``error_bar_kT``, the predicted Boltzmann-weighted
    absolute error, cgflow.pmf.error_bar) falls below it. Both are vetoed, and the MC-exhausted stop
    turns into acquisition there, while a bin with F - min F < 10 kT has a per-bin error bar above
    region_error_bar_kT (kT; null: no veto)."""

    kld_threshold: PositiveFloat | None = Field(default=None, description="stop when the forward KLD to the reference "
                                                "falls below this (nats; needs a reference; null: off)")
    std_target_kT: PositiveFloat | None = Field(default=None, description="stop when the ensemble's "
                                                "Boltzmann-weighted std falls below this (kT; null: off)")
    error_bar_target_kT: PositiveFloat | None = Field(default=None, description="stop when the run's error bar "
                                                      "error_bar_kT falls below this (kT; null: off)")
    region_error_bar_kT: PositiveFloat | None = Field(default=1.0, description="veto the two targets (and the "
                                                      "MC-exhausted stop) while a bin with F - min F < 10 kT has a "
                                                      "per-bin error bar above this (kT; null: no veto)")
    max_iterations: PositiveInt = Field(default=100, description="stop after this many active-learning iterations "
                                        "(count)")


class RunConfig(Strict):
    """Everything a run needs; saved as config.yaml in the run directory."""

    system: SystemConfig = Field(default_factory=MullerBrownConfig, description="the system (name: muller-brown, "
                                 "molecule or python) and its settings")
    mode: Literal["active_learning", "grid"] = Field(default="active_learning", description="active_learning (the "
                                                     "method) or grid (a fixed grid of CG points)")
    seed: int = Field(default=0, description="random seed of the run (starting data, splits, draws, MC)")
    device: Literal["auto", "cpu", "cuda"] = Field(default="auto", description="where flows and ensemble run (auto: "
                                                   "cuda if available)")
    progress: bool = Field(default=True, description="show progress bars")
    flow: FlowConfig = Field(default_factory=FlowConfig, description="the conditional normalizing flow")
    by_example: ByExampleConfig = Field(default_factory=ByExampleConfig, description="maximum-likelihood training on "
                                        "the starting data")
    by_energy: ByEnergyConfig = Field(default_factory=ByEnergyConfig, description="reverse-KL training at the "
                                      "dataset's CG points")
    labels: LabelsConfig = Field(default_factory=LabelsConfig, description="the importance-sampling PMF labels")
    ensemble: EnsembleConfig = Field(default_factory=EnsembleConfig, description="the PMF ensemble fitted to the "
                                     "labels")
    sampler: SamplerConfig = Field(default_factory=SamplerConfig, description="how candidate CG points are found")
    acquisition: AcquisitionConfig = Field(default_factory=AcquisitionConfig, description="seed points, selection and "
                                           "spreading of new CG points")
    stopping: StoppingConfig = Field(default_factory=StoppingConfig, description="when the run stops")
    grid: GridConfig = Field(default_factory=GridConfig, description="grid conditioning (mode: grid)")
    metrics: MetricsConfig = Field(default_factory=MetricsConfig, description="how a CG space of d > 2 is measured")

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
        if self.sampler.block_find > min(self.sampler.n_find, self.sampler.block_pool):
            raise ValueError(f"sampler.block_find ({self.sampler.block_find}) must be <= sampler.n_find "
                             f"({self.sampler.n_find}) and <= sampler.block_pool ({self.sampler.block_pool})")
        if self.sampler.block_find and self.sampler.kind != "grid_score":
            raise ValueError("sampler.block_find needs sampler.kind: grid_score")
        if self.sampler.n_find > self.sampler.n_chains:
            raise ValueError(f"sampler.n_find ({self.sampler.n_find}) must be <= sampler.n_chains "
                             f"({self.sampler.n_chains})")
        return self
