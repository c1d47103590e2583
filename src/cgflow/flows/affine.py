"""Conditional affine (Gaussian) flow: x = mu(s) + exp(log_sigma(s)) * z.

For a 1-D FG coordinate this is the Müller-Brown flow of the method spec (section 5.2): two
MLPs of the CG features, sigmoid activations.  We parametrize the scale by its logarithm
(the reference code uses sigma directly with log|sigma|), which keeps it invertible.
"""

from __future__ import annotations

import torch
from torch import nn

from cgflow.core.features import CGFeatures
from cgflow.flows.base import ConditionalFlow

ACTIVATIONS = {"sigmoid": nn.Sigmoid, "relu": nn.ReLU, "tanh": nn.Tanh, "silu": nn.SiLU}


def mlp(n_in: int, hidden: list[int], n_out: int, activation: str) -> nn.Sequential:
    layers: list[nn.Module] = []
    for h in hidden:
        layers += [nn.Linear(n_in, h), ACTIVATIONS[activation]()]
        n_in = h
    layers.append(nn.Linear(n_in, n_out))
    return nn.Sequential(*layers)


class ConditionalAffineFlow(ConditionalFlow):
    """Diagonal affine flow conditioned on CG features.  FG dimensions must be non-periodic."""

    def __init__(self, fg_dim: int, features: CGFeatures, hidden: list[int], activation: str = "sigmoid"):
        super().__init__(fg_dim)
        self.features = features
        self.shift_net = mlp(features.n_features, hidden, fg_dim, activation).double()
        self.log_scale_net = mlp(features.n_features, hidden, fg_dim, activation).double()

    def _params(self, s):
        h = self.features(s)
        return self.shift_net(h), self.log_scale_net(h)

    def forward(self, z, s):
        mu, log_sigma = self._params(s)
        return mu + torch.exp(log_sigma) * z, log_sigma.sum(-1)

    def inverse(self, x, s):
        mu, log_sigma = self._params(s)
        return (x - mu) * torch.exp(-log_sigma), -log_sigma.sum(-1)
