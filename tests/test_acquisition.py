import math

import numpy as np
import torch

from cgflow.sampling.acquisition import farthest_point_selection, periodic_difference, spread_uniform_ball


def test_farthest_point_selection_spreads_out():
    pts = torch.tensor([[0.0], [0.1], [0.2], [5.0], [10.0]], dtype=torch.float64)
    idx = farthest_point_selection(pts, 3, (False,), np.random.default_rng(0))
    assert sorted(pts[idx, 0].tolist()) in ([0.0, 5.0, 10.0], [0.1, 5.0, 10.0], [0.2, 5.0, 10.0])


def test_periodic_distance_wraps():
    a = torch.tensor([[3.0]], dtype=torch.float64)
    b = torch.tensor([[-3.0]], dtype=torch.float64)
    assert abs(periodic_difference(a, b, (True,)).item() - (6.0 - 2 * math.pi)) < 1e-12
    assert periodic_difference(a, b, (False,)).item() == 6.0


def test_spread_is_uniform_in_the_ball_and_wrapped():
    c = torch.tensor([[0.0, 3.0]], dtype=torch.float64)
    pts = spread_uniform_ball(c, 20000, 0.6, (True, True), np.random.default_rng(0))
    d = periodic_difference(pts, c, (True, True)).norm(dim=1)
    assert pts.shape == (20000, 2)
    assert (d <= 0.6 + 1e-12).all()
    assert (pts >= -math.pi).all() and (pts < math.pi).all()
    # uniform in a disc: P(r < r0/2) = 1/4
    assert abs((d < 0.3).double().mean().item() - 0.25) < 0.02
    one_d = spread_uniform_ball(torch.zeros(1, 1, dtype=torch.float64), 20000, 0.5, (False,), np.random.default_rng(1))
    assert one_d.abs().max() <= 0.5 and abs(one_d.mean().item()) < 0.01
