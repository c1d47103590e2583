import math

import numpy as np
import pytest

from cgflow.analysis.metrics import bin_centers_grid, forward_kld, pmf_rmse, probabilities_from_pmf, reverse_kld


def test_kld_of_identical_distributions_is_zero():
    p = np.array([0.1, 0.2, 0.7])
    assert forward_kld(p, p) == pytest.approx(0.0, abs=1e-15)
    assert reverse_kld(p, p) == pytest.approx(0.0, abs=1e-12)


def test_kld_known_values():
    p = np.array([0.5, 0.5])
    q = np.array([0.9, 0.1])
    assert forward_kld(p, q) == pytest.approx(0.5 * math.log(0.5 / 0.9) + 0.5 * math.log(0.5 / 0.1))
    # bins where the reference is empty do not count in the forward KLD
    assert forward_kld(np.array([1.0, 0.0]), np.array([0.5, 0.5])) == pytest.approx(math.log(2))


def test_kld_between_discretized_gaussians_matches_analytic():
    x = np.linspace(-12, 12, 4001)
    p = np.exp(-0.5 * x**2)
    q = np.exp(-0.5 * ((x - 0.3) / 1.2) ** 2)
    analytic = math.log(1.2) + (1 + 0.3**2) / (2 * 1.2**2) - 0.5
    assert forward_kld(p / p.sum(), q / q.sum()) == pytest.approx(analytic, rel=1e-6)


def test_probabilities_from_pmf_and_rmse_ignore_constant_offsets():
    f = np.array([0.0, 1.0, 3.0])
    p = probabilities_from_pmf(f)
    assert p.sum() == pytest.approx(1.0)
    assert np.allclose(probabilities_from_pmf(f + 100.0), p)
    assert pmf_rmse(p, f + 7.0) == pytest.approx(0.0, abs=1e-12)
    assert pmf_rmse(p, f + np.array([0.0, 0.0, 1.0])) > 0.01


def test_bin_centers_grid_order():
    g = bin_centers_grid([np.array([0.0, 1.0, 2.0]), np.array([0.0, 2.0, 4.0, 6.0])])
    assert g.shape == (6, 2)
    assert g[:3].tolist() == [[0.5, 1.0], [0.5, 3.0], [0.5, 5.0]]
