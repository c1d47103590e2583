import math

import numpy as np
import pytest
import torch

from cgflow.core.features import CGFeatures
from cgflow.pmf.ensemble import FitOptions, PMFEnsemble


def test_mean_and_unbiased_std_match_members():
    ens = PMFEnsemble(CGFeatures((False, True)), 5, [8, 8], "tanh")
    s = torch.randn(7, 2, dtype=torch.float64)
    members = ens(s)
    assert members.shape == (5, 7)
    mean, std = ens.mean_and_std(s)
    m = members.detach().numpy()
    assert np.allclose(mean.detach().numpy(), m.mean(0))
    assert np.allclose(std.detach().numpy(), m.std(0, ddof=1))


def test_periodic_inputs_give_periodic_predictions():
    ens = PMFEnsemble(CGFeatures((True,)), 3, [8], "tanh")
    s = torch.tensor([[-3.0], [0.5]], dtype=torch.float64)
    assert torch.allclose(ens(s), ens(s + 2 * torch.pi), atol=1e-12)


@pytest.mark.parametrize("split", ["fraction", "bagging"])
def test_fit_learns_a_smooth_function_and_disagrees_away_from_data(split):
    s = torch.linspace(-1, 1, 200, dtype=torch.float64)[:, None]
    y = 3 * torch.sin(2 * s[:, 0]) + 0.05 * torch.randn(200, dtype=torch.float64)
    ens = PMFEnsemble(CGFeatures((False,)), 6, [32, 32], "tanh")
    res = ens.fit(s, y, FitOptions(epochs=400, batch_size=1000, lr=1e-2, split=split, train_fraction=0.8, progress=False), rng=np.random.default_rng(0))
    assert res["ensemble_heldout_mse"] < 0.05
    with torch.no_grad():
        mean, std = ens.mean_and_std(torch.tensor([[0.3], [6.0]], dtype=torch.float64))
    assert abs(mean[0].item() - 3 * np.sin(0.6)) < 0.15
    assert std[1] > 5 * std[0]  # far from the data the members disagree


def _torus_function(s):
    """F(s) = sin(s1) + 0.5 cos(2 s2) and its gradient, on the (phi, psi) torus."""
    f = torch.sin(s[:, 0]) + 0.5 * torch.cos(2 * s[:, 1])
    g = torch.stack([torch.cos(s[:, 0]), -torch.sin(2 * s[:, 1])], dim=1)
    return f, g


def test_sobolev_fit_recovers_a_known_function_better_than_values_alone():
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    s = (torch.rand(60, 2, generator=gen, dtype=torch.float64) * 2 - 1) * math.pi
    f, g = _torus_function(s)
    y = f + 0.3 * torch.randn(60, generator=gen, dtype=torch.float64)    # noisy values
    gy = g + 0.1 * torch.randn(60, 2, generator=gen, dtype=torch.float64)  # good gradients
    grid = torch.stack(torch.meshgrid(*[torch.linspace(-math.pi, math.pi, 30, dtype=torch.float64)] * 2,
                                      indexing="ij"), -1).reshape(-1, 2)
    f_grid, _ = _torus_function(grid)

    def rmse(grads, weight):
        ens = PMFEnsemble(CGFeatures((True, True)), 4, [32, 32], "tanh")
        out = ens.fit(s, y, FitOptions(epochs=400, batch_size=1000, lr=1e-2, progress=False, gradient_weight=weight, train_fraction=1.0), rng=np.random.default_rng(0), grads=grads)
        with torch.no_grad():
            err = ens.mean_and_std(grid)[0] - f_grid
        return float(((err - err.mean()) ** 2).mean().sqrt()), out

    values_only, _ = rmse(None, 0.0)
    sobolev, out = rmse(gy, 1.0)
    assert sobolev < 0.15 and sobolev < 0.6 * values_only, (sobolev, values_only)
    assert out["ensemble_grad_train_mse"] < 0.05  # the fitted gradients follow the labels


def test_warm_start_keeps_the_previous_fit():
    s = (torch.rand(40, 2, dtype=torch.float64) * 2 - 1) * math.pi
    f, _ = _torus_function(s)
    ens = PMFEnsemble(CGFeatures((True, True)), 3, [16], "tanh")
    ens.fit(s, f, FitOptions(epochs=300, batch_size=1000, lr=1e-2, progress=False), rng=np.random.default_rng(0))
    before = ens.mean_and_std(s)[0].detach().clone()
    ens.fit(s, f, FitOptions(epochs=1, batch_size=1000, lr=1e-6, progress=False, warm_start=True), rng=np.random.default_rng(1))
    assert torch.allclose(ens.mean_and_std(s)[0], before, atol=1e-3)
    ens.fit(s, f, FitOptions(epochs=1, batch_size=1000, lr=1e-6, progress=False), rng=np.random.default_rng(1))
    assert not torch.allclose(ens.mean_and_std(s)[0], before, atol=1e-2)  # a cold fit starts over


