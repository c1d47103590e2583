"""Active learning against replica exchange on `ala4`, scored the same way: each against one full REMD ladder.

The REMD reference is two independent ladders (A, B; benchmarks/results/ala4-remd/ala4-remd-300K.npz, with the
cumulative energy evaluations of the whole ladder at each 300 K frame). REMD's cost to accuracy is one ladder cut
short at a given number of evaluations and scored against the *other* ladder in full; every AL run is scored against
each full ladder too, so both sides carry the same reference noise (ladder A vs ladder B in full: 0.027). The
number of evaluations REMD needs to match an AL run is read off REMD's curve (log-log interpolation, per direction;
the median of the two directions is reported), and the ratio REMD / AL is the saving.

Scores: forward KLD sum P_ref ln(P_ref / Q) on the 24 x 24 marginals of the preset's 5 neighbouring pairs (model
probabilities floored at 1e-10, as `cgflow compare`), mean over the pairs; alpha_L (phi_k > 0) population per
residue, and for the AL runs the run's own error bar on F there (pmf.npz ``error_bar_kT``).

Usage (a run is LABEL=DIR; its evaluations are the last ``evals_total`` of its metrics.csv, which for a refined run
includes the biased MD it was refined with)::

    python benchmarks/ala4_al_vs_remd.py "run s0=benchmarks/results/ala4-validate/run-s0" ... \
        --out benchmarks/results/ala4-validate/al-vs-remd
"""

from __future__ import annotations

import argparse
import csv
import itertools
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from ala4_vs_remd import MD, REMD, alpha_l, alpha_l_error_bar, kld, pmf_file  # noqa: E402

from cgflow.analysis.marginals import histogram_marginals  # noqa: E402
from cgflow.pmf.history import read_history  # noqa: E402


def mean_kld(ref: list[np.ndarray], probs: list[np.ndarray], reverse: bool = False) -> float:
    """Mean over the pairs of the forward KLD sum P_ref ln(P_ref / Q) of ``probs`` Q (any normalization) from the
    reference histograms P_ref; ``reverse``: sum Q ln(Q / P_ref) (P_ref floored at 1e-10), which forgives a
    histogram its empty bins (the direction the REMD README's truncation curve used)."""
    if reverse:
        return float(np.mean([kld(np.nan_to_num(q) / np.nan_to_num(q).sum(), r) for r, q in zip(ref, probs)]))
    return float(np.mean([kld(r / r.sum(), np.nan_to_num(q)) for r, q in zip(ref, probs)]))


def remd_curve(frames: np.ndarray, evals: np.ndarray, ref: list[np.ndarray], edges: list[np.ndarray],
               pairs: list[tuple[int, int]], cuts: np.ndarray, reverse: bool = False) -> np.ndarray:
    """(len(cuts),) mean forward KLD of one ladder's 300 K frames up to each evaluation count ``cuts`` (the frames
    (N, 6) radians, ``evals`` (N,) the ladder's cumulative evaluations at each frame) against ``ref``."""
    out = np.full(len(cuts), np.nan)
    for c, cut in enumerate(cuts):
        keep = evals <= cut
        if keep.sum() >= 10:
            out[c] = mean_kld(ref, histogram_marginals(frames[keep], edges, pairs), reverse)
    return out


def evaluations_to_reach(target: float, cuts: np.ndarray, curve: np.ndarray) -> float | None:
    """The evaluations at which REMD's curve first falls to ``target`` (log-log interpolation between the cuts on
    either side of the first crossing), or None if it never does."""
    ok = np.isfinite(curve)
    cuts, curve = cuts[ok], curve[ok]
    below = np.nonzero(curve <= target)[0]
    if not len(below):
        return None
    i = below[0]
    if i == 0:
        return float(cuts[0])
    x0, x1, y0, y1 = np.log(cuts[i - 1]), np.log(cuts[i]), np.log(curve[i - 1]), np.log(curve[i])
    return float(np.exp(x0 + (np.log(target) - y0) * (x1 - x0) / (y1 - y0)))


def run_curve(run: Path, full: dict, pairs: list[tuple[int, int]], reverse: bool) -> list[tuple[int, float, float]]:
    """(evaluations, KLD vs full ladder A, vs full ladder B) of every PMF snapshot of a run (pmf_history/, the
    marginals of each iteration; the last one is integrated with fewer points than pmf.npz's); [] without."""
    out = []
    for snap in read_history(run):
        if snap.marginal_pmf_kT is None or snap.marginal_pairs != pairs:
            continue
        probs = [np.exp(-(fk - np.nanmin(fk))) for fk in np.asarray(snap.marginal_pmf_kT)]
        out.append((snap.evaluations, mean_kld(full["A"], probs, reverse), mean_kld(full["B"], probs, reverse)))
    return out


