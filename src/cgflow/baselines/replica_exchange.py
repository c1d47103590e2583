"""Temperature replica exchange (parallel tempering): the ladder and the swap rule, apart from any driver.

The driver that runs OpenMM contexts between swaps is ``benchmarks/ala4_remd.py``; the rule here is what a
test can check against an analytic answer (tests/test_replica_exchange.py: swaps keep the product of the
Boltzmann distributions stationary).  Energies in kJ/mol, inverse temperatures in mol/kJ.
"""

from __future__ import annotations

import numpy as np

__all__ = ["exchange_step", "geometric_ladder"]


def geometric_ladder(t_min: float, t_max: float, n: int) -> np.ndarray:
    """(n,) temperatures in K, ``t_min * (t_max / t_min) ** (k / (n - 1))`` (constant ratio between neighbours)."""
    if n < 1 or not 0 < t_min <= t_max:
        raise ValueError(f"need n >= 1 and 0 < t_min <= t_max, got n={n}, t_min={t_min}, t_max={t_max}")
    if n == 1:
        return np.array([float(t_min)])
    return t_min * (t_max / t_min) ** (np.arange(n) / (n - 1))


def exchange_step(u_kjmol: np.ndarray, replica_at: np.ndarray, betas: np.ndarray, parity: int,
                  rng: np.random.Generator) -> np.ndarray:
    """One sweep of neighbour swaps; returns (n_temperatures - 1,) bool, which pairs (k, k+1) swapped.

    u_kjmol (n_replicas,): potential energy of each replica (kJ/mol); replica_at (n_temperatures,) int: which
    replica sits at each temperature (modified in place); betas (n_temperatures,) in mol/kJ; the pairs (k, k+1)
    with ``k % 2 == parity`` are offered a swap, accepted with probability
    ``min(1, exp((beta_k - beta_{k+1}) (U_k - U_{k+1})))`` (Metropolis on the product of Boltzmann factors).
    """
    swapped = np.zeros(len(betas) - 1, dtype=bool)
    for k in range(parity, len(betas) - 1, 2):
        a, b = replica_at[k], replica_at[k + 1]
        log_acc = (betas[k] - betas[k + 1]) * (u_kjmol[a] - u_kjmol[b])
        if log_acc >= 0 or rng.random() < np.exp(log_acc):
            replica_at[k], replica_at[k + 1] = b, a
            swapped[k] = True
    return swapped
