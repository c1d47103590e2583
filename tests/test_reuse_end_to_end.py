"""Reusing every evaluation, end to end on Müller-Brown (exact dF/ds by quadrature): mean-force labels
from the loop's own draws match the exact gradient, the Sobolev fit beats values alone on the same
labels, and a run with pooled labels, warm-started Sobolev fits and grid-score acquisition resumes exactly."""

import numpy as np
import pytest

from cgflow.config import load_config
from cgflow.core import run_directory as rd
from cgflow.learning.run import ActiveLearningRun
from cgflow.systems.muller_brown import exact_pmf
from test_end_to_end import Interrupt, KillAfter

REUSE = ["progress=false", "by_example.epochs=20", "by_energy.epochs_first=6", "by_energy.epochs_later=3",
         "ensemble.epochs=300", "labels.estimator=pooled", "labels.mean_forces=true",
         "ensemble.gradient_weight=1.0", "ensemble.weighting=standard_error"]


def exact_gradient(s: np.ndarray, beta: float, h: float = 1e-4) -> np.ndarray:
    hi = exact_pmf(tuple((s + h).tolist()), beta)
    lo = exact_pmf(tuple((s - h).tolist()), beta)
    return (hi - lo) / (2 * h)


@pytest.mark.slow
def test_mean_force_labels_match_the_exact_gradient_and_the_sobolev_fit_is_better(tmp_path):
    cfg = load_config("mb", REUSE + ["stopping.max_iterations=3"], seed=0)
    run = ActiveLearningRun(cfg, tmp_path / "mb")
    run.run()
    lab = run.label_set()
    s = lab.points[:, 0].numpy()
    good = (lab.ess.numpy() > 5) & (s > -2.4) & (s < 1.0)
    assert good.sum() > 50
    mf, se = lab.mean_force[:, 0].numpy()[good], lab.mean_force_se[:, 0].numpy()[good]
    exact = exact_gradient(s[good], cfg.system.beta)
    assert np.corrcoef(mf, exact)[0, 1] > 0.95
    z = (mf - exact) / se
    assert np.median(np.abs(z)) < 2.0, np.median(np.abs(z))  # errors of the size the standard errors say

    # the same labels fitted with and without the mean forces: error against the exact PMF where the
    # run has labels (beyond them the KLD is decided by extrapolation, which neither fit can know)
    lo, hi = s[good].min(), s[good].max()
    centers = 0.5 * (run.edges[0][1:] + run.edges[0][:-1])
    inside = (centers > lo) & (centers < hi)
    exact_f = exact_pmf(tuple(centers[inside].tolist()), cfg.system.beta)
    rmse = {}
    for weight in (0.0, 1.0):
        run.ensemble.fitted.fill_(False)
        run.cfg.ensemble.gradient_weight = weight
        run._fit_ensemble(lab)
        err = run.pmf_on_grid()[0][inside] - exact_f
        rmse[weight] = float(np.sqrt(np.mean((err - err.mean()) ** 2)))
    assert rmse[1.0] < 0.7 * rmse[0.0], rmse


@pytest.mark.slow
def test_resume_with_pooled_labels_and_warm_sobolev_fits_is_exact(tmp_path):
    over = REUSE + ["ensemble.epochs=60", "ensemble.warm_epochs=20", "ensemble.stable_membership=true",
                    "sampler.kind=grid_score", "sampler.n_find=5", "acquisition.n_space_filling_seed_points=8",
                    "by_energy.old_selection=boltzmann_se", "stopping.max_iterations=4"]
    cfg = load_config("mb", over, seed=2)
    full = ActiveLearningRun(cfg, tmp_path / "full").run()
    with pytest.raises(Interrupt):
        ActiveLearningRun(cfg, tmp_path / "cut", reporters=[KillAfter(2)]).run()
    resumed = ActiveLearningRun(cfg, tmp_path / "cut", resume=True)
    state = resumed.run()
    timing = {"t_flow_s", "t_energy_s", "t_labels_s", "t_ensemble_s", "t_mc_s", "wall_time_s"}
    strip = [{k: v for k, v in r.items() if k not in timing} for r in state.rows]
    assert strip == [{k: v for k, v in r.items() if k not in timing} for r in full.rows]
    assert len(resumed.dataset.draws) == len(ActiveLearningRun(cfg, tmp_path / "full", resume=True).dataset.draws)
    a, b = np.load(tmp_path / "full" / rd.PMF), np.load(tmp_path / "cut" / rd.PMF)
    assert np.array_equal(a["pmf_kT"], b["pmf_kT"])
    # the run's own error bar is recorded every iteration, the held-out-scaled one never below the raw one
    assert all(r["boltzmann_std_heldout_kT"] >= r["boltzmann_std_kT"] > 0 for r in full.rows)
    assert all(r["boltzmann_abs_err_kT"] > 0 for r in full.rows)
