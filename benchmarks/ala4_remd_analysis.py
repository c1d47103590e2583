"""Noise floor, alpha_L populations, truncation curve and marginal reference file from the ala4 REMD ladders.

Reads ``<dir>/ladder-A/remd.npz`` and ``<dir>/ladder-B/remd.npz`` (benchmarks/ala4_remd.py: two independent
temperature-REMD runs, 8 replicas 300-800 K) and keeps only the 300 K frames (the target temperature). Writes
    <dir>/ala4-remd-300K.npz      the 300 K dihedrals of both ladders (float32) with the evaluations at each frame
    <dir>/ala4-remd-marginals.npz marginal reference file (cgflow.pmf.reference_file) of both ladders, --bins
    <dir>/analysis.json           ladder A vs ladder B forward KLD on the 24x24 marginals (the noise floor),
                                  alpha_L populations per residue with error bars, the truncation curve, costs
    <dir>/remd.png                -ln p of the 5 neighbouring pairs and the truncation curve
Usage: ``python benchmarks/ala4_remd_analysis.py benchmarks/results/ala4-remd``.
"""

from __future__ import annotations

import argparse
import json
from itertools import combinations
from pathlib import Path

import numpy as np
from ala4_reference_analysis import forward_kld, histograms  # type: ignore[import-not-found]

NEIGHBOUR_PAIRS = [("phi:1", "psi:1"), ("psi:1", "phi:2"), ("phi:2", "psi:2"), ("psi:2", "phi:3"), ("phi:3", "psi:3")]


