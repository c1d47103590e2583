"""Metropolis Monte Carlo in CG space on the ensemble-mean PMF, stopping where the ensemble
disagrees (method spec 2.9)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from tqdm.auto import tqdm

from cgflow.core.geometry import wrap_periodic
from cgflow.core.progress import bars_disabled


@dataclass
class MCResult:
    """Outcome of :func:`find_high_error_points`.

    Attributes:
        points: (n_find, cg_dim) final positions of the first n_find finished chains (by
            chain index), or None when ``max_steps`` passed first (exhausted).
        steps: parallel MC steps taken.
        acceptance: fraction of accepted proposals.
    """

    points: torch.Tensor | None
    steps: int
    acceptance: float

    @property
    def exhausted(self) -> bool:
        return self.points is None


@torch.no_grad()
def find_high_error_points(
    mean_and_std: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]],
    start: torch.Tensor,
    *,
    periodic: tuple[bool, ...],
    step_size: float,
    threshold: float,
    n_find: int,
    min_steps: int,
    max_steps: int,
    domain: tuple[tuple[float, float], ...] | None = None,
    beta: float = 1.0,
    progress: bool = True,
) -> MCResult:
    """Run parallel Metropolis chains on F_mean (at inverse temperature beta) until ``n_find`` chains have
    reached a point where the ensemble std exceeds ``threshold``.

    Args:
        mean_and_std: s (C, d) -> (F mean (C,), std (C,)), both in kT.
        start: (C, d) initial positions (C = number of chains).
        periodic: per CG dim; periodic dims are wrapped to [-pi, pi).
        step_size: std of the Gaussian proposals.
        threshold: a chain finishes when std at its position > threshold (kT) ...
        min_steps: ... and it has taken more than min_steps steps.
        max_steps: give up after this many parallel steps.
        domain: (low, high) per dim; if given, proposals leaving it in a non-periodic dim are
            rejected.
        beta: inverse temperature (1/kT) at which F_mean is sampled; 1 samples the PMF itself,
            smaller values cross barriers sooner.
    """
    s = wrap_periodic(start.clone(), periodic)
    C, d = s.shape
    f, sd = mean_and_std(s)
    active = torch.ones(C, dtype=torch.bool, device=s.device)
    finished_at = torch.full((C,), -1, dtype=torch.long, device=s.device)
    if domain is not None:
        lo = torch.tensor([a for a, _ in domain], dtype=s.dtype, device=s.device)
        hi = torch.tensor([b for _, b in domain], dtype=s.dtype, device=s.device)
        confine = ~torch.tensor(periodic, device=s.device)
    n_acc = 0
    n_prop = 0
    bar = tqdm(total=n_find, desc="MC in CG space", leave=False, disable=bars_disabled(progress), mininterval=0.5)
    n_done = 0
    for step in range(1, max_steps + 1):
        prop = wrap_periodic(s + step_size * torch.randn_like(s), periodic)
        f_new, sd_new = mean_and_std(prop)
        accept = torch.rand(C, dtype=s.dtype, device=s.device) < torch.exp(beta * (f - f_new))
        if domain is not None:
            inside = ((prop >= lo) & (prop <= hi)) | ~confine
            accept &= inside.all(1)
        accept &= active
        accept &= torch.isfinite(f_new)
        s = torch.where(accept[:, None], prop, s)
        f = torch.where(accept, f_new, f)
        sd = torch.where(accept, sd_new, sd)
        n_acc += int(accept.sum())
        n_prop += int(active.sum())
        if step > min_steps:
            newly = active & (sd > threshold)
            if bool(newly.any()):
                finished_at[newly] = step
                active &= ~newly
                k = int((~active).sum())
                bar.update(min(k, n_find) - n_done)
                n_done = min(k, n_find)
                if k >= n_find:
                    bar.close()
                    chains = torch.nonzero(~active).squeeze(1)[:n_find]
                    return MCResult(points=s[chains].clone(), steps=step, acceptance=n_acc / max(n_prop, 1))
    bar.close()
    return MCResult(points=None, steps=max_steps, acceptance=n_acc / max(n_prop, 1))
