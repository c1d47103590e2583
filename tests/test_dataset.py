import numpy as np
import torch

from cgflow.learning.dataset import ALDataset


def test_epoch_composition_rule():
    rng = np.random.default_rng(0)
    ds = ALDataset(cg_dim=1, copies=30)
    ds.add(torch.zeros(100, 1), added_in=0, test_fraction=0.2, rng=rng)   # 80 train points
    entries = ds.epoch_entries(0.3, 8, rng)
    assert entries.numel() == 2400 and len(set(entries.tolist())) == 2400   # iteration 1: all of them
    ds.add(torch.ones(65, 1), added_in=1, test_fraction=0.2, rng=rng)     # 52 train points
    entries = ds.epoch_entries(0.3, 8, rng)
    # 1560 latest + 468 older entries, floor to whole batches of 8 -> 253 batches (method spec 7.3)
    assert entries.numel() == 253 * 8 == ds.epoch_size(0.3, 8)
    pts = ds.points[entries // 30, 0]
    assert (pts == 1).sum() >= 1560 - 8 and (pts == 0).sum() >= 468 - 8
    assert not (~ds.is_train[entries // 30]).any()   # test points are never trained on


def test_state_dict_roundtrip():
    ds = ALDataset(cg_dim=2, copies=3)
    ds.add(torch.randn(5, 2, dtype=torch.float64), 0, 0.2, np.random.default_rng(0))
    ds.record(torch.tensor([0, 4]), torch.tensor([1.5, -2.0], dtype=torch.float64), torch.tensor([1, 2]))
    other = ALDataset.from_state_dict(ds.state_dict())
    assert torch.equal(other.points, ds.points) and torch.equal(other.status, ds.status)
    assert other.log_w.view(-1)[4].item() == -2.0


def test_old_entries_follow_their_priority():
    import numpy as np

    ds = ALDataset(cg_dim=1, copies=2)
    rng = np.random.default_rng(0)
    ds.add(torch.zeros(10, 1), added_in=0, test_fraction=0.0, rng=rng)
    ds.add(torch.ones(10, 1), added_in=1, test_fraction=0.0, rng=rng)
    ds.old_priority = torch.tensor([1.0] + [0.0] * 19, dtype=torch.float64)  # only point 0 of the old ones
    ds.old_priority[1] = 1.0
    for _ in range(5):
        e = ds.epoch_entries(old_fraction=0.2, batch_size=1, rng=rng).numpy()
        old_points = set((e[e < 20] // 2).tolist())
        assert old_points <= {0, 1} and len(e[e < 20]) == 4
    restored = ALDataset.from_state_dict(ds.state_dict())
    assert torch.equal(restored.old_priority, ds.old_priority)
