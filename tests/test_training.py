import time

import torch

from cgflow.core.evaluation_counter import EvaluationCounter
from cgflow.core.features import CGFeatures
from cgflow.flows import ConditionalAffineFlow
from cgflow.learning.training import EnergyTimer, reverse_kl_losses
from cgflow.systems.muller_brown import MullerBrownSystem


class EveryOtherRejected(MullerBrownSystem):
    def __init__(self):
        super().__init__()
        self.evaluated = 0

    def valid(self, s, x_fg):
        return torch.arange(len(s)) % 2 == 0

    def log_target(self, s, x_fg):
        self.evaluated += len(s)
        return super().log_target(s, x_fg)


def test_rejected_samples_are_not_evaluated_not_in_the_loss_and_counted():
    system = EveryOtherRejected()
    flow = ConditionalAffineFlow(1, CGFeatures((False,)), [8])
    counter = EvaluationCounter()
    s = torch.full((6, 1), -2.0, dtype=torch.float64)
    loss, ok, _ = reverse_kl_losses(flow, system, s, counter)
    assert system.evaluated == 3
    assert ok.tolist() == [True, False] * 3
    assert torch.isnan(loss[~ok]).all() and torch.isfinite(loss[ok]).all()
    assert (counter.drawn, counter.training, counter.rejected) == (6, 3, 3)
    loss[ok].sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in flow.parameters())


class SlowEnergy(MullerBrownSystem):
    def log_target(self, s, x_fg):
        time.sleep(0.05)
        return super().log_target(s, x_fg)


def test_energy_timer_accumulates_the_time_of_the_energy_calls():
    system = SlowEnergy()
    flow = ConditionalAffineFlow(1, CGFeatures((False,)), [8])
    s = torch.full((4, 1), -2.0, dtype=torch.float64)
    timer = EnergyTimer()
    t0 = time.perf_counter()
    for _ in range(2):
        reverse_kl_losses(flow, system, s, EvaluationCounter(), timer)
    total = time.perf_counter() - t0
    assert 0.1 <= timer.seconds() <= total
    reverse_kl_losses(flow, system, s, EvaluationCounter())  # no timer: still works
    assert timer.seconds() <= total
