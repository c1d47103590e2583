"""Training the conditional flow by example (forward KL) and by energy (reverse KL)."""

from __future__ import annotations

import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass

import numpy as np
import torch
from tqdm.auto import tqdm

from cgflow.core.evaluation_counter import EvaluationCounter
from cgflow.core.progress import bars_disabled
from cgflow.core.system import System
from cgflow.flows.base import ConditionalFlow
from cgflow.learning.dataset import EVALUATED, REJECTED, ALDataset


def train_by_example(flow: ConditionalFlow, s: torch.Tensor, x_fg: torch.Tensor, *, epochs: int, batch_size: int,
                     optimizer: torch.optim.Optimizer, lr: float, generator: torch.Generator,
                     progress: bool = True) -> list[float]:
    """Maximize log q(x_fg | s) on data (s (n, cg_dim), x_fg (n, fg_dim)).  Returns the mean NLL per epoch."""
    for g in optimizer.param_groups:
        g["lr"] = lr
    n = s.shape[0]
    losses = []
    for _ in tqdm(range(epochs), desc="flow by example", leave=False, disable=bars_disabled(progress), mininterval=0.5):
        perm = torch.randperm(n, generator=generator)
        total = 0.0
        for i in range(0, n, batch_size):
            idx = perm[i:i + batch_size]
            loss = -flow.log_prob(x_fg[idx], s[idx]).mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += loss.item() * idx.numel()
        losses.append(total / n)
    return losses


class EnergyTimer:
    """Accumulates the wall time of the energy evaluations (``system.log_target`` calls).

    On the CPU each call is timed with ``time.perf_counter``.  On CUDA a pair of CUDA events is
    recorded around each call instead (no host synchronization in the training loop); the events are
    read, after one synchronization, by :meth:`seconds`, which callers do once per iteration.  The
    interval then runs from the moment the GPU has finished the work queued before the call (the
    flow's sampling) to the moment it has finished the energy's work, so host-side backends (the
    OpenMM pool) are timed correctly too.

    Only the forward evaluation (log-target: reconstruction, log-Jacobian, energy) is timed; its part
    of the backward pass is inside the optimizer step and not separable.
    """

    def __init__(self) -> None:
        self._seconds = 0.0
        self._events: list[tuple[torch.cuda.Event, torch.cuda.Event]] = []

    @contextmanager
    def time(self, device: torch.device):
        if device.type == "cuda":
            stream = torch.cuda.current_stream(device)
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record(stream)
            try:
                yield
            finally:
                end.record(stream)
                self._events.append((start, end))
        else:
            t0 = time.perf_counter()
            try:
                yield
            finally:
                self._seconds += time.perf_counter() - t0

    def seconds(self) -> float:
        """Total seconds so far (synchronizes with the last recorded CUDA event, if any)."""
        if self._events:
            self._events[-1][1].synchronize()
            self._seconds += sum(a.elapsed_time(b) for a, b in self._events) / 1e3
            self._events.clear()
        return self._seconds


@dataclass
class EnergyBatchResult:
    loss: float          # mean of the kept per-sample losses (nan if the step was skipped)
    skipped: bool        # no finite loss or non-finite gradient: no optimizer step


def reverse_kl_losses(flow: ConditionalFlow, system: System, s: torch.Tensor, counter: EvaluationCounter,
                      energy_timer: EnergyTimer | None = None, *, with_grad_s: bool = False):
    """Draw one sample per row of s and return (per-sample loss (B,), accepted mask (B,), grad_s).

    The per-sample loss is log q(x|s) - log p~(x, s) (reverse KL up to a constant); its negative
    is the log importance weight.  Rejected samples (system.valid False) are not evaluated and
    get a NaN loss.  Counts drawn / rejected / evaluated / non-finite configurations.  The
    ``system.log_target`` call is timed by ``energy_timer`` if given.

    ``grad_s`` (B, cg_dim) float64 is d log p~(s, x)/ds at fixed FG coordinates x (the negative
    instantaneous mean force, from the same evaluation: no extra energy) if ``with_grad_s``, else
    None; zero for rejected or non-finite samples.
    """
    x, log_q = flow.sample(s)
    with torch.no_grad():
        ok = system.valid(s, x)
    n_ok = int(ok.sum())
    loss = torch.full_like(log_q, float("nan"))
    grad_s = torch.zeros(s.shape, dtype=torch.float64, device=s.device) if with_grad_s else None
    if n_ok:
        s_ok = s[ok].detach().requires_grad_(with_grad_s)
        with energy_timer.time(s.device) if energy_timer is not None else nullcontext():
            log_p = system.log_target(s_ok, x[ok])
            if with_grad_s:
                finite = torch.isfinite(log_p.detach())
                g, = torch.autograd.grad(torch.where(finite, log_p, torch.zeros_like(log_p)).sum(), s_ok,
                                         retain_graph=True)
                grad_s[ok] = torch.where(finite[:, None], g.detach().to(torch.float64), torch.zeros_like(g))
        loss = loss.masked_scatter(ok, log_q[ok] - log_p) if n_ok < s.shape[0] else log_q - log_p
        counter.nonfinite += int((~torch.isfinite(log_p.detach())).sum())
    counter.drawn += s.shape[0]
    counter.training += n_ok
    counter.rejected += s.shape[0] - n_ok
    return loss, ok, grad_s


