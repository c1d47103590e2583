"""Reference PMF files from an exact PMF, a long MD run or an umbrella-sampling run.

Each file records how it was made and its noise floor: the forward KLD between the estimates
from two independent halves of the data (MD: first and second half of the frames of every
replica; umbrella: first and second half of every window's samples).  Each half has half the
data, so the full reference's own error is roughly a quarter of that number (for
multinomial-like noise the KLD scales as 1 / samples, and both halves are noisy).
"""

from __future__ import annotations

import json
import time
from itertools import combinations
from pathlib import Path

import numpy as np

from cgflow.analysis.marginals import histogram_marginals
from cgflow.analysis.metrics import forward_kld
from cgflow.pmf.reference_file import save_marginal_reference, save_reference

HALVES_EPSILON = 1e-10


def _halves_kld(p1: np.ndarray, p2: np.ndarray) -> float:
    """forward KLD(p1 || p2) with p2 floored at HALVES_EPSILON and renormalized."""
    q = np.maximum(p2, HALVES_EPSILON)
    return forward_kld(p1, q / q.sum())


def reference_from_exact(system, out) -> dict:
    """The system's own exact reference (e.g. Müller-Brown by quadrature)."""
    ref = system.reference()
    if ref is None or "exact" not in ref.description:
        raise ValueError(f"system {system.name!r} has no exact PMF; make a reference from an MD or umbrella run")
    if any(not np.allclose(e, ref.edges[0]) for e in ref.edges):
        raise ValueError("the reference file format needs the same bin edges in every CG dimension")
    meta = {"method": "exact", "description": f"{system.name}: {ref.description}", "evaluations": 0,
            "noise_floor_forward_kld": 0.0, "cg_names": list(system.cg_names),
            "created": time.strftime("%Y-%m-%d %H:%M:%S %Z")}
    if hasattr(ref, "pairs"):  # 2-D marginals of a CG space with d > 2
        save_marginal_reference(out, ref.edges[0], ref.pairs, ref.probs, ref.cg_dim, meta)
    else:
        save_reference(out, ref.edges[0], ref.prob, meta)
    return meta


def _md_histograms(run_dir: Path, n_bins: int, discard_steps: int) -> tuple[np.ndarray, list, dict]:
    from cgflow.baselines.md import read_cg_trajectory

    cg, info = read_cg_trajectory(run_dir)
    k = info["report_every_steps"]
    first = max(0, discard_steps // k)  # frame j is taken after (j + 1) * k steps
    cg = cg[first:]
    if cg.shape[0] < 2:
        raise ValueError(f"{run_dir}: fewer than 2 frames left after discarding {discard_steps} steps")
    lo_hi = info["cg_domain"]
    edges = np.linspace(lo_hi[0][0], lo_hi[0][1], n_bins + 1)
    if any(tuple(r) != tuple(lo_hi[0]) for r in lo_hi):
        raise ValueError("the reference file format needs the same range in every CG dimension")
    d = cg.shape[-1]

    def hist(frames):
        if d > 2:  # 2-D marginals of every CG pair, (K, n_bins, n_bins)
            return np.stack(histogram_marginals(frames.reshape(-1, d), [edges] * d, combinations(range(d), 2)))
        h, _ = np.histogramdd(frames.reshape(-1, d), bins=[edges] * d)
        return h / h.sum()

    half = cg.shape[0] // 2
    return edges, [hist(cg), hist(cg[:half]), hist(cg[half:])], {
        "n_frames": int(cg.shape[0]), "n_replicas": int(cg.shape[1]), "discarded_frames": int(first), **info}


def reference_from_run(run_dir, out, n_bins: int = 100, discard_steps: int = 0) -> dict:
    """A reference from an MD run (histogram of all frames) or an umbrella run (MBAR)."""
    run_dir = Path(run_dir)
    created = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    if (run_dir / "md.json").is_file():
        edges, (p, p1, p2), info = _md_histograms(run_dir, n_bins, discard_steps)
        meta = {"method": "md", "evaluations": info["evaluations"], "source_run": str(run_dir.resolve()),
                "description": (f"histogram of {info['n_frames']} x {info['n_replicas']} MD frames of "
                                f"{info['system']} ({info['steps_done']} steps per replica, a frame every "
                                f"{info['report_every_steps']} steps, {info['timestep_fs']} fs, "
                                f"{info['temperature_K']} K, first {info['discarded_frames']} frames dropped)"),
                "occupied_bins": int((p > 0).sum())}
    elif (run_dir / "umbrella.json").is_file():
        from cgflow.baselines.umbrella import SAMPLES, UMBRELLA_JSON, umbrella_probabilities

        info = json.loads((run_dir / UMBRELLA_JSON).read_text())
        if any(tuple(r) != tuple(info["cg_domain"][0]) for r in info["cg_domain"]):
            raise ValueError("the reference file format needs the same range in every CG dimension")
        lo, hi = info["cg_domain"][0]
        edges = np.linspace(lo, hi, n_bins + 1)
        d = len(info["cg_domain"])
        if d > 2:
            raise ValueError(f"{run_dir}: references from umbrella runs need d <= 2 CG dimensions (this one has {d}); "
                             f"use an MD run for 2-D marginals")
        with np.load(run_dir / SAMPLES) as z:
            n = z["cg"].shape[0]
        p = umbrella_probabilities(run_dir, [edges] * d)
        p1 = umbrella_probabilities(run_dir, [edges] * d, slice(0, n // 2))
        p2 = umbrella_probabilities(run_dir, [edges] * d, slice(n // 2, n))
        st = info["settings"]
        meta = {"method": "umbrella+mbar", "evaluations": info["evaluations"], "source_run": str(run_dir.resolve()),
                "description": (f"umbrella sampling of {info['system']} with MBAR (pymbar): {info['n_windows']} "
                                f"windows, spring {info['spring_kT_per_unit2']} kT/unit^2, "
                                f"{st['equilibration_steps']} + {st['production_steps']} steps per window, a sample "
                                f"every {st['sample_every_steps']} steps, {info['timestep_fs']} fs, "
                                f"{info['temperature_K']} K"),
                "occupied_bins": int((p > 0).sum())}
    else:
        raise ValueError(f"{run_dir} is neither an MD run (md.json) nor an umbrella run (umbrella.json)")
    marginal = len(info.get("cg_domain", [])) > 2  # MD only (umbrella refuses d > 2 above)
    floor = (float(np.mean([_halves_kld(a, b) for a, b in zip(p1, p2)])) if marginal else _halves_kld(p1, p2))
    meta.update(noise_floor_forward_kld=floor, noise_floor_note=(
        "forward KLD between the estimates from the two halves of the data (empty bins floored at "
        f"{HALVES_EPSILON:g}; for 2-D marginals its mean over the CG pairs); the full reference's own error is "
        "roughly a quarter of it"),
        created=created, cg_names=info.get("cg_names", []))
    if marginal:
        d = len(info["cg_domain"])
        save_marginal_reference(out, edges, list(combinations(range(d), 2)), p, d, meta)
    else:
        save_reference(out, edges, p, meta)
    return meta
