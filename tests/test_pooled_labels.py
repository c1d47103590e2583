"""Pooled importance-sampling labels and mean forces against exact Gaussian answers."""

import math

import numpy as np
import pytest
import torch

from cgflow.pmf.labels import clip_top_k
from cgflow.pmf.pooled_labels import clip_top_k_segments, iteration_weights, pooled_labels

K_SPRING, B_COUPLING = 2.0, 0.7


def gaussian_draws(s, n_per_iter, mismatch, widths, rng):
    """Draws at CG points s (P,) from proposals q_t = N(b s + mismatch_t, width_t^2) of the target
    ln p~(s, x) = -(x - b s)^2 / 2 - k s^2 / 2 (Z(s) = sqrt(2 pi) exp(-k s^2 / 2), dF/ds = k s).
    Returns (point, iteration, log_w, grad_s)."""
    P = s.shape[0]
    pts, its, lws, gs = [], [], [], []
    for t, (dm, w) in enumerate(zip(mismatch, widths)):
        p = np.repeat(np.arange(P), n_per_iter)
        sp = s[p]
        x = B_COUPLING * sp + dm + w * rng.standard_normal(p.size)
        log_p = -0.5 * (x - B_COUPLING * sp) ** 2 - 0.5 * K_SPRING * sp**2
        log_q = -0.5 * ((x - B_COUPLING * sp - dm) / w) ** 2 - math.log(w * math.sqrt(2 * math.pi))
        grad = (x - B_COUPLING * sp) * B_COUPLING - K_SPRING * sp
        pts.append(p), its.append(np.full(p.size, t)), lws.append(log_p - log_q), gs.append(grad)
    cat = np.concatenate
    return (torch.as_tensor(cat(pts)), torch.as_tensor(cat(its)), torch.as_tensor(cat(lws)),
            torch.as_tensor(cat(gs))[:, None])


def exact_log_z(s):
    return 0.5 * math.log(2 * math.pi) - 0.5 * K_SPRING * s**2


def test_pooled_estimate_of_z_is_unbiased():
    rng = np.random.default_rng(0)
    s = rng.uniform(-1, 1, 4000)
    draws = gaussian_draws(s, 3, mismatch=[1.2, 0.6, 0.2], widths=[0.6, 0.8, 1.1], rng=rng)
    lab = pooled_labels(s.size, *draws)
    ratio = np.exp(-lab.pmf_kT.numpy() - exact_log_z(s))  # Z^ / Z per point
    se = ratio.std() / math.sqrt(ratio.size)
    assert abs(ratio.mean() - 1.0) < 4 * se, (ratio.mean(), se)
    assert se < 0.02  # the test can see a bias of a few percent


@pytest.mark.parametrize("mismatch, widths, vs_uniform, vs_latest", [
    ([2.0, 1.0, 0.1], [0.5, 0.7, 1.05], 0.3, 1.02),           # poor early proposals, a near-exact last one
    ([1.0, 0.5, 0.3, 0.2, 0.1], [0.6, 0.7, 0.8, 0.85, 0.9], 0.5, 0.95),  # steady improvement
    ([0.3, 0.3, 0.3], [0.9, 0.9, 0.9], 1.01, 0.75),           # all alike: pooling = uniform, beats latest
])
def test_inverse_variance_pooling_vs_uniform_and_latest_only(mismatch, widths, vs_uniform, vs_latest):
    rng = np.random.default_rng(1)
    s = rng.uniform(-1, 1, 3000)
    draws = gaussian_draws(s, 3, mismatch=mismatch, widths=widths, rng=rng)
    exact_f = -exact_log_z(s)

    def rmse(f):
        err = f - exact_f
        return float(np.sqrt(np.mean((err - err.mean()) ** 2)))

    pooled = rmse(pooled_labels(s.size, *draws).pmf_kT.numpy())
    uniform = rmse(pooled_labels(s.size, *draws, rule="uniform").pmf_kT.numpy())
    last = draws[1] == len(mismatch) - 1
    latest = rmse(pooled_labels(s.size, *(d[last] for d in draws)).pmf_kT.numpy())
    assert pooled < vs_uniform * uniform and pooled < vs_latest * latest, (pooled, uniform, latest)


