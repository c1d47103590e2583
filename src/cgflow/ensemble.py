"""An ensemble of K small MLPs regressing the PMF F(s) (kT); its spread is the acquisition signal.

All K networks are trained jointly as batched matrix products (weights of shape (K, n_in, n_out)),
each on its own subset of the CG points (method spec 2.8).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from cgflow.features import CGFeatures

_ACT = {"sigmoid": torch.sigmoid, "relu": torch.relu, "tanh": torch.tanh, "silu": nn.functional.silu}


class PMFEnsemble(nn.Module):
    """K MLPs F_m(features(s)).

    Args:
        features: CG feature map (its standardization is refit in :meth:`fit`).
        n_models: K.
        hidden: hidden layer widths.
        activation: sigmoid | relu | tanh | silu.
        init: "xavier" (Xavier-uniform weights, zero biases) or "random_scale" (weights and
            biases ~ N(0, sigma) with sigma ~ U(0.1, 3) drawn per layer and model).
    """

    def __init__(self, features: CGFeatures, n_models: int, hidden: list[int], activation: str = "sigmoid",
                 init: str = "xavier"):
        super().__init__()
        self.features = features
        self.n_models = n_models
        self.activation = activation
        self.init = init
        sizes = [features.n_features, *hidden, 1]
        self.weights = nn.ParameterList(
            [nn.Parameter(torch.empty(n_models, a, b, dtype=torch.float64)) for a, b in zip(sizes[:-1], sizes[1:])])
        self.biases = nn.ParameterList(
            [nn.Parameter(torch.empty(n_models, 1, b, dtype=torch.float64)) for b in sizes[1:]])
        self.register_buffer("offset", torch.zeros((), dtype=torch.float64))
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        for w, b in zip(self.weights, self.biases):
            if self.init == "xavier":
                bound = math.sqrt(6.0 / (w.shape[1] + w.shape[2]))
                w.uniform_(-bound, bound)
                b.zero_()
            elif self.init == "random_scale":
                sigma = torch.empty(self.n_models, 1, 1, dtype=w.dtype, device=w.device).uniform_(0.1, 3.0)
                w.normal_().mul_(sigma)
                b.normal_().mul_(sigma)
            else:
                raise ValueError(f"unknown ensemble init {self.init!r}")

    def _forward_features(self, h: torch.Tensor) -> torch.Tensor:
        """h: (K, B, n_features) -> (K, B)."""
        act = _ACT[self.activation]
        n = len(self.weights)
        for i, (w, b) in enumerate(zip(self.weights, self.biases)):
            h = torch.baddbmm(b, h, w)
            if i < n - 1:
                h = act(h)
        return h.squeeze(-1) + self.offset

    def forward(self, s: torch.Tensor) -> torch.Tensor:
        """Per-model PMF predictions, (K, B) kT, for s (B, cg_dim)."""
        h = self.features(s)
        return self._forward_features(h.unsqueeze(0).expand(self.n_models, -1, -1))

    def mean_and_std(self, s: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Ensemble mean and unbiased (K-1) standard deviation, each (B,) kT."""
        f = self.forward(s)
        return f.mean(0), f.std(0, unbiased=True)

    def fit(self, s: torch.Tensor, labels: torch.Tensor, *, epochs: int, batch_size: int, lr: float,
            split: str = "fraction", train_fraction: float = 0.8, rng: np.random.Generator,
            progress: bool = True) -> dict:
        """Re-initialize and train every model on its own subset of (s, labels).

        Args:
            s: (P, cg_dim) CG points; labels: (P,) PMF labels in kT (finite).
            split: "fraction": each model gets its own random ``train_fraction`` of the points;
                "bagging": one common split (``train_fraction`` for training), and each model a
                bootstrap resample of the training part.
        Returns:
            dict with the mean train and held-out MSE over models (kT^2).
        """
        P = s.shape[0]
        if P < 2:
            raise ValueError(f"the ensemble needs at least 2 labelled CG points, got {P}")
        K = self.n_models
        # standardize non-periodic inputs with the current CG set; centre labels
        self.features.set_standardization(s.mean(0), s.std(0).clamp_min(1e-6) if P > 1 else torch.ones(s.shape[1]))
        self.reset_parameters()
        with torch.no_grad():
            self.offset.fill_(float(labels.median()))
        n_sub = max(1, int(round(train_fraction * P)))
        held_out = np.ones((K, P), dtype=bool)
        if split == "fraction":
            idx = np.stack([rng.permutation(P)[:n_sub] for _ in range(K)])
            for m in range(K):
                held_out[m, idx[m]] = False
        elif split == "bagging":
            perm = rng.permutation(P)
            train_part = perm[:n_sub]
            idx = np.stack([rng.choice(train_part, size=n_sub, replace=True) for _ in range(K)])
            held_out[:, train_part] = False
        else:
            raise ValueError(f"unknown ensemble split {split!r}")
        device = self.offset.device
        idx_t = torch.as_tensor(idx, device=device)
        feats = self.features(s.to(device))
        y = labels.to(device)
        opt = torch.optim.Adam(self.parameters(), lr=lr)
        b = min(batch_size, n_sub)
        n_batches = max(1, n_sub // b)
        gen = torch.Generator(device="cpu").manual_seed(int(rng.integers(2**62)))
        for _ in tqdm(range(epochs), desc="ensemble", leave=False, disable=not progress, mininterval=0.5):
            order = torch.argsort(torch.rand(K, n_sub, generator=gen), dim=1).to(device)
            shuffled = idx_t.gather(1, order)
            for i in range(n_batches):
                bi = shuffled[:, i * b:(i + 1) * b]
                pred = self._forward_features(feats[bi])
                loss = ((pred - y[bi]) ** 2).mean(1).sum()
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
        with torch.no_grad():
            err2 = (self._forward_features(feats.unsqueeze(0).expand(K, -1, -1)) - y) ** 2  # (K, P)
            ho = torch.as_tensor(held_out, device=device)
            train_mse = float((err2 * ~ho).sum() / (~ho).sum())
            val_mse = float((err2 * ho).sum() / ho.sum()) if bool(ho.any()) else math.nan
        return {"ensemble_train_mse": train_mse, "ensemble_heldout_mse": val_mse}