def test_patience_stops_a_converged_fit_early():
    s = (torch.rand(40, 2, dtype=torch.float64) * 2 - 1) * math.pi
    f, _ = _torus_function(s)
    f = f + 0.3 * torch.randn(40, dtype=torch.float64)  # noisy labels: the loss has a floor
    ens = PMFEnsemble(CGFeatures((True, True)), 3, [16], "tanh")
    ens.fit(s, f, FitOptions(epochs=400, batch_size=1000, lr=1e-2, progress=False), rng=np.random.default_rng(0))
    out = ens.fit(s, f, FitOptions(epochs=400, batch_size=1000, lr=1e-7, progress=False, warm_start=True, patience=5), rng=np.random.default_rng(1))
    assert out["ensemble_epochs"] < 50  # nothing left to learn at this lr: stops after ~patience epochs
    full = ens.fit(s, f, FitOptions(epochs=30, batch_size=1000, lr=1e-5, progress=False, warm_start=True), rng=np.random.default_rng(1))
    assert full["ensemble_epochs"] == 30


def test_stable_membership_keeps_each_points_models():
    from cgflow.pmf.ensemble import _hash_uniform

    keys = np.arange(1000, dtype=np.uint64)
    u0, u1 = _hash_uniform(keys, 0), _hash_uniform(keys, 1)
    assert abs(u0.mean() - 0.5) < 0.03 and abs(np.corrcoef(u0, u1)[0, 1]) < 0.1  # uniform, independent per model
    assert np.array_equal(_hash_uniform(keys[::7], 0), u0[::7])  # a point's number depends only on its key
    s = (torch.rand(50, 2, dtype=torch.float64) * 2 - 1) * math.pi
    f, _ = _torus_function(s)
    ens = PMFEnsemble(CGFeatures((True, True)), 4, [8], "tanh")
    a = ens.fit(s, f, FitOptions(epochs=1, batch_size=1000, lr=1e-3, progress=False), rng=np.random.default_rng(0), member_keys=torch.arange(50))
    b = ens.fit(s[:40], f[:40], FitOptions(epochs=1, batch_size=1000, lr=1e-3, progress=False, warm_start=True), rng=np.random.default_rng(5), member_keys=torch.arange(40))
    assert np.isfinite(a["ensemble_train_mse"]) and np.isfinite(b["ensemble_train_mse"])


def test_float32_networks_fit_as_well_as_float64_and_return_float64():
    """ensemble.dtype float32 runs only the networks in float32: the Sobolev fit of a known torus function
    is as accurate as in float64, and values come back float64 around a float64 offset (a constant far
    from zero is kept to float64 precision, which float32 arithmetic on the labels would lose)."""
    gen = torch.Generator().manual_seed(3)
    s = (torch.rand(300, 2, generator=gen, dtype=torch.float64) * 2 - 1) * math.pi
    f, g = _torus_function(s)
    big = 1.0e8 + 0.123456789  # labels far from zero: float32 spacing there is 8 kT
    grid = torch.stack(torch.meshgrid(*[torch.linspace(-math.pi, math.pi, 25, dtype=torch.float64)] * 2,
                                      indexing="ij"), -1).reshape(-1, 2)
    f_grid, _ = _torus_function(grid)
    errs = {}
    for dtype in (torch.float64, torch.float32):
        torch.manual_seed(0)
        ens = PMFEnsemble(CGFeatures((True, True)), 4, [32, 32], "tanh", dtype=dtype)
        assert ens.weights[0].dtype == dtype
        ens.fit(s, f + big, FitOptions(epochs=300, batch_size=1000, lr=1e-2, progress=False, gradient_weight=1.0),
                rng=np.random.default_rng(0), grads=g)
        with torch.no_grad():
            mean, std = ens.mean_and_std(grid)
        assert mean.dtype == torch.float64 and std.dtype == torch.float64
        errs[dtype] = float((mean - big - f_grid).abs().max())
    assert errs[torch.float32] < 0.1 and errs[torch.float32] < 2 * errs[torch.float64] + 0.02, errs


def test_ensemble_rejects_an_unsupported_dtype():
    with pytest.raises(ValueError, match="float64 or float32"):
        PMFEnsemble(CGFeatures((True,)), 2, [4], "tanh", dtype=torch.float16)
