"""Training the conditional flow by example (forward KL) and by energy (reverse KL)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from tqdm.auto import tqdm

from cgflow.dataset import EVALUATED, REJECTED, ALDataset
from cgflow.evaluation_counter import EvaluationCounter
from cgflow.flows.base import ConditionalFlow
from cgflow.system import System


def train_by_example(flow: ConditionalFlow, s: torch.Tensor, x_fg: torch.Tensor, *, epochs: int, batch_size: int,
                     optimizer: torch.optim.Optimizer, lr: float, generator: torch.Generator,
                     progress: bool = True) -> list[float]:
    """Maximize log q(x_fg | s) on data (s (n, cg_dim), x_fg (n, fg_dim)).  Returns the mean NLL per epoch."""
    for g in optimizer.param_groups:
        g["lr"] = lr
    n = s.shape[0]
    losses = []
    for _ in tqdm(range(epochs), desc="flow by example", leave=False, disable=not progress, mininterval=0.5):
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


@dataclass
class EnergyBatchResult:
    loss: float          # mean of the kept per-sample losses (nan if the step was skipped)
    skipped: bool        # no finite loss or non-finite gradient: no optimizer step


def reverse_kl_losses(flow: ConditionalFlow, system: System, s: torch.Tensor, counter: EvaluationCounter):
    """Draw one sample per row of s and return (per-sample loss (B,), accepted mask (B,)).

    The per-sample loss is log q(x|s) - log p~(x, s) (reverse KL up to a constant); its negative
    is the log importance weight.  Rejected samples (system.valid False) are not evaluated and
    get a NaN loss.  Counts drawn / rejected / evaluated / non-finite configurations.
    """
    x, log_q = flow.sample(s)
    with torch.no_grad():
        ok = system.valid(s, x)
    n_ok = int(ok.sum())
    loss = torch.full_like(log_q, float("nan"))
    if n_ok:
        log_p = system.log_target(s[ok], x[ok])
        loss = loss.masked_scatter(ok, log_q[ok] - log_p) if n_ok < s.shape[0] else log_q - log_p
        counter.nonfinite += int((~torch.isfinite(log_p.detach())).sum())
    counter.drawn += s.shape[0]
    counter.training += n_ok
    counter.rejected += s.shape[0] - n_ok
    return loss, ok


def energy_step(flow: ConditionalFlow, system: System, dataset: ALDataset, entries: torch.Tensor,
                optimizer: torch.optim.Optimizer, counter: EvaluationCounter, *, drop_top_k: int,
                grad_clip: float) -> EnergyBatchResult:
    """One optimizer step of training by energy on a batch of dataset entries (flat indices)."""
    device = next(flow.parameters()).device
    s = dataset.points[entries // dataset.copies].to(device)
    loss, ok = reverse_kl_losses(flow, system, s, counter)
    dataset.record(entries, -loss.detach(), torch.where(ok, EVALUATED, REJECTED))
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
                          rng: np.random.Generator, progress_bar=None) -> dict:
    """One epoch (spec 3 step 4a/b).  Returns {'loss': mean batch loss, 'skipped': n skipped steps, 'steps': n}."""
    entries = dataset.epoch_entries(old_fraction, batch_size, rng)
    losses, skipped = [], 0
    for i in range(0, entries.numel(), batch_size):
        r = energy_step(flow, system, dataset, entries[i:i + batch_size], optimizer, counter,
                        drop_top_k=drop_top_k, grad_clip=grad_clip)
        skipped += r.skipped
        if np.isfinite(r.loss):
            losses.append(r.loss)
        if progress_bar is not None:
            progress_bar.update(1)
    return {"loss": float(np.mean(losses)) if losses else float("nan"), "skipped": skipped,
            "steps": entries.numel() // batch_size}


@torch.no_grad()
def test_loss(flow, system, dataset: ALDataset, counter: EvaluationCounter) -> float:
    """Diagnostic reverse-KL loss (kT) at the test CG points, one sample each; counted as diagnostics."""
    pts = dataset.points[~dataset.is_train]
    if pts.shape[0] == 0:
        return float("nan")
    device = next(flow.parameters()).device
    scratch = EvaluationCounter()
    loss, _ = reverse_kl_losses(flow, system, pts.to(device), scratch)
    counter.diagnostics += scratch.training
    loss = loss[torch.isfinite(loss)]
    return float(loss.mean()) if loss.numel() else float("nan")
