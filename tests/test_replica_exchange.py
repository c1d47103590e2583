"""The replica-exchange swap rule keeps the product of Boltzmann distributions stationary (analytic check)."""

from __future__ import annotations

import numpy as np
import pytest

from cgflow.baselines.replica_exchange import exchange_step, geometric_ladder


def test_geometric_ladder_constant_ratio_and_ends() -> None:
    t = geometric_ladder(300.0, 800.0, 8)
    assert t[0] == pytest.approx(300.0) and t[-1] == pytest.approx(800.0)
    np.testing.assert_allclose(t[1:] / t[:-1], (800 / 300) ** (1 / 7), rtol=1e-12)
    with pytest.raises(ValueError):
        geometric_ladder(800.0, 300.0, 4)


def test_swaps_keep_each_temperature_boltzmann_distributed() -> None:
    """Two-level system (energies 0 and 1 kJ/mol) at two temperatures: draw each replica's state from its own
    Boltzmann distribution, offer one swap, and the energy at each temperature must still have the Boltzmann
    mean.  With the sign of the acceptance flipped the cold mean rises by ~0.07 (> 20 standard errors)."""
    rng = np.random.default_rng(0)
    betas = np.array([2.0, 0.5])  # mol/kJ
    p1 = np.exp(-betas) / (1 + np.exp(-betas))  # probability of the upper level
    n = 200_000
    cold_u, hot_u, n_swapped = np.empty(n), np.empty(n), 0
    for i in range(n):
        u = (rng.random(2) < p1).astype(float)  # replica r sits at temperature r
        at = np.array([0, 1])
        n_swapped += int(exchange_step(u, at, betas, 0, rng)[0])
        cold_u[i], hot_u[i] = u[at[0]], u[at[1]]
    se = np.sqrt(p1 * (1 - p1) / n)
    assert abs(cold_u.mean() - p1[0]) < 4 * se[0]
    assert abs(hot_u.mean() - p1[1]) < 4 * se[1]
    assert 0.1 < n_swapped / n < 0.9  # swaps happened


def test_only_pairs_of_the_given_parity_are_offered() -> None:
    rng = np.random.default_rng(1)
    u = np.zeros(5)  # equal energies: every offered swap is accepted
    at = np.arange(5)
    swapped = exchange_step(u, at, np.linspace(1.0, 0.2, 5), 1, rng)
    assert swapped.tolist() == [False, True, False, True]
    assert at.tolist() == [0, 2, 1, 4, 3]
