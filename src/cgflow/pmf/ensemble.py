"""An ensemble of K small MLPs regressing the PMF F(s) (kT); its spread is the acquisition signal.

All K networks are trained jointly as batched matrix products (weights of shape (K, n_in, n_out)),
each on its own subset of the CG points (method spec 2.8).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from cgflow.core.features import CGFeatures
from cgflow.core.progress import bars_disabled

_ACT = {"sigmoid": torch.sigmoid, "relu": torch.relu, "tanh": torch.tanh, "silu": nn.functional.silu}


@dataclass(frozen=True)
class FitOptions:
    """How :meth:`PMFEnsemble.fit` trains (the data go as arguments of their own).

    Attributes:
        epochs, batch_size, lr: the Adam schedule (lr constant).
        split: "fraction" (each model its own random ``train_fraction`` of the points) or "bagging"
            (one common split, each model a bootstrap resample of its training part).
        train_fraction: fraction of the points each model trains on.
        progress: show a progress bar.
        warm_start: continue from the current parameters instead of re-initializing (the first fit
            always initializes).
        patience: stop once the training loss has not improved by 0.1 % for this many epochs (None:
            run all ``epochs``).
        gradient_weight: weight of the mean-force residuals (0: values only).
        se_floor: (value kT, gradient kT per CG unit) added in quadrature to the label standard errors.
    """

    epochs: int
    batch_size: int
    lr: float
    split: str = "fraction"
    train_fraction: float = 0.8
    progress: bool = True
    warm_start: bool = False
    patience: int | None = None
    gradient_weight: float = 0.0
    se_floor: tuple[float, float] = (0.05, 0.5)


class PMFEnsemble(nn.Module):
    """K MLPs F_m(features(s)).

    Args:
        features: CG feature map (its standardization is refit in :meth:`fit`).
        n_models: K.
        hidden: hidden layer widths.
        activation: sigmoid | relu | tanh | silu.
        init: "xavier" (Xavier-uniform weights, zero biases) or "random_scale" (weights and
            biases ~ N(0, sigma) with sigma ~ U(0.1, 3) drawn per layer and model).
        dtype: of the networks' weights and arithmetic (torch.float64 or torch.float32).  Inputs,
            the label offset, outputs, losses and the calibration stay float64 either way: float32
            only runs the matrix products and activations (about 3x faster on one CPU core,
            benchmarks/bench_ensemble_fit.py; the networks' own output is a few kT around the
            offset, so float32's 1e-7 relative precision is far below the labels' noise).
    """

    def __init__(self, features: CGFeatures, n_models: int, hidden: list[int], activation: str = "sigmoid",
                 init: str = "xavier", dtype: torch.dtype = torch.float64):
        super().__init__()
        if dtype not in (torch.float64, torch.float32):
            raise ValueError(f"ensemble dtype must be float64 or float32, got {dtype}")
        self.features = features
        self.n_models = n_models
        self.activation = activation
        self.init = init
        sizes = [features.n_features, *hidden, 1]
        self.weights = nn.ParameterList(
            [nn.Parameter(torch.empty(n_models, a, b, dtype=dtype)) for a, b in zip(sizes[:-1], sizes[1:])])
        self.biases = nn.ParameterList(
            [nn.Parameter(torch.empty(n_models, 1, b, dtype=dtype)) for b in sizes[1:]])
        self.register_buffer("offset", torch.zeros((), dtype=torch.float64))
        self.register_buffer("fitted", torch.zeros((), dtype=torch.bool))
        # factor k >= 1 that makes k * std a calibrated error bar (set by fit from held-out residuals)
        self.register_buffer("std_scale", torch.ones((), dtype=torch.float64))
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
        """h: (K, B, n_features) -> (K, B) float64 kT (the networks in their own dtype)."""
        act = _ACT[self.activation]
        n = len(self.weights)
        h = h.to(self.weights[0].dtype)
        for i, (w, b) in enumerate(zip(self.weights, self.biases)):
            h = torch.baddbmm(b, h, w)
            if i < n - 1:
                h = act(h)
        return h.squeeze(-1).to(torch.float64) + self.offset

    def forward(self, s: torch.Tensor) -> torch.Tensor:
        """Per-model PMF predictions, (K, B) kT, for s (B, cg_dim)."""
        h = self.features(s)
        return self._forward_features(h.unsqueeze(0).expand(self.n_models, -1, -1))

    def mean_and_std(self, s: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Ensemble mean and unbiased (K-1) standard deviation, each (B,) kT."""
        f = self.forward(s)
        return f.mean(0), f.std(0, unbiased=True)

    @torch.no_grad()
    def _calibrate(self, pred: torch.Tensor, y: torch.Tensor, held_out: torch.Tensor,
                   noise2: torch.Tensor | None) -> float:
        """Set ``std_scale`` = k >= 1 so that k * std explains the held-out residuals.

        A model's residual at a point it did not see, r = F_m(s) - y, has variance ~ k^2 sigma(s)^2 +
        n(s)^2 (the model's error, which the ensemble spread sigma should describe, plus label noise n).
        k^2 = sum w (r^2 - n^2) / sum w sigma^2 over held-out (model, point) pairs, with Boltzmann
        weights w ~ exp(-F_mean) (the populated region decides the KLD).  Returns k."""
        if not bool(held_out.any()):
            self.std_scale.fill_(1.0)
            return 1.0
        mean, var = pred.mean(0), pred.var(0, unbiased=True)
        w = torch.exp(-(mean - mean.min()).clamp_max(700)).expand_as(pred)[held_out]
        if noise2 is not None:
            n2 = noise2.to(pred.device)
            fill = n2[torch.isfinite(n2)].mean() if bool(torch.isfinite(n2).any()) else torch.zeros((), dtype=n2.dtype)
            se2 = torch.where(torch.isfinite(n2), n2, fill.to(n2.device))
        else:
            se2 = torch.zeros_like(mean)
        r2 = ((pred - y) ** 2)[held_out] - se2.expand_as(pred)[held_out]
        v = var.expand_as(pred)[held_out]
        k2 = float((w * r2).sum() / (w * v).sum().clamp_min(1e-300))
        k = math.sqrt(max(k2, 1.0)) if math.isfinite(k2) else 1.0
        self.std_scale.fill_(k)
        return k

    def fit(self, s: torch.Tensor, labels: torch.Tensor, options: FitOptions, *, rng: np.random.Generator,
            grads: torch.Tensor | None = None, value_se: torch.Tensor | None = None,
            grad_se: torch.Tensor | None = None, value_noise2: torch.Tensor | None = None,
            perturb_sd: tuple[torch.Tensor, torch.Tensor | None] | None = None,
            member_keys: torch.Tensor | None = None) -> dict:
        """Train every model on its own subset of (s, labels) [and mean forces: a Sobolev fit].

        Args:
            s: (P, cg_dim) CG points; labels: (P,) PMF labels in kT (finite).
            options: how to train (:class:`FitOptions`: epochs, batch size, lr, split, ...).
            rng: the run's numpy generator (splits, batches, bootstrap).
            grads: (P, cg_dim) mean-force labels dF/ds (kT per CG unit; NaN entries ignored), fitted
                with weight ``options.gradient_weight`` (0: values only).
            value_se, grad_se: (P,), (P, cg_dim) standard errors of the labels: if given, each
                residual is weighted by 1 / (se^2 + floor^2) (``se_floor`` = (value kT, gradient kT/unit)),
                the weights normalized to mean 1 (a chi-square fit up to a scale); else uniform.
            value_noise2: (P,) estimates of each label's noise variance (kT^2) for the calibration of
                the std (NaN: unknown); None: value_se^2, else 0.
            member_keys: (P,) int64 stable identities of the points (e.g. dataset indices): with split
                "fraction", model m then takes the points of smallest hash(key, m), so a point stays with
                the same models from fit to fit (warm-started models keep their diversity).
            perturb_sd: (value sd (P,), gradient sd (P, cg_dim) or None): each model fits its own copy
                of the labels with Gaussian noise of these standard deviations added (a parametric
                bootstrap: the ensemble spread then carries the label noise through the fit).
        Returns:
            dict with the mean train and held-out MSE of the values over models (kT^2), and of the
            gradients if fitted ((kT/unit)^2).
        """
        o = options
        epochs, batch_size, lr, split, train_fraction = o.epochs, o.batch_size, o.lr, o.split, o.train_fraction
        progress, gradient_weight, se_floor, warm_start, patience = (o.progress, o.gradient_weight, o.se_floor,
                                                                     o.warm_start, o.patience)
        P = s.shape[0]
        if P < 2:
            raise ValueError(f"the ensemble needs at least 2 labelled CG points, got {P}")
        K = self.n_models
        if not (warm_start and bool(self.fitted)):
            # standardize non-periodic inputs with the current CG set; centre labels
            self.features.set_standardization(s.mean(0), s.std(0).clamp_min(1e-6))
            self.reset_parameters()
            with torch.no_grad():
                self.offset.fill_(float(labels.median()))
        self.fitted.fill_(True)
        n_sub = max(1, int(round(train_fraction * P)))
        held_out = np.ones((K, P), dtype=bool)
        if split == "fraction" and member_keys is not None:
            keys = member_keys.cpu().numpy().astype(np.uint64)
            idx = np.stack([np.argsort(_hash_uniform(keys, m), kind="stable")[:n_sub] for m in range(K)])
            for m in range(K):
                held_out[m, idx[m]] = False
        elif split == "fraction":
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
        s = s.to(device=device, dtype=torch.float64)
        y = labels.to(device)
        use_grad = grads is not None and gradient_weight > 0
        wv = torch.ones(P, dtype=torch.float64, device=device)
        if value_se is not None:
            wv = 1.0 / (value_se.to(device) ** 2 + se_floor[0] ** 2)
            wv = torch.where(torch.isfinite(wv), wv, torch.zeros_like(wv))
            wv = wv / wv.mean().clamp_min(1e-300)
        if use_grad:
            g = grads.to(device)
            g_ok = torch.isfinite(g)
            g = torch.where(g_ok, g, torch.zeros_like(g))
            wg = g_ok.to(torch.float64)
            if grad_se is not None:
                wg = wg / (torch.nan_to_num(grad_se.to(device), nan=math.inf) ** 2 + se_floor[1] ** 2)
                wg = wg / wg[g_ok].mean().clamp_min(1e-300)
        if perturb_sd is not None:  # (K, P) and (K, P, d) label copies, one per model
            gen_p = torch.Generator(device="cpu").manual_seed(int(rng.integers(2**62)))
            sd_v = torch.nan_to_num(perturb_sd[0].to(device), nan=0.0)
            y = y + sd_v * torch.randn(K, P, generator=gen_p, dtype=torch.float64).to(device)
            if use_grad and perturb_sd[1] is not None:
                sd_g = torch.nan_to_num(perturb_sd[1].to(device), nan=0.0)
                g = g + sd_g * torch.randn(K, *g.shape, generator=gen_p, dtype=torch.float64).to(device)
        else:
            y = y.expand(K, P)
            if use_grad:
                g = g.expand(K, *g.shape)
        feats = None if use_grad else self.features(s)
        opt = torch.optim.Adam(self.parameters(), lr=lr)
        b = min(batch_size, n_sub)
        n_batches = max(1, n_sub // b)
        gen = torch.Generator(device="cpu").manual_seed(int(rng.integers(2**62)))
        best, since, n_epochs = math.inf, 0, 0
        for _ in tqdm(range(epochs), desc="ensemble", leave=False, disable=bars_disabled(progress), mininterval=0.5):
            n_epochs += 1
            epoch_loss = 0.0
            order = torch.argsort(torch.rand(K, n_sub, generator=gen), dim=1).to(device)
            shuffled = idx_t.gather(1, order)
            for i in range(n_batches):
                bi = shuffled[:, i * b:(i + 1) * b]
                if use_grad:
                    sb = s[bi].requires_grad_(True)  # (K, b, d): each model differentiates its own copy
                    pred = self._forward_features(self.features(sb))
                    dpred, = torch.autograd.grad(pred.sum(), sb, create_graph=True)
                    loss = (wv[bi] * (pred - y.gather(1, bi)) ** 2).mean(1).sum() \
                        + gradient_weight * (wg[bi] * (dpred - _rows(g, bi)) ** 2).sum(-1).mean(1).sum()
                else:
                    pred = self._forward_features(feats[bi])
                    loss = (wv[bi] * (pred - y.gather(1, bi)) ** 2).mean(1).sum()
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                if patience is not None:
                    epoch_loss += float(loss.detach())
            if patience is not None:
                if epoch_loss < best * (1 - 1e-3):
                    best, since = epoch_loss, 0
                else:
                    since += 1
                    if since >= patience:
                        break
        out = {"ensemble_epochs": n_epochs}
        ho = torch.as_tensor(held_out, device=device)
        self.last_held_out = ho.cpu()  # (K, P) bool: which model did not train on which point
        sk = s.unsqueeze(0).expand(K, -1, -1).clone().requires_grad_(use_grad)
        with torch.set_grad_enabled(use_grad):
            pred = self._forward_features(self.features(sk))
            dpred = torch.autograd.grad(pred.sum(), sk)[0] if use_grad else None
        with torch.no_grad():
            y0 = labels.to(device)
            err2 = (pred.detach() - y0) ** 2  # (K, P), against the unperturbed labels
            out["ensemble_train_mse"] = float((err2 * ~ho).sum() / (~ho).sum())
            out["ensemble_heldout_mse"] = float((err2 * ho).sum() / ho.sum()) if bool(ho.any()) else math.nan
            noise2 = value_noise2 if value_noise2 is not None else (value_se**2 if value_se is not None else None)
            out["ensemble_std_scale"] = self._calibrate(pred.detach(), y0, ho, noise2)
            if use_grad:
                g0 = torch.where(g_ok, grads.to(device), torch.zeros_like(grads.to(device)))
                gerr2 = ((dpred - g0) ** 2 * g_ok).sum(-1) / g_ok.sum(-1).clamp_min(1)  # (K, P)
                out["ensemble_grad_train_mse"] = float((gerr2 * ~ho).sum() / (~ho).sum())
                out["ensemble_grad_heldout_mse"] = float((gerr2 * ho).sum() / ho.sum()) if bool(ho.any()) else math.nan
        return out


def _rows(t: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """t (K, P, d), idx (K, b) -> (K, b, d): each model's rows."""
    return t.gather(1, idx.unsqueeze(-1).expand(-1, -1, t.shape[-1]))


def _hash_uniform(keys: np.ndarray, model: int) -> np.ndarray:
    """Deterministic uniform [0, 1) numbers per (key, model): splitmix64 of key and model."""
    with np.errstate(over="ignore"):
        z = keys.astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15) + np.uint64(model + 1) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    return (z >> np.uint64(11)).astype(np.float64) / float(2**53)