def test_iteration_weights_order_by_proposal_quality():
    rng = np.random.default_rng(2)
    s = rng.uniform(-1, 1, 500)
    p, it, lw, _ = gaussian_draws(s, 4, mismatch=[1.5, 0.5, 0.0], widths=[0.6, 0.9, 1.0], rng=rng)
    c = iteration_weights(p, it, lw)
    c_t = [float(c[it == t][0]) for t in range(3)]
    assert c_t[0] < c_t[1] < c_t[2]
    assert c_t[2] > 100  # the exact proposal has zero log-weight variance: capped, large
    assert torch.equal(iteration_weights(p, it, lw, "uniform"), torch.ones_like(lw))


def test_mean_force_matches_analytic_gradient():
    rng = np.random.default_rng(3)
    s = np.linspace(-1.5, 1.5, 40)
    draws = gaussian_draws(s, 400, mismatch=[0.3], widths=[1.2], rng=rng)
    lab = pooled_labels(s.size, *draws)
    mf = lab.mean_force[:, 0].numpy()
    se = lab.mean_force_se[:, 0].numpy()
    z = (mf - K_SPRING * s) / se
    assert np.all(np.abs(z) < 4.5), np.abs(z).max()
    assert 0.6 < z.std() < 1.5  # the standard errors are honest
    assert np.abs(mf - K_SPRING * s).max() < 0.2


def test_rejected_draws_are_zero_weights():
    point = torch.tensor([0, 0, 0, 0, 1, 1])
    it = torch.zeros(6, dtype=torch.long)
    log_w = torch.tensor([0.0, 0.0, -math.inf, -math.inf, 1.0, 1.0], dtype=torch.float64)
    lab = pooled_labels(2, point, it, log_w, torch.zeros(6, 1, dtype=torch.float64), rule="uniform")
    assert lab.pmf_kT[0].item() == pytest.approx(math.log(2), abs=1e-12)  # half the draws rejected
    assert lab.pmf_kT[1].item() == pytest.approx(-1.0, abs=1e-12)
    assert lab.n_draws.tolist() == [4, 2]
    none = pooled_labels(3, point, it, log_w, torch.zeros(6, 1, dtype=torch.float64))
    assert math.isnan(none.pmf_kT[2].item())  # a point without draws has no label


def test_segment_clipping_equals_row_clipping():
    rng = np.random.default_rng(4)
    rows = torch.as_tensor(rng.normal(size=(6, 7)))
    rows[2, :5] = -math.inf
    seg = torch.arange(6).repeat_interleave(7)
    flat = clip_top_k_segments(rows.reshape(-1), seg, 6, 3).reshape(6, 7)
    expected = clip_top_k(rows, 3)
    expected[2] = rows[2]  # fewer than k finite values: left alone
    assert torch.equal(flat, expected)


def test_a_few_clashes_do_not_decide_the_iteration_weights():
    """Draws with absurd log weights (clashes: energies of 1e4 kT) in a few groups must not change c_t."""
    rng = np.random.default_rng(5)
    s = rng.uniform(-1, 1, 300)
    p, it, lw, _ = gaussian_draws(s, 4, mismatch=[1.0, 0.3], widths=[0.7, 0.95], rng=rng)
    clean = iteration_weights(p, it, lw)
    dirty = lw.clone()
    dirty[torch.nonzero(it == 1)[:5, 0]] = -1e4  # five clashes in the good iteration
    c = iteration_weights(p, it, dirty)
    assert float(c[it == 1][0]) > float(c[it == 0][0])  # the better iteration still weighs more
    assert abs(math.log(float(c[it == 1][0]) / float(clean[it == 1][0]))) < 0.5