def block_se(x: np.ndarray, n_blocks: int = 10) -> float:
    """Standard error of the mean of a correlated series from ``n_blocks`` contiguous blocks."""
    b = np.array([blk.mean() for blk in np.array_split(x, n_blocks)])
    return float(b.std(ddof=1) / np.sqrt(n_blocks))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("dir")
    ap.add_argument("--bins", type=int, default=24, help="per angle, for the noise floor")
    ap.add_argument("--reference-bins", type=int, default=60, help="per angle, for the shipped marginal file")
    args = ap.parse_args()
    d = Path(args.dir)
    lad = {}
    for name in ("A", "B"):
        z = np.load(d / f"ladder-{name}" / "remd.npz")
        meta = json.loads((d / f"ladder-{name}" / "remd.json").read_text())
        lad[name] = {"dih": np.asarray(z["dihedrals"][:, 0, :], dtype=np.float64),  # (n_cycles, 6) at 300 K
                     "evals": np.asarray(z["evaluations_at_cycle"]), "meta": meta,
                     "names": [str(n) for n in z["cg_names"]]}
    names = lad["A"]["names"]
    cg_dim = len(names)
    pairs = list(combinations(range(cg_dim), 2))
    nb = [tuple(sorted((names.index(a), names.index(b)))) for a, b in NEIGHBOUR_PAIRS]
    edges = np.linspace(-np.pi, np.pi, args.bins + 1)
    ha, hb = histograms(lad["A"]["dih"], pairs, edges), histograms(lad["B"]["dih"], pairs, edges)
    both = np.concatenate([lad["A"]["dih"], lad["B"]["dih"]])
    hab = histograms(both, pairs, edges)
    kab = [0.5 * (forward_kld(ha[pairs.index(p)], hb[pairs.index(p)]) + forward_kld(hb[pairs.index(p)],
                                                                                      ha[pairs.index(p)])) for p in nb]
    k_half_full = [0.5 * (forward_kld(ha[pairs.index(p)], hab[pairs.index(p)])
                          + forward_kld(hb[pairs.index(p)], hab[pairs.index(p)])) for p in nb]

    # truncation curve: ladder A cut after n cycles against ladder B in full, and B cut against A
    curve = []
    for frac in (0.05, 0.1, 0.2, 0.3, 0.5, 0.7, 1.0):
        row = {"fraction": frac}
        for x, y in (("A", "B"), ("B", "A")):
            n = max(int(frac * len(lad[x]["dih"])), 10)
            hx = histograms(lad[x]["dih"][:n], nb, edges)
            hy = histograms(lad[y]["dih"], nb, edges)
            row[f"{x}_evaluations"] = int(lad[x]["evals"][n - 1])
            row[f"{x}_vs_full_{y}_kld_mean"] = float(np.mean([forward_kld(p, q) for p, q in zip(hx, hy)]))
        curve.append(row)

    pops = {}
    for k in (1, 2, 3):
        i, j = names.index(f"phi:{k}"), names.index(f"psi:{k}")
        per = {}
        for name in ("A", "B"):
            phi, psi = lad[name]["dih"][:, i], lad[name]["dih"][:, j]
            per[name] = {"alpha_L (phi>0)": ((phi > 0).mean(), block_se((phi > 0).astype(float))),
                         "alpha_R (phi<0, -2.6<psi<0.9)": (((phi < 0) & (psi > -2.6) & (psi < 0.9)).mean(),
                                                           block_se(((phi < 0) & (psi > -2.6) & (psi < 0.9))
                                                                    .astype(float)))}
        pops[f"residue {k}"] = {}
        for basin in per["A"]:
            (ma, sa), (mb, sb) = per["A"][basin], per["B"][basin]
            pops[f"residue {k}"][basin] = {
                "ladder_A": [float(ma), sa], "ladder_B": [float(mb), sb],
                "combined": float((ma + mb) / 2), "se_from_A_vs_B": float(abs(ma - mb) / 2),
                "se_from_blocks": float(0.5 * np.hypot(sa, sb)),
                "free_energy_kT_vs_rest": float(-np.log((ma + mb) / 2 / (1 - (ma + mb) / 2)))}
    cost = {name: {k: lad[name]["meta"][k] for k in ("n_evaluations", "n_md_steps", "n_energy_evaluations",
                                                       "wall_s", "ns_per_replica", "cycles", "round_trips",
                                                       "acceptance", "temperatures_K")} for name in lad}
    info = {"bins": args.bins, "pairs": [f"{a}|{b}" for a, b in NEIGHBOUR_PAIRS],
            "frames_300K": {n: int(len(lad[n]["dih"])) for n in lad},
            "noise_floor_A_vs_B_symmetrized_kld": kab, "noise_floor_mean": float(np.mean(kab)),
            "noise_floor_max": float(np.max(kab)),
            "half_vs_full_kld": k_half_full, "half_vs_full_mean": float(np.mean(k_half_full)),
            "truncation_curve": curve, "populations": pops, "cost": cost,
            "n_evaluations_total": int(sum(lad[n]["meta"]["n_evaluations"] for n in lad))}
    (d / "analysis.json").write_text(json.dumps(info, indent=2) + "\n")

    np.savez_compressed(d / "ala4-remd-300K.npz", cg_names=np.array(names),
                        dihedrals_A=lad["A"]["dih"].astype(np.float32), evaluations_A=lad["A"]["evals"],
                        dihedrals_B=lad["B"]["dih"].astype(np.float32), evaluations_B=lad["B"]["evals"])
    from cgflow.pmf.reference_file import save_marginal_reference

    redges = np.linspace(-np.pi, np.pi, args.reference_bins + 1)
    save_marginal_reference(d / "ala4-remd-marginals.npz", redges, pairs, histograms(both, pairs, redges), cg_dim, {
        "description": (f"ala4 (ACE-(ALA)3-NME, ff14SB, OBC1, 300 K): 2-D marginals of the 300 K replica of two "
                        f"temperature-REMD ladders (8 replicas 300-800 K), {len(both)} frames, "
                        f"{args.reference_bins} bins per angle"),
        "method": "temperature REMD (benchmarks/ala4_remd.py)", "n_evaluations": info["n_evaluations_total"],
        "cg_names": names, "noise_floor_24bins_A_vs_B_mean": info["noise_floor_mean"],
        "noise_floor_24bins_A_vs_B_max": info["noise_floor_max"]})

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 6, figsize=(20, 3.4), constrained_layout=True)
    for ax, (a, b) in zip(axes, NEIGHBOUR_PAIRS):
        i, j = names.index(a), names.index(b)
        h = histograms(both, [(i, j)], redges)[0]
        with np.errstate(divide="ignore"):
            f = -np.log(h)
        f -= np.min(f[np.isfinite(f)])
        im = ax.imshow(np.where(np.isfinite(f), f, np.nan).T, origin="lower",
                       extent=[-np.pi, np.pi, -np.pi, np.pi], vmin=0, vmax=8, cmap="viridis")
        ax.set_xlabel(f"{a} (rad)", fontsize=11)
        ax.set_ylabel(f"{b} (rad)", fontsize=11)
    fig.colorbar(im, ax=list(axes[:5]), label="-ln p (kT) at 300 K, empty bins blank", shrink=0.8)
    ax = axes[5]
    for x, y in (("A", "B"), ("B", "A")):
        ax.loglog([r[f"{x}_evaluations"] for r in curve], [r[f"{x}_vs_full_{y}_kld_mean"] for r in curve], "o-",
                  label=f"ladder {x} truncated vs full {y}")
    ax.axhline(info["noise_floor_mean"], color="k", ls="--", label="A vs B (full)")
    ax.set_xlabel("energy evaluations (all replicas)", fontsize=11)
    ax.set_ylabel(f"mean forward KLD, {args.bins}x{args.bins} (nats)", fontsize=11)
    ax.legend(fontsize=8)
    ax.set_title("REMD convergence", fontsize=12)
    fig.savefig(d / "remd.png", dpi=110)
    print(json.dumps({k: info[k] for k in ("frames_300K", "noise_floor_mean", "noise_floor_max",
                                           "half_vs_full_mean", "n_evaluations_total")}, indent=1))
    for r in curve:
        print(r)
    for k, v in pops.items():
        print(k, {b: (round(x["combined"], 4), round(x["se_from_A_vs_B"], 4), round(x["se_from_blocks"], 4))
                  for b, x in v.items()})


if __name__ == "__main__":
    main()
