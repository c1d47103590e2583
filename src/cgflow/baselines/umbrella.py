"""Umbrella sampling over the CG grid, combined with MBAR (pymbar).

Windows sit on a regular grid over the CG domain (periodic dimensions: ``n`` evenly spaced
centres; others: ``n`` centres from end to end).  Window k adds the restraint
``b_k(s) = 0.5 * k_spring * sum_d delta_d(s, c_k)^2`` (kT), with ``delta`` the minimum-image
difference on periodic dimensions.  All windows run at once as replicas of the batched torch
Langevin integrator.  Because the unbiased energy is common to all windows, MBAR needs only the
bias matrix ``u_kn[k, n] = b_k(s_n)``; the unbiased weight of sample n is
``w_n ∝ 1 / sum_k N_k exp(f_k - b_k(s_n))``, and the PMF on the bins is ``-ln`` of the weighted
histogram.

Every step of every window is an energy evaluation (equilibration included).
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field

from cgflow.baselines.langevin import BatchedLangevin
from cgflow.core.geometry import wrap_angle
from cgflow.core.run_directory import atomic_savez, atomic_write_text, require_new_run_directory
from cgflow.core.simulation_view import SimulationView
from cgflow.pmf.history import save_snapshot

UMBRELLA_JSON = "umbrella.json"
SAMPLES = "samples.npz"


class UmbrellaSettings(BaseModel):
    """Settings of an umbrella-sampling run (saved in umbrella.json)."""

    model_config = ConfigDict(extra="forbid")

    windows_per_dim: int = Field(20, gt=5)
    spring_kT: float | None = Field(None, gt=0, description="kT per (CG unit)^2; None: 2 / spacing^2")
    equilibration_steps: int = Field(2000, ge=0)
    production_steps: int = Field(10000, gt=0)
    sample_every_steps: int = Field(100, gt=0)
    timestep_fs: float | None = Field(None, gt=0)
    friction_per_ps: float = Field(1.0, gt=0)
    n_bins: int = Field(100, gt=1)
    n_snapshots: int = Field(4, gt=0, description="PMF snapshots from growing prefixes of the production")
    seed: int = 0
    device: str = "cpu"


def window_centers(domain, periodic, windows_per_dim: int) -> tuple[np.ndarray, np.ndarray]:
    """(centres (K, d), spacing (d,)): the window grid, C order over dimensions."""
    axes, spacing = [], []
    for (lo, hi), per in zip(domain, periodic):
        if per:
            h = (hi - lo) / windows_per_dim
            axes.append(lo + h * np.arange(windows_per_dim))
        else:  # reach two spacings past each end, so the edge bins are sampled although F rises there
            h = (hi - lo) / (windows_per_dim - 5)
            axes.append(np.linspace(lo - 2 * h, hi + 2 * h, windows_per_dim))
        spacing.append(h)
    mesh = np.meshgrid(*axes, indexing="ij")
    return np.stack([m.ravel() for m in mesh], axis=-1), np.array(spacing)


def restraint_kT(s, centers, spring, periodic):
    """b(s) = 0.5 * spring * |delta(s, c)|^2 (kT).  s (..., d) and centers broadcastable; works on
    numpy arrays and torch tensors."""
    delta = s - centers
    if any(periodic):
        is_t = isinstance(delta, torch.Tensor)
        mask = torch.tensor(periodic, device=delta.device) if is_t else np.array(periodic)
        wrapped = wrap_angle(delta) if is_t else (delta + np.pi) % (2 * np.pi) - np.pi
        delta = torch.where(mask, wrapped, delta) if is_t else np.where(mask, wrapped, delta)
    return 0.5 * (spring * delta ** 2).sum(-1)


def _import_pymbar():
    """pymbar, imported without its banner about JAX and its timeseries warning."""
    import contextlib
    import io
    import warnings

    logging.getLogger("pymbar").setLevel(logging.ERROR)
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()), \
            warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import pymbar
    return pymbar


def mbar_bin_probabilities(s: np.ndarray, window: np.ndarray, centers: np.ndarray, spring: np.ndarray,
                           periodic, edges: list[np.ndarray], max_solve_samples: int = 40_000,
                           chunk: int = 20_000) -> np.ndarray:
    """Unbiased bin probabilities from umbrella samples by MBAR.

    The window free energies f_k are solved by pymbar on at most ``max_solve_samples`` samples
    (every m-th sample of every window); every sample is then weighted with those f_k,
    ``w_n ∝ 1 / sum_k N_k exp(f_k - b_k(s_n))``, computed in chunks, so the histogram uses all
    the data at a cost linear in N.

    Args:
        s: (N, d) CG samples (periodic dims wrapped like the edges); window: (N,) window index.
        centers: (K, d); spring: (d,) kT per unit^2; edges: bin edges per dimension.
    Returns:
        prob of shape (n_bins_1, ..., n_bins_d), summing to 1 (0 in bins without samples).
    """
    pymbar = _import_pymbar()
    K, N = centers.shape[0], s.shape[0]
    N_k = np.bincount(window, minlength=K)
    rank = np.empty(N, dtype=np.int64)
    for k in range(K):
        idx = np.flatnonzero(window == k)
        rank[idx] = np.arange(idx.size)
    stride = max(1, -(-N // max_solve_samples))
    sub = rank % stride == 0

    def bias_matrix(x):  # (K, len(x))
        return np.stack([restraint_kT(x, centers[k], spring, periodic) for k in range(K)])

    f_k = pymbar.MBAR(bias_matrix(s[sub]), np.bincount(window[sub], minlength=K)).f_k
    log_nk = np.where(N_k > 0, np.log(np.maximum(N_k, 1)), -np.inf)[:, None]
    log_denom = np.concatenate([np.logaddexp.reduce(log_nk + f_k[:, None] - bias_matrix(s[i:i + chunk]), axis=0)
                                for i in range(0, N, chunk)])
    w = np.exp(-(log_denom - log_denom.min()))
    hist, _ = np.histogramdd(s, bins=edges, weights=w)
    return hist / hist.sum()


class UmbrellaRun:
    """Umbrella sampling of a system in ``run_dir`` (must not exist or be empty)."""

    def __init__(self, view: SimulationView, run_dir, settings: UmbrellaSettings, *, system_label: str = "",
                 progress: bool = True):
        self.view, self.run_dir, self.settings, self.progress = view, Path(run_dir), settings, progress
        require_new_run_directory(self.run_dir)
        st = settings
        if st.production_steps % st.sample_every_steps:
            raise ValueError("production_steps must be a multiple of sample_every_steps")
        self.centers, spacing = window_centers(view.cg_domain, view.cg_periodic, st.windows_per_dim)
        self.spring = np.full(view.cg_dim, st.spring_kT) if st.spring_kT else 2.0 / spacing ** 2
        self.edges = [np.linspace(lo, hi, st.n_bins + 1) for lo, hi in view.cg_domain]
        self.system_label = system_label or view.name
        self.run_dir.mkdir(parents=True, exist_ok=True)

    @property
    def n_windows(self) -> int:
        return self.centers.shape[0]

    def run(self) -> dict:
        from tqdm.auto import tqdm

        from cgflow.core.progress import bars_disabled

        st, v = self.settings, self.view
        dev = st.device
        centers_t = torch.as_tensor(self.centers, device=dev)
        spring_t = torch.as_tensor(self.spring, device=dev)
        K = self.n_windows

        def biased(x):
            return v.reduced_energy_of_positions(x) + restraint_kT(v.cg_of_positions(x), centers_t, spring_t,
                                                                  v.cg_periodic)

        gen = torch.Generator(device=dev)
        gen.manual_seed(int(st.seed))
        dyn = BatchedLangevin(biased, v.masses_amu, v.temperature_K, st.timestep_fs or v.timestep_fs,
                              st.friction_per_ps, gen, device=dev)
        t0 = time.perf_counter()
        state = dyn.init_state(torch.as_tensor(v.positions, device=dev)[None].repeat(K, 1, 1))
        n_samples = st.production_steps // st.sample_every_steps
        s_out = np.empty((n_samples, K, v.cg_dim))
        total = st.equilibration_steps + st.production_steps
        with tqdm(total=total, desc=f"umbrella sampling ({K} windows)", unit="step", disable=bars_disabled(self.progress),
                  leave=False) as bar:
            done = 0
            while done < st.equilibration_steps:
                n = min(st.sample_every_steps, st.equilibration_steps - done)
                state = dyn.step(state, n)
                done += n
                bar.update(n)
            for j in range(n_samples):
                state = dyn.step(state, st.sample_every_steps)
                s_out[j] = v.cg_numpy(state.positions.detach().cpu().numpy())
                bar.update(st.sample_every_steps)
        wall = time.perf_counter() - t0
        if not np.isfinite(s_out).all():
            raise RuntimeError("umbrella sampling blew up (non-finite CG values); try a smaller time step")
        evals_per_step = K
        evaluations = K + total * evals_per_step  # + the initial force evaluation per window
        atomic_savez(self.run_dir / SAMPLES, cg=s_out, centers=self.centers, spring=self.spring)

        # PMF snapshots from growing prefixes of the production (equilibration always counted)
        t1 = time.perf_counter()
        win = np.tile(np.arange(K), (n_samples, 1))
        snaps = []
        for i in range(1, st.n_snapshots + 1):
            m = max(1, round(n_samples * i / st.n_snapshots))
            prob = mbar_bin_probabilities(s_out[:m].reshape(-1, v.cg_dim), win[:m].ravel(), self.centers,
                                          self.spring, v.cg_periodic, self.edges)
            with np.errstate(divide="ignore"):
                pmf = -np.log(prob)
            ev = K + K * (st.equilibration_steps + m * st.sample_every_steps)
            save_snapshot(self.run_dir, i, self.edges, pmf, ev, label=f"{m} samples per window")
            snaps.append({"samples_per_window": m, "evaluations": ev})
        info = {"method": "umbrella", "system": self.system_label, "settings": st.model_dump(),
                "n_windows": K, "spring_kT_per_unit2": self.spring.tolist(), "evaluations": evaluations,
                "nonfinite_energies": dyn.n_nonfinite, "wall_time_sampling_s": wall,
                "wall_time_mbar_s": time.perf_counter() - t1, "snapshots": snaps,
                "cg_names": list(v.cg_names), "cg_periodic": list(v.cg_periodic),
                "cg_domain": [list(r) for r in v.cg_domain], "temperature_K": v.temperature_K,
                "timestep_fs": st.timestep_fs or v.timestep_fs}
        atomic_write_text(self.run_dir / UMBRELLA_JSON, json.dumps(info, indent=1) + "\n")
        return info


def umbrella_probabilities(run_dir, edges: list[np.ndarray] | None = None, part: slice = slice(None)) -> np.ndarray:
    """MBAR bin probabilities from a finished umbrella run's samples.  ``part`` selects sample
    indices along time in every window (e.g. ``slice(0, n // 2)`` for the first half); ``edges``
    default to the run's own bins."""
    run_dir = Path(run_dir)
    info = json.loads((run_dir / UMBRELLA_JSON).read_text())
    with np.load(run_dir / SAMPLES) as z:
        cg, centers, spring = z["cg"][part], z["centers"], z["spring"]
    n, K, d = cg.shape
    if edges is None:
        edges = [np.linspace(lo, hi, info["settings"]["n_bins"] + 1) for lo, hi in info["cg_domain"]]
    return mbar_bin_probabilities(cg.reshape(-1, d), np.tile(np.arange(K), n), centers, spring,
                                  tuple(info["cg_periodic"]), edges)
