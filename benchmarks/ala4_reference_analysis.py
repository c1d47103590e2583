"""Marginal reference file, noise floor and plot from the ala4 reference MD (benchmarks/ala4_reference_md.py).

Reads ``<dir>/ala4-reference.npz`` (dihedrals (n_replicas, n_frames, 6)) and writes
    <dir>/ala4-marginals.npz   a marginal reference file (cgflow.pmf.reference_file, ``system.reference`` of a run):
                               the 2-D histograms of all 15 CG pairs, ``--bins`` per dimension over [-pi, pi)
    <dir>/marginals.png        -ln p of the 5 neighbouring pairs (phi_i, psi_i) and (psi_i, phi_i+1)
    <dir>/analysis.json        noise floor (forward KLD sum P ln(P/Q) per pair: half of the replicas against the
                               other half, and against all of them), basin populations, sample counts
Usage: ``python benchmarks/ala4_reference_analysis.py benchmarks/results/ala4-reference [--bins 60]``.
"""

from __future__ import annotations

import argparse
import json
from itertools import combinations
from pathlib import Path

import numpy as np


def histograms(dih: np.ndarray, pairs, edges: np.ndarray) -> np.ndarray:
    """(K, n_bins, n_bins) normalized 2-D histograms of ``dih`` (n_samples, d) for each (i, j) pair."""
    from cgflow.analysis.marginals import histogram_marginals

    return np.stack(histogram_marginals(dih, [edges] * dih.shape[1], pairs))


