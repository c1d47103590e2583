import torch

from cgflow.sampling.mc import find_high_error_points


def synthetic(s):
    """A flat-ish PMF whose ensemble std is high only for s_0 > 1.5."""
    f = 0.1 * (s**2).sum(1)
    std = torch.where(s[:, 0] > 1.5, torch.full_like(f, 1.0), torch.full_like(f, 0.05))
    return f, std


def test_chains_stop_in_the_high_std_region():
    start = torch.zeros(20, 2, dtype=torch.float64)
    res = find_high_error_points(synthetic, start, periodic=(False, False), step_size=0.2, threshold=0.5,
                                 n_find=5, min_steps=3, max_steps=20000, progress=False)
    assert not res.exhausted
    assert res.points.shape == (5, 2)
    assert (res.points[:, 0] > 1.5).all()
    assert res.steps > 3


def test_exhausted_when_no_point_is_uncertain_enough():
    start = torch.zeros(10, 1, dtype=torch.float64)
    res = find_high_error_points(synthetic, start, periodic=(False,), step_size=0.2, threshold=2.0,
                                 n_find=1, min_steps=0, max_steps=200, progress=False)
    assert res.exhausted and res.steps == 200


def test_domain_confinement_and_periodic_wrap():
    start = torch.zeros(30, 2, dtype=torch.float64)
    res = find_high_error_points(lambda s: (torch.zeros(len(s), dtype=s.dtype), torch.zeros(len(s), dtype=s.dtype)),
                                 start, periodic=(True, False), step_size=1.0, threshold=1.0, n_find=1,
                                 min_steps=0, max_steps=300, domain=((-torch.pi, torch.pi), (-0.5, 0.5)),
                                 progress=False)
    assert res.exhausted  # never uncertain; only checks it ran within bounds without error


def test_stops_at_first_chains_by_index():
    def std_by_start(s):
        # chains are 1-D, std high exactly where s > 0.5
        return torch.zeros(len(s), dtype=s.dtype), (s[:, 0] > 0.5).to(s.dtype)
    start = torch.tensor([[0.0], [0.6], [0.7], [0.0]], dtype=torch.float64)
    res = find_high_error_points(std_by_start, start, periodic=(False,), step_size=1e-6, threshold=0.5, n_find=2,
                                 min_steps=0, max_steps=10, progress=False)
    assert torch.allclose(res.points[:, 0], torch.tensor([0.6, 0.7], dtype=torch.float64), atol=1e-4)
