"""A reduced alanine dipeptide active-learning run on CPU (small flow, few iterations)."""

import numpy as np
import pytest
import torch

from cgflow.config import load_config
from cgflow.learning.run import ActiveLearningRun

pytestmark = pytest.mark.slow  # worker pools / a whole aldp run: the full suite, not the fast lane

REDUCED = ["progress=false", "system.md_ps=5", "flow.n_blocks=2", "flow.hidden=[32]", "by_example.epochs=30",
           "by_energy.copies_per_point=5", "by_energy.epochs_first=3", "by_energy.epochs_later=2",
           "by_energy.batch_size=64", "acquisition.n_seed_points=60", "acquisition.spread_points=10",
           "acquisition.n_select=2", "sampler.n_chains=20", "sampler.n_find=4", "ensemble.epochs=200",
           "stopping.max_iterations=2"]


@pytest.fixture(scope="module")
def aldp_run(tmp_path_factory):
    import os
    tmp = tmp_path_factory.mktemp("aldp")
    old = os.environ.get("CGFLOW_CACHE_DIR")
    os.environ["CGFLOW_CACHE_DIR"] = str(tmp / "cache")
    cfg = load_config("aldp-quick", REDUCED, seed=0)
    run = ActiveLearningRun(cfg, tmp / "run")
    evaluated = []
    original = run.system.reduced_energy

    def recording(x):
        evaluated.append(x.detach().clone())
        return original(x)

    run.system.reduced_energy = recording
    run.run()
    if old is None:
        os.environ.pop("CGFLOW_CACHE_DIR")
    else:
        os.environ["CGFLOW_CACHE_DIR"] = old
    return run, torch.cat(evaluated)


def in_beta_region(phi_deg, psi_deg):
    """C7eq / beta basin: phi in [-180, -45] degrees, psi in [90, 180] or [-180, -150]."""
    return (-180 <= phi_deg <= -45) and (psi_deg >= 90 or psi_deg <= -150)


def test_pmf_is_finite_and_lowest_in_the_beta_region(aldp_run):
    """After two iterations only the neighbourhood of the starting data is explored; the ensemble's
    extrapolation to the rest of the torus is unconstrained, so the minimum is taken over the grid
    bins within the spreading radius of a labelled CG point."""
    run, _ = aldp_run
    mean, std = run.pmf_on_grid()
    assert mean.shape == (100, 100) and np.isfinite(mean).all() and np.isfinite(std).all()
    pts, labels = run.labels()
    grid = run.grid.numpy()
    d = np.angle(np.exp(1j * (grid[:, None, :] - pts.numpy()[None, :, :])))
    explored = (np.linalg.norm(d, axis=-1) < run.cfg.acquisition.spread_radius).any(1)
    assert explored.sum() > 50
    k = np.flatnonzero(explored)[np.argmin(mean.reshape(-1)[explored])]
    phi, psi = np.degrees(grid[k])
    assert in_beta_region(phi, psi), (phi, psi)
    phi, psi = np.degrees(pts[torch.argmin(labels)].numpy())
    assert in_beta_region(phi, psi), (phi, psi)


def test_every_evaluated_configuration_is_L(aldp_run):
    run, x = aldp_run
    assert x.shape[0] == run.state.counter.training + run.state.counter.diagnostics
    assert bool(run.system.chirality.chirality_ok(x).all())


def test_evaluation_counts_follow_the_epoch_composition_rule(aldp_run):
    run, _ = aldp_run
    cfg, rows, ds = run.cfg, run.state.rows, run.dataset
    b, m = cfg.by_energy.batch_size, cfg.by_energy.copies_per_point
    n0 = int(ds.is_train[ds.added_in == 0].sum())
    assert rows[0]["evals_drawn"] == (n0 * m // b) * b * cfg.by_energy.epochs_first
    n1 = int(ds.is_train[ds.added_in == 1].sum()) * m
    per_epoch = ((n1 + min(int(0.3 * n1), n0 * m)) // b) * b
    assert rows[1]["evals_drawn"] - rows[0]["evals_drawn"] == per_epoch * cfg.by_energy.epochs_later
    c = run.state.counter
    assert c.drawn == c.training + c.rejected
    assert c.starting_data == 5000   # 5 ps of 1 fs MD steps