def run_evaluations(run: Path) -> int:
    """The run's total energy evaluations: the last ``evals_total`` of its metrics.csv."""
    with open(run / "metrics.csv") as fh:
        rows = list(csv.DictReader(fh))
    return int(float(rows[-1]["evals_total"]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", help="LABEL=RUN_DIR (a cgflow run directory with pmf.npz or pmf-slim.npz, and metrics.csv)")
    ap.add_argument("--out", type=Path, required=True, help="directory for table.md, al-vs-remd.json, al-vs-remd.png")
    args = ap.parse_args()
    runs = []
    for item in args.runs:
        label, sep, path = item.partition("=")
        if not sep or not pmf_file(Path(path)).is_file():
            ap.error(f"{item!r}: expected LABEL=RUN_DIR with RUN_DIR/pmf.npz (or pmf-slim.npz)")
        runs.append((label, Path(path)))
    args.out.mkdir(parents=True, exist_ok=True)

    z = np.load(REMD / "ala4-remd-300K.npz")
    names = [str(n) for n in z["cg_names"]]
    ladders = {k: (np.asarray(z[f"dihedrals_{k}"], np.float64), np.asarray(z[f"evaluations_{k}"], np.float64))
               for k in ("A", "B")}
    first = np.load(pmf_file(runs[0][1]))
    pairs = [tuple(int(v) for v in p) for p in first["marginal_pairs"]]
    edges = [np.asarray(first["marginal_edges_0"])] * len(names)
    full = {k: histogram_marginals(f, edges, pairs) for k, (f, _) in ladders.items()}
    other = {"A": "B", "B": "A"}
    cuts = np.geomspace(2e5, min(e[-1] for _, e in ladders.values()), 40)
    md = np.asarray(np.load(MD / "ala4-reference.npz")["dihedrals"], np.float64).reshape(-1, len(names))
    sources = [("plain MD (8 x 2.25 ns)", 9.4e6, histogram_marginals(md, edges, pairs), None)]
    for label, run in runs:
        zz = np.load(pmf_file(run))
        if [tuple(int(v) for v in p) for p in zz["marginal_pairs"]] != pairs:
            raise SystemExit(f"error: {run}: marginal pairs differ from {runs[0][1]}")
        probs = [np.exp(-(fk - np.nanmin(fk))) for fk in np.asarray(zz["marginal_pmf_kT"])]
        sources.append((label, float(run_evaluations(run)), probs, alpha_l_error_bar(run, names)))
    remd_alpha = {k: [alpha_l(r, p, names, edges[0]) for r, p in zip(full[k], pairs)] for k in ladders}
    pops_remd = {k: " / ".join(f"{a:.4f}" for a in remd_alpha[k] if a is not None) for k in ladders}

    result: dict = {"pairs": [f"{names[i]}|{names[j]}" for i, j in pairs], "bins": len(edges[0]) - 1,
                    "remd_cuts_evaluations": cuts.tolist(), "remd_alpha_L": remd_alpha}
    md_lines: list[str] = []
    for metric, reverse in (("forward", False), ("reverse", True)):
        curves = {k: remd_curve(f, e, full[other[k]], edges, pairs, cuts, reverse) for k, (f, e) in ladders.items()}
        floor = {k: mean_kld(full[other[k]], full[k], reverse) for k in ladders}
        rows, table = [], []
        for label, n, probs, eb in sources:
            # scored against ladder Y, matched with REMD ladder X (= the other one) cut short against Y in full
            k_vs = {y: mean_kld(full[y], probs, reverse) for y in ladders}
            need = {y: evaluations_to_reach(k_vs[y], cuts, curves[other[y]]) for y in ladders}
            known = [v for v in need.values() if v is not None]
            remd_n = float(np.median(known)) if len(known) == len(need) else None
            alpha = [alpha_l(q, p, names, edges[0]) for q, p in zip(probs, pairs)]
            rows.append({"source": label, "evaluations": n, "kld_vs_A": k_vs["A"], "kld_vs_B": k_vs["B"],
                         "remd_evaluations_same_kld": need,
                         "remd_over_source": None if remd_n is None else remd_n / n, "alpha_L": alpha,
                         "alpha_L_error_bar_kT": None if eb is None else
                         [eb.get(names[i]) if a is not None else None for a, (i, _) in zip(alpha, pairs)]})
            ratio = "REMD never gets there" if remd_n is None else f"{remd_n:.2g} ({remd_n / n:.2g}x)"
            pops = " / ".join(f"{a:.4f}" for a in alpha if a is not None)
            table.append(f"| {label} | {n:.2g} | {k_vs['A']:.3f} | {k_vs['B']:.3f} | {ratio} | {pops} |")
        md_lines += [
            f"{metric} KLD ({'sum Q ln(Q / P_ladder)' if reverse else 'sum P_ladder ln(P_ladder / Q)'}), "
            "mean of the 5 pairs:", "",
            "| source | evaluations | KLD vs ladder A | KLD vs ladder B | REMD evaluations for the same KLD "
            "(REMD / source) | alpha_L res 1 / 2 / 3 |",
            "|---|---:|---:|---:|---|---|",
            f"| REMD ladder A in full | {ladders['A'][1][-1]:.2g} | - | {floor['A']:.3f} | - | {pops_remd['A']} |",
            f"| REMD ladder B in full | {ladders['B'][1][-1]:.2g} | {floor['B']:.3f} | - | - | {pops_remd['B']} |",
            *table, ""]
        al_curves = {label: run_curve(run, full, pairs, reverse) for label, run in runs}
        result[metric] = {"remd_A_vs_full_B": curves["A"].tolist(), "remd_B_vs_full_A": curves["B"].tolist(),
                          "remd_full_A_vs_B": floor, "sources": rows,
                          "al_curves_evaluations_vs_A_vs_B": {k: v for k, v in al_curves.items() if v}}
        if not reverse:
            plotted = (curves, floor, rows, al_curves)
    (args.out / "table.md").write_text("\n".join(md_lines))
    print("\n".join(md_lines))
    (args.out / "al-vs-remd.json").write_text(json.dumps(result, indent=2) + "\n")
    curves, floor, rows, al_curves = plotted

    fig, (ax, bx) = plt.subplots(1, 2, figsize=(15, 5.2))
    palette = list(plt.get_cmap("tab10").colors) + list(plt.get_cmap("Dark2").colors)
    for k, c in (("A", "black"), ("B", "0.6")):
        ax.plot(cuts, curves[k], color=c, label=f"REMD ladder {k} cut short, vs full ladder {other[k]}")
    ax.axhline(np.mean(list(floor.values())), color="0.3", ls=":", label="ladder A vs ladder B in full (floor)")
    marks = itertools.cycle("osD^vP*Xhp<>")
    for j, row in enumerate(rows):
        m = next(marks)
        color = palette[(j + 2) % len(palette)]
        curve = al_curves.get(row["source"])
        if curve:  # every iteration, scored against the mean of the two ladders' KLDs
            ev, ka, kb = (np.array(v) for v in zip(*curve))
            ax.plot(ev, 0.5 * (ka + kb), "-", color=color, lw=1, alpha=0.7)
        ax.plot([row["evaluations"]] * 2, [row["kld_vs_A"], row["kld_vs_B"]], m + "-", ms=7, color=color,
                label=f"{row['source']} (vs A, vs B)")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("energy evaluations")
    ax.set_ylabel("forward KLD, mean of 5 pairs (nats)")
    ax.set_title("ala4: cost to accuracy against one full REMD ladder")
    ax.legend(fontsize=7)
    res = [names[i] for (i, _), a in zip(pairs, remd_alpha["A"]) if a is not None]
    x = np.arange(len(res))
    width = 0.8 / (len(rows) + 2)
    for j, k in enumerate(ladders):
        bx.bar(x + j * width, [a for a in remd_alpha[k] if a is not None], width, color=("black", "0.6")[j],
               label=f"REMD ladder {k}")
    for j, row in enumerate(rows):
        a = np.array([v for v in row["alpha_L"] if v is not None])
        eb = row["alpha_L_error_bar_kT"]
        e = None if eb is None else np.array([v for v, q in zip(eb, row["alpha_L"]) if q is not None], float)
        yerr = None if e is None else np.vstack([a - a * np.exp(-e), a * np.exp(e) - a])
        bx.bar(x + (j + 2) * width, a, width, yerr=yerr, capsize=2, label=row["source"],
               color=palette[(j + 2) % len(palette)])
    bx.set_yscale("log")
    bx.set_xticks(x + 0.4 - width / 2, [f"{r} > 0 rad" for r in res])
    bx.set_ylabel("alpha_L population at 300 K")
    bx.set_title("alpha_L of each residue (bars on AL: the run's own error bar on F)", fontsize=10)
    bx.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    fig.savefig(args.out / "al-vs-remd.png", dpi=120)


if __name__ == "__main__":
    main()
