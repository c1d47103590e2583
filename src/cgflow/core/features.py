"""Network input features of coarse-grained coordinates.

Periodic coordinates (radians) enter as (cos, sin); the others are standardized with a fixed
mean and standard deviation.  Used by the conditional flow (context) and the PMF ensemble.
"""

from __future__ import annotations

import torch
from torch import nn


class CGFeatures(nn.Module):
    """Map s (..., d) to features (..., n_features).

    Args:
        periodic: per CG dimension, whether it is an angle (-> cos, sin).
        mean, std: per dimension standardization for the non-periodic ones (ignored for periodic).
    """

    def __init__(self, periodic: tuple[bool, ...], mean=None, std=None):
        super().__init__()
        d = len(periodic)
        self.periodic = tuple(bool(p) for p in periodic)
        mean = torch.zeros(d, dtype=torch.float64) if mean is None else torch.as_tensor(mean, dtype=torch.float64)
        std = torch.ones(d, dtype=torch.float64) if std is None else torch.as_tensor(std, dtype=torch.float64)
        self.register_buffer("mean", mean.reshape(d).clone())
        self.register_buffer("std", std.reshape(d).clone())

    @property
    def n_features(self) -> int:
        return sum(2 if p else 1 for p in self.periodic)

    def set_standardization(self, mean, std) -> None:
        self.mean.copy_(torch.as_tensor(mean, dtype=self.mean.dtype).reshape(self.mean.shape))
        self.std.copy_(torch.as_tensor(std, dtype=self.std.dtype).reshape(self.std.shape))

    def forward(self, s: torch.Tensor) -> torch.Tensor:
        cols = []
        for i, p in enumerate(self.periodic):
            if p:
                cols += [torch.cos(s[..., i]), torch.sin(s[..., i])]
            else:
                cols.append((s[..., i] - self.mean[i].to(s.dtype)) / self.std[i].to(s.dtype))
        return torch.stack(cols, dim=-1)