def forward_kld(p: np.ndarray, q: np.ndarray, floor: float = 1e-8) -> float:
    """sum_b p ln(p / q), q floored at ``floor`` of the mass where empty (as the repo's MD-baseline numbers)."""
    q = np.maximum(q, floor)
    q = q / q.sum()
    m = p > 0
    return float(np.sum(p[m] * np.log(p[m] / q[m])))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("dir")
    ap.add_argument("--bins", type=int, default=60)
    args = ap.parse_args()
    d = Path(args.dir)
    z = np.load(d / "ala4-reference.npz")
    dih = np.asarray(z["dihedrals"], dtype=np.float64)  # (R, F, 6)
    names = [str(n) for n in z["cg_names"]]
    n_rep, n_frames, cg_dim = dih.shape
    edges = np.linspace(-np.pi, np.pi, args.bins + 1)
    pairs = list(combinations(range(cg_dim), 2))
    flat = dih.reshape(-1, cg_dim)
    full = histograms(flat, pairs, edges)
    h1 = histograms(dih[: n_rep // 2].reshape(-1, cg_dim), pairs, edges)
    h2 = histograms(dih[n_rep // 2:].reshape(-1, cg_dim), pairs, edges)
    label = [f"{names[i]}|{names[j]}" for i, j in pairs]
    half = {lab: forward_kld(a, b) for lab, a, b in zip(label, h1, h2)}
    half_full = {lab: 0.5 * (forward_kld(a, f) + forward_kld(b, f)) for lab, a, b, f in zip(label, h1, h2, full)}

    coarse = np.linspace(-np.pi, np.pi, args.bins // 2 + 1)  # the same noise floor on a 2x coarser grid
    c1 = histograms(dih[: n_rep // 2].reshape(-1, cg_dim), pairs, coarse)
    c2 = histograms(dih[n_rep // 2:].reshape(-1, cg_dim), pairs, coarse)
    cf = histograms(flat, pairs, coarse)
    half_coarse = [forward_kld(a, b) for a, b in zip(c1, c2)]
    half_full_coarse = [0.5 * (forward_kld(a, f) + forward_kld(b, f)) for a, b, f in zip(c1, c2, cf)]

    phis = [names.index(f"phi:{k}") for k in (1, 2, 3)]
    psis = [names.index(f"psi:{k}") for k in (1, 2, 3)]
    pops = {}
    for k, (i, j) in enumerate(zip(phis, psis), start=1):
        phi, psi = flat[:, i], flat[:, j]
        pops[f"residue {k}"] = {
            "phi>0": float(np.mean(phi > 0)),
            "alpha_R (phi<0, -2.6<psi<0.9)": float(np.mean((phi < 0) & (psi > -2.6) & (psi < 0.9))),
            "beta/PII (phi<0, rest)": float(np.mean((phi < 0) & ~((psi > -2.6) & (psi < 0.9)))),
        }
    per_rep_phi_pos = [[float(np.mean(dih[r, :, i] > 0)) for i in phis] for r in range(n_rep)]
    meta_md = json.loads((d / "ala4-reference.json").read_text())
    info = {
        "bins": args.bins, "n_replicas": n_rep, "frames_per_replica": n_frames, "samples": int(n_rep * n_frames),
        "production_ns_total": meta_md.get("production_ns_total"), "n_md_steps": int(z["n_md_steps"]),
        "wall_s": float(z["wall_s"]),
        "half_vs_half_forward_kld": half, "half_vs_half_max": max(half.values()),
        "half_vs_half_mean": float(np.mean(list(half.values()))),
        "half_vs_full_forward_kld": half_full, "half_vs_full_max": max(half_full.values()),
        "half_vs_full_mean": float(np.mean(list(half_full.values()))),
        f"coarse_{args.bins // 2}_bins": {"half_vs_half_max": max(half_coarse),
                                          "half_vs_half_mean": float(np.mean(half_coarse)),
                                          "half_vs_full_max": max(half_full_coarse),
                                          "half_vs_full_mean": float(np.mean(half_full_coarse))},
        "populations": pops, "phi>0 fraction per replica [res1, res2, res3]": per_rep_phi_pos,
    }
    (d / "analysis.json").write_text(json.dumps(info, indent=2) + "\n")

    from cgflow.pmf.reference_file import save_marginal_reference

    meta = {"description": (f"ala4 (ACE-(ALA)3-NME, ff14SB, OBC1, 300 K): 2-D marginals of plain Langevin MD, "
                            f"{n_rep} replicas x {n_frames} frames ({info['production_ns_total']:.1f} ns), "
                            f"{args.bins} bins per angle"),
            "method": "plain MD (benchmarks/ala4_reference_md.py)", "n_md_steps": info["n_md_steps"],
            "wall_s": info["wall_s"], "cg_names": names,
            "noise_floor_half_vs_half_max": info["half_vs_half_max"],
            "noise_floor_half_vs_full_max": info["half_vs_full_max"]}
    save_marginal_reference(d / "ala4-marginals.npz", edges, pairs, full, cg_dim, meta)

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    show = [(phis[0], psis[0]), (phis[1], psis[1]), (phis[2], psis[2]), (psis[0], phis[1]), (psis[1], phis[2])]
    fig, axes = plt.subplots(1, len(show), figsize=(3.2 * len(show), 3.2), constrained_layout=True)
    for ax, (i, j) in zip(axes, show):
        p = full[pairs.index((min(i, j), max(i, j)))]
        p = p if i < j else p.T
        with np.errstate(divide="ignore"):
            f = -np.log(p)
        f -= np.nanmin(f[np.isfinite(f)])
        im = ax.imshow(np.where(np.isfinite(f), f, np.nan).T, origin="lower", extent=[-np.pi, np.pi, -np.pi, np.pi],
                       vmin=0, vmax=8, cmap="viridis")
        ax.set_xlabel(names[i])
        ax.set_ylabel(names[j])
    fig.colorbar(im, ax=axes, label="-ln p (kT), empty bins blank", shrink=0.8)
    fig.suptitle(f"ala4 reference MD: {n_rep} x {n_frames} frames, {info['production_ns_total']:.1f} ns")
    fig.savefig(d / "marginals.png", dpi=90)
    print(json.dumps({k: info[k] for k in ("samples", "production_ns_total", "half_vs_half_max", "half_vs_half_mean",
                                           "half_vs_full_max", "half_vs_full_mean", f"coarse_{args.bins // 2}_bins",
                                           "populations")}, indent=1))


if __name__ == "__main__":
    main()
