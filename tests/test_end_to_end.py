"""Müller-Brown end to end: the default preset reaches the accuracy target, and a run killed
between iterations resumes to exactly the run it would have been."""

import numpy as np
import pytest
import torch

from cgflow.config import load_config
from cgflow.core import run_directory as rd
from cgflow.learning.run import ActiveLearningRun

SMALL = ["progress=false", "by_example.epochs=20", "by_energy.epochs_first=4", "by_energy.epochs_later=2",
         "ensemble.epochs=60", "stopping.max_iterations=4"]
TIMING = {"t_flow_s", "t_energy_s", "t_labels_s", "t_ensemble_s", "t_mc_s", "wall_time_s"}


class Interrupt(Exception):
    pass


class KillAfter:
    def __init__(self, n):
        self.n = n

    def on_iteration(self, run, row):
        if row["iteration"] == self.n:
            raise Interrupt

    def on_finish(self, run):
        pass


def strip_times(rows):
    return [{k: v for k, v in r.items() if k not in TIMING} for r in rows]


@pytest.mark.slow
def test_default_preset_matches_quadrature(tmp_path):
    cfg = load_config("mb", ["progress=false"], seed=0)
    run = ActiveLearningRun(cfg, tmp_path / "mb")
    state = run.run()
    last = state.rows[-1]
    assert last["forward_kld"] < 2e-3, last
    assert last["pmf_rmse_weighted_kT"] < 0.3
    # the evaluation count is the sum of its parts and grows every iteration
    c = state.counter
    assert c.total == c.training + c.diagnostics + c.starting_data
    assert all(b["evals_total"] > a["evals_total"] for a, b in zip(state.rows, state.rows[1:]))
    for name in ("config.yaml", "metrics.csv", "checkpoint.pt", "pmf.npz"):
        assert (tmp_path / "mb" / name).is_file()


def test_training_budget_follows_the_epoch_composition_rule(tmp_path):
    cfg = load_config("mb", SMALL + ["stopping.max_iterations=2", "by_energy.test_loss=false"])
    run = ActiveLearningRun(cfg, tmp_path / "r")
    run.run()
    rows = run.state.rows
    b = cfg.by_energy.batch_size
    n_train0 = int(run.dataset.is_train[run.dataset.added_in == 0].sum())
    first = (n_train0 * 30 // b) * b * cfg.by_energy.epochs_first
    assert rows[0]["evals_drawn"] == first
    n_train1 = int(run.dataset.is_train[run.dataset.added_in == 1].sum())
    latest = n_train1 * 30
    per_epoch = ((latest + min(int(0.3 * latest), n_train0 * 30)) // b) * b
    assert rows[1]["evals_drawn"] - rows[0]["evals_drawn"] == per_epoch * cfg.by_energy.epochs_later
    assert rows[1]["evals_diagnostics"] == 0


@pytest.mark.slow  # fast lane: over 3 s (a subprocess or a tiny run)
def test_resume_after_interruption_continues_exactly(tmp_path):
    cfg = load_config("mb", SMALL, seed=3)
    full = ActiveLearningRun(cfg, tmp_path / "full").run()

    with pytest.raises(Interrupt):
        ActiveLearningRun(cfg, tmp_path / "cut", reporters=[KillAfter(2)]).run()
    rows = rd.read_metrics_csv(tmp_path / "cut" / rd.METRICS)
    assert [r["iteration"] for r in rows] == [1, 2]

    with pytest.raises(rd.RunDirectoryError, match="already exists"):
        ActiveLearningRun(cfg, tmp_path / "cut")
    resumed = ActiveLearningRun(cfg, tmp_path / "cut", resume=True)
    assert resumed.state.iteration == 3
    state = resumed.run()
    assert strip_times(state.rows) == strip_times(full.rows)
    a = np.load(tmp_path / "full" / rd.PMF)
    b = np.load(tmp_path / "cut" / rd.PMF)
    assert np.array_equal(a["pmf_kT"], b["pmf_kT"])


def test_metrics_csv_has_wall_time_per_phase(tmp_path):
    cfg = load_config("mb", SMALL + ["stopping.max_iterations=2"])
    run = ActiveLearningRun(cfg, tmp_path / "r")
    run.run()
    rows = rd.read_metrics_csv(tmp_path / "r" / rd.METRICS)
    assert len(rows) == 2
    previous_wall = 0.0
    for r in rows:
        assert TIMING <= set(r), sorted(set(r))
        assert all(r[k] >= 0 for k in TIMING), r
        assert r["t_energy_s"] > 0  # energies are evaluated in every iteration
        assert r["t_energy_s"] <= r["t_flow_s"]  # t_flow_s includes the energy evaluations
        phases = r["t_flow_s"] + r["t_labels_s"] + r["t_ensemble_s"] + r["t_mc_s"]
        assert phases <= r["wall_time_s"] - previous_wall + 1e-6
        previous_wall = r["wall_time_s"]


def test_resume_refuses_a_different_config(tmp_path):
    cfg = load_config("mb", SMALL + ["stopping.max_iterations=1"])
    ActiveLearningRun(cfg, tmp_path / "r").run()
    other = load_config("mb", SMALL + ["stopping.max_iterations=1", "ensemble.epochs=61"])
    with pytest.raises(rd.RunDirectoryError, match="ensemble"):
        ActiveLearningRun(other, tmp_path / "r", resume=True)


def test_nonfinite_energies_are_counted_not_fatal(tmp_path, monkeypatch):
    from cgflow.systems.muller_brown import MullerBrownSystem
    original = MullerBrownSystem.log_target

    def clashing(self, s, x_fg):
        out = original(self, s, x_fg)
        return torch.where(torch.arange(len(out)) % 5 == 0, torch.full_like(out, float("nan")), out)

    monkeypatch.setattr(MullerBrownSystem, "log_target", clashing)
    cfg = load_config("mb", SMALL + ["stopping.max_iterations=1"])
    run = ActiveLearningRun(cfg, tmp_path / "r")
    run.run()
    c = run.state.counter
    assert c.nonfinite >= c.training // 5 - 1 > 0
    assert np.isfinite(run.state.rows[-1]["forward_kld"])
