"""Issue 18.2: every CG point that reaches the flow lies in the system's cg_domain (non-periodic dims):
seeds from starting data outside it, space-filling seeds, MC ending outside (not confined), the
grid-score draw and the spreading around a point near an end."""

import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from cgflow.config import load_config
from cgflow.learning.run import ActiveLearningRun
from cgflow.sampling.acquisition import reflect_into_domain, spread_uniform_ball

sys.path.insert(0, str(Path(__file__).resolve().parent))
from double_well_system import DOMAIN, DoubleWellSystem  # noqa: E402

FAST = ["progress=false", "by_example.epochs=2", "by_energy.epochs_first=2", "by_energy.epochs_later=1",
        "by_energy.copies_per_point=4", "ensemble.epochs=30", "ensemble.n_models=3", "sampler.n_chains=8",
        "sampler.max_steps=200", "sampler.threshold=0.01", "sampler.start=[-1.75]", "sampler.confine_to_domain=false",
        "acquisition.spread_radius=0.6", "acquisition.spread_points=40", "acquisition.n_space_filling_seed_points=8",
        "stopping.max_iterations=3"]


def test_reflection_mirrors_at_the_ends_and_keeps_inside_points():
    pts = torch.tensor([[-2.0, 3.5], [0.3, -3.5], [1.9, 0.0], [7.0, 1.0], [-1.8, 1.0]], dtype=torch.float64)
    out = reflect_into_domain(pts, ((-1.8, 1.8), (-math.pi, math.pi)), (False, True))
    assert out[:, 0].tolist() == pytest.approx([-1.6, 0.3, 1.7, -0.2, -1.8])  # 7.0: folded twice
    assert out[1, 1].item() == pytest.approx(-3.5 + 2 * math.pi)  # periodic: wrapped, not mirrored
    assert out[0, 1].item() == pytest.approx(3.5 - 2 * math.pi)


def test_spreading_near_an_end_stays_inside_after_reflection():
    rng = np.random.default_rng(0)
    c = torch.tensor([[-1.7]], dtype=torch.float64)
    raw = spread_uniform_ball(c, 2000, 0.5, (False,), rng)
    assert float(raw.min()) < DOMAIN[0]  # the premise: spreading alone leaves the domain
    out = reflect_into_domain(raw, (DOMAIN,), (False,))
    assert float(out.min()) >= DOMAIN[0] and float(out.max()) <= DOMAIN[1]
    inside = (raw >= DOMAIN[0]).reshape(-1)
    assert torch.equal(out[inside], raw[inside])


@pytest.mark.parametrize("sampler, n_outside", [("mc", 0), ("mc", 6), ("grid_score", 6)])
def test_no_labelled_point_outside_the_domain(tmp_path, sampler, n_outside):
    """n_outside 0: only the spreading (and the unconfined MC) can leave the domain; 6: seeds too."""
    cfg = load_config("mb", FAST + [f"sampler.kind={sampler}", "sampler.n_find=2"])
    system = DoubleWellSystem(n_outside=n_outside, n_starting_points=60)
    run = ActiveLearningRun(cfg, tmp_path / "run", system=system)
    run.run()
    pts = run.dataset.points[:, 0]
    assert len(run.dataset) > 60 and int((run.dataset.added_in > 0).sum()) > 0  # points were acquired
    assert float(pts.min()) >= DOMAIN[0] and float(pts.max()) <= DOMAIN[1], (float(pts.min()), float(pts.max()))
    labels = run.label_set().points[:, 0]
    assert float(labels.min()) >= DOMAIN[0] and float(labels.max()) <= DOMAIN[1]
    saved = np.load(tmp_path / "run" / "pmf.npz")["points"][:, 0]
    assert saved.min() >= DOMAIN[0] and saved.max() <= DOMAIN[1]
