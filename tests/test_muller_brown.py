import math

import numpy as np
import pytest
import torch
from scipy.signal import argrelmax, argrelmin

from cgflow.systems.muller_brown import MullerBrownSystem, muller_brown_potential


def test_potential_minimum_values():
    # the three MB minima (literature values)
    assert muller_brown_potential(-0.558, 1.442) == pytest.approx(-146.70, abs=0.01)
    assert muller_brown_potential(0.623, 0.028) == pytest.approx(-108.17, abs=0.01)
    assert muller_brown_potential(-0.050, 0.467) == pytest.approx(-80.77, abs=0.01)


def test_internal_map_roundtrip_and_jacobian():
    mb = MullerBrownSystem()
    xy = torch.randn(20, 2, dtype=torch.float64)
    s, fg = mb.to_internal(xy)
    back, log_det = mb.from_internal(s, fg)
    assert torch.allclose(back, xy, atol=1e-14)
    jac = torch.autograd.functional.jacobian(lambda v: mb.from_internal(v[:1][None], v[1:][None])[0][0],
                                             torch.tensor([0.3, -0.2], dtype=torch.float64))
    assert torch.linalg.slogdet(jac).logabsdet.item() == pytest.approx(log_det[0].item())


def test_exact_pmf_matches_independent_trapezoid_and_known_features():
    mb = MullerBrownSystem()
    ref = mb.reference()
    c = ref.centers[0]
    f = ref.pmf_kT
    # independent check by a plain trapezoid on a fine grid
    y = np.linspace(-3, 5, 40001)
    g = -np.log(np.trapezoid(np.exp(-0.1 * muller_brown_potential(c[:, None] + y[None], y[None])), y, axis=1))
    assert np.allclose(f, g - g.min(), atol=1e-6)
    mins = argrelmin(f)[0]
    assert np.allclose(c[mins], [-2.014, -0.502, 0.578], atol=0.02)
    assert np.allclose(f[mins], [0.0, 6.99, 4.60], atol=0.02)
    assert np.allclose(f[argrelmax(f)[0]], [10.58, 7.49], atol=0.02)
    assert ref.prob.sum() == pytest.approx(1.0)


def test_starting_data_in_basin_a_and_counted():
    mb = MullerBrownSystem()
    d = mb.starting_data(0)
    s, _ = mb.to_internal(d.x)
    assert d.x.shape == (100, 2)
    assert abs(s.mean().item() + 2.0) < 0.05 and s.std().item() < 0.15
    assert d.n_energy_evaluations > 100
    assert torch.equal(mb.starting_data(0).x, d.x)


def test_log_target_is_minus_energy_plus_log_det():
    mb = MullerBrownSystem(beta=0.1)
    s = torch.tensor([[-2.0]], dtype=torch.float64)
    fg = torch.tensor([[0.884]], dtype=torch.float64)
    lt = mb.log_target(s, fg).item()
    assert lt == pytest.approx(-0.1 * muller_brown_potential(-0.558, 1.442) + math.log(0.5))
