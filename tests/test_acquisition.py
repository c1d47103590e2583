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


def test_block_resampled_points_redraw_one_block_of_a_weighted_source_point():
    from cgflow.sampling.acquisition import block_resampled_points

    src = torch.tensor([[0.1, 0.2, 0.3, 0.4], [1.1, 1.2, 1.3, 1.4], [2.1, 2.2, 2.3, 2.4]], dtype=torch.float64)
    domain = [(-math.pi, math.pi)] * 4
    logw = torch.tensor([0.0, math.log(3.0), -math.inf])  # point 2 never, point 1 three times as often as point 0
    out = block_resampled_points(src, logw, 20000, 2, domain, np.random.default_rng(0))
    assert out.shape == (20000, 4) and out.dtype == torch.float64
    # every row keeps d - 2 coordinates of exactly one source point, and the changed ones are consecutive (mod d)
    same = (out[:, None, :] == src[None, :, :])  # (n, 3, 4)
    kept = same.sum(2)  # coordinates shared with each source point
    assert (kept.max(1).values == 2).all()
    source = kept.argmax(1)
    assert not (source == 2).any()
    assert abs((source == 1).double().mean().item() - 0.75) < 0.015
    changed = ~same[torch.arange(len(out)), source]  # (n, 4)
    starts = [(c.nonzero().flatten().tolist()) for c in changed[:200]]
    assert all(s in ([0, 1], [1, 2], [2, 3], [0, 3]) for s in starts)
    # the redrawn values are uniform over the domain
    vals = out[changed]
    assert vals.min() >= -math.pi and vals.max() <= math.pi
    assert abs(vals.mean().item()) < 0.03 and abs(vals.var().item() - (2 * math.pi) ** 2 / 12) < 0.05
    # a block wider than the space redraws everything
    assert not (block_resampled_points(src[:1], logw[:1], 5, 9, domain, np.random.default_rng(1)) == src[0]).any()