def energy_step(flow: ConditionalFlow, system: System, dataset: ALDataset, entries: torch.Tensor,
                optimizer: torch.optim.Optimizer, counter: EvaluationCounter, *, drop_top_k: int,
                grad_clip: float, energy_timer: EnergyTimer | None = None, iteration: int = 0,
                with_grad_s: bool = False) -> EnergyBatchResult:
    """One optimizer step of training by energy on a batch of dataset entries (flat indices).

    Every draw is recorded: the copy's latest weight (``dataset.record``) and the run-long draw
    log (``dataset.draws``, tagged with ``iteration``; with d log p~/ds if ``with_grad_s``)."""
    device = next(flow.parameters()).device
    points = entries // dataset.copies
    s = dataset.points[points].to(device)
    loss, ok, grad_s = reverse_kl_losses(flow, system, s, counter, energy_timer, with_grad_s=with_grad_s)
    dataset.record(entries, -loss.detach(), torch.where(ok, EVALUATED, REJECTED))
    dataset.draws.append(points, iteration, -loss.detach(), grad_s)
    finite = torch.isfinite(loss)
    kept = loss[finite]
    if drop_top_k and kept.numel() > drop_top_k:
        kept = torch.topk(kept, kept.numel() - drop_top_k, largest=False).values
    if kept.numel() == 0:
        return EnergyBatchResult(loss=float("nan"), skipped=True)
    mean = kept.mean()
    optimizer.zero_grad(set_to_none=True)
    mean.backward()
    norm = torch.nn.utils.clip_grad_norm_(flow.parameters(), grad_clip)
    if not torch.isfinite(norm):
        optimizer.zero_grad(set_to_none=True)
        return EnergyBatchResult(loss=mean.item(), skipped=True)
    optimizer.step()
    return EnergyBatchResult(loss=mean.item(), skipped=False)


def train_by_energy_epoch(flow, system, dataset: ALDataset, optimizer, counter: EvaluationCounter, *,
                          batch_size: int, old_fraction: float, drop_top_k: int, grad_clip: float,
                          rng: np.random.Generator, progress_bar=None, energy_timer: EnergyTimer | None = None,
                          iteration: int = 0, with_grad_s: bool = False) -> dict:
    """One epoch (spec 3 step 4a/b).  Returns {'loss': mean batch loss, 'skipped': n skipped steps, 'steps': n}.
    ``energy_timer`` accumulates the time of the energy evaluations; draws are logged with ``iteration``
    (and their d log p~/ds if ``with_grad_s``)."""
    entries = dataset.epoch_entries(old_fraction, batch_size, rng)
    losses, skipped = [], 0
    for i in range(0, entries.numel(), batch_size):
        r = energy_step(flow, system, dataset, entries[i:i + batch_size], optimizer, counter,
                        drop_top_k=drop_top_k, grad_clip=grad_clip, energy_timer=energy_timer,
                        iteration=iteration, with_grad_s=with_grad_s)
        skipped += r.skipped
        if np.isfinite(r.loss):
            losses.append(r.loss)
        if progress_bar is not None:
            progress_bar.update(1)
    return {"loss": float(np.mean(losses)) if losses else float("nan"), "skipped": skipped,
            "steps": entries.numel() // batch_size}


@torch.no_grad()
def test_loss(flow, system, dataset: ALDataset, counter: EvaluationCounter,
              energy_timer: EnergyTimer | None = None) -> float:
    """Diagnostic reverse-KL loss (kT) at the test CG points, one sample each; counted as diagnostics
    (energy time in ``energy_timer`` if given)."""
    pts = dataset.points[~dataset.is_train]
    if pts.shape[0] == 0:
        return float("nan")
    device = next(flow.parameters()).device
    scratch = EvaluationCounter()
    loss, _, _ = reverse_kl_losses(flow, system, pts.to(device), scratch, energy_timer)
    counter.diagnostics += scratch.training
    loss = loss[torch.isfinite(loss)]
    return float(loss.mean()) if loss.numel() else float("nan")
