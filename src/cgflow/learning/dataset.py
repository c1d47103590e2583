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
        draws: every draw of the run (the pool behind pooled and mean-force labels), see
            :class:`DrawLog`.
    """

    def __init__(self, cg_dim: int, copies: int):
        self.copies = copies
        self.points = torch.zeros(0, cg_dim, dtype=torch.float64)
        self.added_in = torch.zeros(0, dtype=torch.long)
        self.is_train = torch.zeros(0, dtype=torch.bool)
        self.log_w = torch.zeros(0, copies, dtype=torch.float64)
        self.status = torch.zeros(0, copies, dtype=torch.int8)
        self.draws = DrawLog(cg_dim)
        # (P,) non-negative weights for choosing the older entries of an epoch (None: uniform)
        self.old_priority: torch.Tensor | None = None

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
        N_older) of the older train entries (uniformly, or with probability proportional to
        ``old_priority`` of their point where set), shuffled, truncated to whole batches.
        Returns (n_batches * batch_size,) long.
        """
        latest, older = self._train_groups()
        n_old = min(int(old_fraction * latest.size), older.size)
        p = None
        if n_old and self.old_priority is not None:
            pr = self.old_priority.numpy()[older // self.copies].astype(np.float64)
            if np.isfinite(pr).all() and (pr > 0).sum() >= n_old:
                p = pr / pr.sum()
        chosen = np.concatenate([latest, rng.choice(older, size=n_old, replace=False, p=p)]) if n_old else latest
        chosen = rng.permutation(chosen)
        return torch.as_tensor(chosen[:self.epoch_size(old_fraction, batch_size)], dtype=torch.long)

    def record(self, entries: torch.Tensor, log_w: torch.Tensor, status: torch.Tensor) -> None:
        """Store the outcome of one draw per entry (flat indices)."""
        self.log_w.view(-1)[entries] = log_w.detach().to(torch.float64).cpu()
        self.status.view(-1)[entries] = status.to(torch.int8).cpu()

    def state_dict(self) -> dict:
        d = {k: getattr(self, k) for k in ("copies", "points", "added_in", "is_train", "log_w", "status")}
        d["draws"] = self.draws.state_dict()
        d["old_priority"] = self.old_priority
        return d

    @classmethod
    def from_state_dict(cls, d: dict) -> ALDataset:
        ds = cls(d["points"].shape[1], d["copies"])
        for k in ("points", "added_in", "is_train", "log_w", "status"):
            setattr(ds, k, d[k])
        if "draws" in d:
            ds.draws = DrawLog.from_state_dict(d["draws"])
        ds.old_priority = d.get("old_priority")
        return ds


class DrawLog:
    """Every flow draw at a train CG point over the whole run, for labels that reuse them all.

    Each draw i of the flow q_t (the flow's state when it was drawn) at CG point s_p is one
    importance-sampling estimate ``w_i = p~(x_i, s_p) / q_t(x_i | s_p)`` of Z(s_p), unbiased whatever
    the flow was, so all of them can be pooled (:mod:`cgflow.pmf.pooled_labels`).

    Columns (N draws):
        point: (N,) int64, index of the CG point in the dataset.
        iteration: (N,) int64, the AL iteration in which it was drawn.
        log_w: (N,) float64, log p~ - log q at draw time (kT units of -u); -inf for a draw the system's
            filter rejected (a zero-weight sample) or whose energy was not finite.
        grad_s: (N, cg_dim) float64, d log p~(s, x_fg) / ds at fixed FG coordinates (the negative
            instantaneous mean force, 1/rad or 1/CG-unit); zero where log_w is -inf.
    """

    _KEYS = ("point", "iteration", "log_w", "grad_s")

    def __init__(self, cg_dim: int):
        self.cg_dim = cg_dim
        self._chunks: list[dict[str, torch.Tensor]] = []
        self._cat: dict[str, torch.Tensor] | None = None

    def append(self, point: torch.Tensor, iteration: int, log_w: torch.Tensor, grad_s: torch.Tensor | None) -> None:
        n = point.numel()
        log_w = log_w.detach().to(torch.float64).cpu().reshape(n)
        log_w = torch.where(torch.isfinite(log_w), log_w, torch.full_like(log_w, -math.inf))
        if grad_s is None:
            grad_s = torch.zeros(n, self.cg_dim, dtype=torch.float64)
        grad_s = grad_s.detach().to(torch.float64).cpu().reshape(n, self.cg_dim)
        grad_s = torch.where(torch.isfinite(log_w)[:, None] & torch.isfinite(grad_s), grad_s,
                             torch.zeros_like(grad_s))
        self._chunks.append({"point": point.detach().cpu().to(torch.long).reshape(n),
                             "iteration": torch.full((n,), int(iteration), dtype=torch.long),
                             "log_w": log_w, "grad_s": grad_s})
        self._cat = None

    def columns(self) -> dict[str, torch.Tensor]:
        """All draws as one dict of tensors (concatenated once, cached until the next append)."""
        if self._cat is None:
            if self._chunks:
                self._cat = {k: torch.cat([c[k] for c in self._chunks]) for k in self._KEYS}
                self._chunks = [self._cat]
            else:
                self._cat = {"point": torch.zeros(0, dtype=torch.long), "iteration": torch.zeros(0, dtype=torch.long),
                             "log_w": torch.zeros(0, dtype=torch.float64),
                             "grad_s": torch.zeros(0, self.cg_dim, dtype=torch.float64)}
        return self._cat

    def __len__(self) -> int:
        return sum(c["point"].numel() for c in self._chunks)

    def state_dict(self) -> dict:
        return {"cg_dim": self.cg_dim, **self.columns()}

    @classmethod
    def from_state_dict(cls, d: dict) -> DrawLog:
        log = cls(int(d["cg_dim"]))
        if d["point"].numel():
            log._chunks = [{k: d[k] for k in cls._KEYS}]
        return log
