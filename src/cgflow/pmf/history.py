"""PMF snapshots on the evaluation grid, one file per snapshot, with the energy evaluations
spent so far.  Every method (active learning, grid conditioning, metadynamics, umbrella
sampling) writes them, so ``cgflow compare`` can draw accuracy against evaluations for all.

A snapshot ``RUN_DIR/pmf_history/{index:05d}.npz`` holds:
    edges_0, edges_1, ...: bin edges per CG dimension, each (n_bins_d + 1,);
    pmf_kT: the PMF at the bin centres, shape (n_bins_1, ...), kT, minimum 0;
    evaluations: total energy evaluations spent when the snapshot was taken (int);
    label: what the index means ("iteration 3", "step 200000" ...);
    wall_time_s: seconds of wall-clock the method had spent when the snapshot was taken (optional;
        NaN when unknown).
For CG spaces of more than two dimensions also the 2-D marginals (optional):
    marginal_pairs (K, 2), marginal_pmf_kT (K, n, n) (kT, each minimum 0), marginal_edges_0, ... per
    CG dimension.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cgflow.core.run_directory import atomic_savez

DIRNAME = "pmf_history"


@dataclass
class PMFSnapshot:
    edges: list[np.ndarray]
    pmf_kT: np.ndarray
    evaluations: int
    label: str
    wall_time_s: float = float("nan")
    marginal_pairs: list | None = None
    marginal_pmf_kT: np.ndarray | None = None
    marginal_edges: list | None = None


def save_snapshot(run_dir, index: int, edges, pmf_kT: np.ndarray, evaluations: int, label: str = "",
                  wall_time_s: float | None = None, marginals: dict | None = None) -> Path:
    """Write snapshot ``index``; ``marginals`` holds the optional marginal_* arrays (module docstring)."""
    d = Path(run_dir) / DIRNAME
    d.mkdir(parents=True, exist_ok=True)
    f = np.asarray(pmf_kT, dtype=np.float64)
    f = f - np.nanmin(f[np.isfinite(f)]) if np.isfinite(f).any() else f
    path = d / f"{int(index):05d}.npz"
    atomic_savez(path, **{f"edges_{i}": np.asarray(e, dtype=np.float64) for i, e in enumerate(edges)},
                 pmf_kT=f, evaluations=np.int64(evaluations), label=np.array(str(label)),
                 wall_time_s=np.float64(np.nan if wall_time_s is None else wall_time_s), **(marginals or {}))
    return path


def read_history(run_dir) -> list[PMFSnapshot]:
    """All snapshots of a run directory, in index order (empty list if there are none)."""
    d = Path(run_dir) / DIRNAME
    out = []
    for p in sorted(d.glob("*.npz")) if d.is_dir() else []:
        with np.load(p, allow_pickle=False) as z:
            n = sum(1 for k in z.files if k.startswith("edges_"))
            snap = PMFSnapshot(edges=[z[f"edges_{i}"] for i in range(n)], pmf_kT=z["pmf_kT"],
                               evaluations=int(z["evaluations"]), label=str(z["label"]),
                               wall_time_s=float(z["wall_time_s"]) if "wall_time_s" in z.files else float("nan"))
            if "marginal_pmf_kT" in z.files:
                snap.marginal_pairs = [tuple(int(v) for v in p) for p in z["marginal_pairs"]]
                snap.marginal_pmf_kT = z["marginal_pmf_kT"]
                snap.marginal_edges = [z[f"marginal_edges_{i}"] for i in range(n)]
            out.append(snap)
    return out
