"""The active-learning dataset: CG points, each replicated into M copies ("entries") that hold
the last importance weight drawn for them (method spec 3, steps 2, 4a, 5d)."""

from __future__ import annotations

import math

import numpy as np
import torch

NOT_DRAWN, EVALUATED, REJECTED = 0, 1, 2


class ALDataset:
    """CG points with per-copy storage.

    Attributes:
        points: (P, cg_dim) float64 CG points.
        added_in: (P,) int, the AL step that added the point (0: starting data).
        is_train: (P,) bool; the others are test points (diagnostics only).
        log_w: (P, M) float64 last log importance weight of each copy (NaN: none yet).
        status: (P, M) int8: NOT_DRAWN, EVALUATED or REJECTED (by the system's filter) at the
            copy's last draw.
    """

    def __init__(self, cg_dim: int, copies: int):
        self.copies = copies
        self.points = torch.zeros(0, cg_dim, dtype=torch.float64)
        self.added_in = torch.zeros(0, dtype=torch.long)
        self.is_train = torch.zeros(0, dtype=torch.bool)
        self.log_w = torch.zeros(0, copies, dtype=torch.float64)
        self.status = torch.zeros(0, copies, dtype=torch.int8)

    def __len__(self) -> int:
        return self.points.shape[0]

    def add(self, points: torch.Tensor, added_in: int, test_fraction: float, rng: np.random.Generator) -> None:
        """Append points, a random ``test_fraction`` of them as test points."""
        n = points.shape[0]
        n_test = int(round(test_fraction * n))
        is_train = torch.ones(n, dtype=torch.bool)
        is_train[torch.as_tensor(rng.permutation(n)[:n_test], dtype=torch.long)] = False
        self.points = torch.cat([self.points, points.to(torch.float64).cpu()])
        self.added_in = torch.cat([self.added_in, torch.full((n,), added_in, dtype=torch.long)])
        self.is_train = torch.cat([self.is_train, is_train])
        self.log_w = torch.cat([self.log_w, torch.full((n, self.copies), math.nan, dtype=torch.float64)])
        self.status = torch.cat([self.status, torch.zeros(n, self.copies, dtype=torch.int8)])

    @property
    def latest(self) -> int:
        return int(self.added_in.max()) if len(self) else 0

    def _train_groups(self) -> tuple[np.ndarray, np.ndarray]:
        """Flat entry indices of the latest and of the older train points."""
        M = self.copies
        train = self.is_train.numpy()
        latest_pts = np.nonzero(train & (self.added_in.numpy() == self.latest))[0]
        older_pts = np.nonzero(train & (self.added_in.numpy() < self.latest))[0]
        return (latest_pts[:, None] * M + np.arange(M)).ravel(), (older_pts[:, None] * M + np.arange(M)).ravel()

    def epoch_size(self, old_fraction: float, batch_size: int) -> int:
        """Number of entries in one epoch (a multiple of batch_size): the epoch composition rule."""
        latest, older = self._train_groups()
        n = latest.size + min(int(old_fraction * latest.size), older.size)
        return (n // batch_size) * batch_size

    def epoch_entries(self, old_fraction: float, batch_size: int, rng: np.random.Generator) -> torch.Tensor:
        """Entries (flat indices p * M + c) for one epoch of training by energy.

        All train entries added in the latest AL step plus a random min(old_fraction * N_latest,
        N_older) of the older train entries, shuffled, truncated to whole batches.
        Returns (n_batches * batch_size,) long.
        """
        latest, older = self._train_groups()
        n_old = min(int(old_fraction * latest.size), older.size)
        chosen = np.concatenate([latest, rng.choice(older, size=n_old, replace=False)]) if n_old else latest
        chosen = rng.permutation(chosen)
        return torch.as_tensor(chosen[:self.epoch_size(old_fraction, batch_size)], dtype=torch.long)

    def record(self, entries: torch.Tensor, log_w: torch.Tensor, status: torch.Tensor) -> None:
        """Store the outcome of one draw per entry (flat indices)."""
        self.log_w.view(-1)[entries] = log_w.detach().to(torch.float64).cpu()
        self.status.view(-1)[entries] = status.to(torch.int8).cpu()

    def state_dict(self) -> dict:
        return {k: getattr(self, k) for k in ("copies", "points", "added_in", "is_train", "log_w", "status")}

    @classmethod
    def from_state_dict(cls, d: dict) -> "ALDataset":
        ds = cls(d["points"].shape[1], d["copies"])
        for k in ("points", "added_in", "is_train", "log_w", "status"):
            setattr(ds, k, d[k])
        return ds
