"""The importance-sampling PMF estimator recovers analytic answers."""

import math

import pytest
import torch

from cgflow.pmf.labels import clip_top_k, pmf_from_log_weights


def gaussian_log_weights(mu_p, sig_p, mu_q, sig_q, n, amplitude):
    """Target p~(x) = amplitude * exp(-(x-mu_p)^2 / (2 sig_p^2)) (normalizer amplitude*sqrt(2 pi) sig_p),
    proposal q = N(mu_q, sig_q^2); returns log w = log p~ - log q for n draws from q."""
    x = mu_q + sig_q * torch.randn(n, dtype=torch.float64)
    log_p = math.log(amplitude) - 0.5 * ((x - mu_p) / sig_p) ** 2
    log_q = -0.5 * ((x - mu_q) / sig_q) ** 2 - math.log(sig_q * math.sqrt(2 * math.pi))
    return log_p - log_q


def test_recovers_analytic_free_energy_differences():
    # three CG points whose conditional normalizers differ by known factors
    amps = [1.0, math.exp(-2.0), math.exp(-5.0)]
    sig_p = [0.5, 0.8, 0.3]
    n = 200_000
    log_w = torch.stack([gaussian_log_weights(0.2, sp, 0.0, 1.0, n, a) for a, sp in zip(amps, sig_p)])
    f = pmf_from_log_weights(log_w)
    exact = torch.tensor([-math.log(a * math.sqrt(2 * math.pi) * sp) for a, sp in zip(amps, sig_p)],
                         dtype=torch.float64)
    assert torch.allclose(f, exact, atol=0.01)


def test_a_poor_proposal_is_detected_by_a_wrong_answer():
    """Sanity check of the test above: a proposal far off the target gives a clearly biased value."""
    log_w = gaussian_log_weights(3.0, 0.2, 0.0, 1.0, 30, 1.0)[None]
    exact = -math.log(math.sqrt(2 * math.pi) * 0.2)
    assert abs(pmf_from_log_weights(log_w).item() - exact) > 0.5


def test_rejected_draws_count_as_zero_weight_and_undrawn_are_ignored():
    log_w = torch.tensor([[0.0, 0.0, float("nan"), 5.0]], dtype=torch.float64)
    drawn = torch.tensor([[True, True, True, False]])
    # mean over the 3 drawn copies of (1, 1, 0) -> F = -ln(2/3)
    assert pmf_from_log_weights(log_w, drawn).item() == pytest.approx(-math.log(2 / 3), abs=1e-12)


def test_point_without_weight_is_nan():
    log_w = torch.tensor([[float("nan")] * 3, [0.0] * 3], dtype=torch.float64)
    f = pmf_from_log_weights(log_w)
    assert math.isnan(f[0].item()) and f[1].item() == pytest.approx(0.0)


def test_top_k_clipping():
    log_w = torch.tensor([[5.0, 1.0, 3.0, 4.0, 2.0]], dtype=torch.float64)
    assert clip_top_k(log_w, 3).tolist() == [[3.0, 1.0, 3.0, 3.0, 2.0]]
    assert torch.equal(clip_top_k(log_w, 0), log_w)
    # clipping can only lower the estimate of Z, i.e. raise F
    assert pmf_from_log_weights(log_w, top_k_clip=3).item() > pmf_from_log_weights(log_w).item()
