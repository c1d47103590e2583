import numpy as np
import pytest
import torch

from cgflow.ensemble import PMFEnsemble
from cgflow.features import CGFeatures


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
    res = ens.fit(s, y, epochs=400, batch_size=1000, lr=1e-2, split=split, train_fraction=0.8,
                  rng=np.random.default_rng(0), progress=False)
    assert res["ensemble_heldout_mse"] < 0.05
    with torch.no_grad():
        mean, std = ens.mean_and_std(torch.tensor([[0.3], [6.0]], dtype=torch.float64))
    assert abs(mean[0].item() - 3 * np.sin(0.6)) < 0.15
    assert std[1] > 5 * std[0]  # far from the data the members disagree
