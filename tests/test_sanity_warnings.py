"""Sanity warnings fire on a deliberately bad tiny run (console, metrics.csv,
summary) and each check fires exactly when it should."""


import numpy as np
import pytest

from cgflow.core import run_directory as rd
from cgflow.learning.diagnostics import (
    ensemble_fit_warning,
    label_ess_warning,
    minimum_without_data_warning,
    sample_ess_warning,
)
from conftest import run_cgflow


@pytest.mark.slow  # fast lane: over 3 s (a subprocess or a tiny run)
def test_deliberately_bad_tiny_run_warns_on_console_metrics_and_summary(tmp_path):
    # a learning rate of 0.3 blows the flow up after one epoch: labels from a handful of draws each
    bad = ["by_example.epochs=1", "by_energy.epochs_first=1", "by_energy.lr=0.3", "labels.estimator=pooled",
           "ensemble.epochs=5", "ensemble.lr=1e-6", "stopping.max_iterations=1"]
    res = run_cgflow("run", "mb", "--out", "bad", "--no-plots", *sum((["--set", s] for s in bad), []), cwd=tmp_path,
                     extra_env={"OMP_NUM_THREADS": "1"}, timeout=600)
    assert res.returncode == 0, res.stderr
    out = res.stdout
    assert "warning: poor ensemble fit" in out and "warning: low label ESS" in out
    summary = out[out.index("finished:"):]
    # the third: the one labelled region leaves most of the model's probability unlabelled
    assert "warnings: 3 in 1 iteration(s), 3 in the last one" in summary
    assert "of the model's probability lies where no CG point was labelled" in summary
    assert "iteration 1: poor ensemble fit" in summary and "iteration 1: low label ESS" in summary
    row = rd.read_metrics_csv(tmp_path / "bad" / rd.METRICS)[-1]
    assert "poor ensemble fit" in row["warnings"] and "low label ESS" in row["warnings"]
    assert len(row["warnings"].split("; ")) == 3


def test_ensemble_fit_check():
    assert ensemble_fit_warning({"ensemble_train_mse": 0.5}) is None
    assert "poor ensemble fit" in ensemble_fit_warning({"ensemble_train_mse": 1e7})
    assert "poor ensemble fit" in ensemble_fit_warning({"ensemble_train_mse": float("nan")})
    assert ensemble_fit_warning({}) is None


def test_label_ess_check():
    assert label_ess_warning(np.full(100, 8.0)) is None
    assert label_ess_warning(np.r_[np.full(80, 8.0), np.full(20, 1.1)]) is None   # 20% <= 25%
    w = label_ess_warning(np.r_[np.full(60, 8.0), np.full(40, 1.1)])
    assert w is not None and "40% of 100" in w
    assert label_ess_warning(np.array([])) is None


def test_minimum_without_data_check():
    grid = np.linspace(-2.5, 1.1, 100)[:, None]
    pmf = (grid[:, 0] - 0.8) ** 2                      # minimum at 0.8
    near = np.array([[0.7], [0.9], [-2.0]])
    far = np.array([[-2.0], [-1.5]])
    assert minimum_without_data_warning(pmf, grid, near, [False], [(-2.5, 1.1)], 0.5) is None
    w = minimum_without_data_warning(pmf, grid, far, [False], [(-2.5, 1.1)], 0.5)
    assert w is not None and "extrapolated" in w
    # periodic: a point across the boundary is near
    g = np.linspace(-3.1, 3.1, 63)[:, None]
    f = (g[:, 0] - 3.1) ** 2
    assert minimum_without_data_warning(f, g, np.array([[-3.1]]), [True], [(-np.pi, np.pi)], 0.5) is None
    assert minimum_without_data_warning(f, g, np.array([[-3.1]]), [False], [(-np.pi, np.pi)], 0.5) is not None


def test_sample_ess_check():
    assert "low effective sample size 1.5 of 20" in sample_ess_warning(1.5, 20)
    assert sample_ess_warning(12.0, 20) is None
    assert sample_ess_warning(30.0, 100) is None and sample_ess_warning(8.0, 100) is not None
