"""ala4 (ACE-(ALA)3-NME, 6 backbone dihedrals): active learning against plain MD on 2-D marginals.

The reference MD (benchmarks/ala4_reference_md.py: R independent replicas) is split by replica into two
independent halves A and B.  Half B is the **reference** (2-D marginal histograms of the CG pairs of the
active-learning run). Against it:
  - MD: the histograms of half A after n frames of each of its replicas, as a function of the MD steps
    spent by half A (its equilibration included), i.e. what plain MD buys for that many evaluations;
  - active learning: every PMF snapshot of the run(s) (2-D marginals of the ensemble mean).
The noise floor is the KLD of all of half A against half B: MD with half the reference's data.  Figures are
means over the run's CG pairs (forward KLD, nats; model probabilities floored at 1e-10 as in cgflow compare).

Writes into --out: ala4-compare.md (table), curves.csv, ala4-marginals.png (the last snapshot of the first
run beside the full reference, every pair) and ala4-kld.png (KLD vs evaluations).
Usage: python benchmarks/ala4_compare.py benchmarks/results/ala4-run/seed0 [...] --reference-md
       benchmarks/results/ala4-reference --out benchmarks/results/ala4-run
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from cgflow.analysis.compare import _marginal_point, kld_curve_from_snapshots  # noqa: E402
from cgflow.analysis.marginals import histogram_marginals  # noqa: E402
from cgflow.analysis.metrics import forward_kld, probabilities_from_pmf, reference_pmf_kT  # noqa: E402
from cgflow.core.system import MarginalReferencePMF  # noqa: E402
from cgflow.pmf.history import read_history  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", type=Path)
    ap.add_argument("--reference-md", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--epsilon", type=float, default=1e-10)
    args = ap.parse_args()

    z = np.load(args.reference_md / "ala4-reference.npz")
    dih = np.asarray(z["dihedrals"], dtype=np.float64)  # (R, F, 6)
    R, F, d = dih.shape
    every, equil = int(z["frame_every_steps"]), int(z["n_equilibration_steps_per_replica"])
    snaps0 = read_history(args.runs[0])
    last = snaps0[-1]
    pairs = [tuple(p) for p in last.marginal_pairs]
    edges = [np.asarray(e) for e in last.marginal_edges]
    half_a, half_b = dih[: R // 2], dih[R // 2:]

    def marg(x):
        return histogram_marginals(x.reshape(-1, d), edges, pairs)

    ref_b = MarginalReferencePMF(pairs, edges, marg(half_b), d, f"MD half B ({R - R // 2} replicas)")
    ref_all = MarginalReferencePMF(pairs, edges, marg(dih), d, f"MD, all {R} replicas")

    def md_point(x):
        with np.errstate(divide="ignore"):
            return _marginal_point(ref_b, {p: -np.log(h) for p, h in zip(pairs, marg(x))}, args.epsilon)

    rows = []
    for n in np.unique(np.round(np.geomspace(2, F, 25)).astype(int)):
        evals = (R // 2) * (equil + n * every)
        rows.append({"method": "MD (half A)", "run": "md", "evaluations": evals,
                     "forward_kld": md_point(half_a[:, :n])[0]})
    floor = rows[-1]["forward_kld"]
    for run in args.runs:
        c = kld_curve_from_snapshots(read_history(run), ref_b, str(run), args.epsilon, "active_learning")
        rows += [{"method": "active learning", "run": run.name, "evaluations": int(e), "forward_kld": float(k)}
                 for e, k in zip(c.evaluations, c.forward_kld)]
    args.out.mkdir(parents=True, exist_ok=True)
    with open(args.out / "curves.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)

    def first_below(sel, level):
        hit = [r["evaluations"] for r in sel if r["forward_kld"] <= level]
        return min(hit) if hit else None

    levels = (0.1, 0.05, 0.02, 0.01)
    lines = ["| method | run | " + " | ".join(f"evals to KLD {lv:g}" for lv in levels) + " | final KLD | final evals |",
             "|---|---|" + "---|" * (len(levels) + 2)]
    groups = {}
    for r in rows:
        groups.setdefault((r["method"], r["run"]), []).append(r)
    for (m, run), sel in groups.items():
        cells = [first_below(sel, lv) for lv in levels]
        lines.append(f"| {m} | {run} | " + " | ".join(f"{c:.3g}" if c else "not reached" for c in cells)
                     + f" | {sel[-1]['forward_kld']:.3g} | {sel[-1]['evaluations']:.3g} |")
    # beside it, against all R replicas (the reference then shares half A's data: MD's figure is optimistic)
    with np.errstate(divide="ignore"):
        md_vs_all = _marginal_point(ref_all, {p: -np.log(h) for p, h in zip(pairs, marg(half_a))}, args.epsilon)[0]
    al_vs_all = {run.name: kld_curve_from_snapshots(read_history(run), ref_all, str(run), args.epsilon).forward_kld[-1]
                 for run in args.runs}
    info = {"md_half_a_vs_all": md_vs_all, "al_final_vs_all": al_vs_all, "reference": ref_b.description, "pairs": pairs, "n_bins": len(edges[0]) - 1,
            "noise_floor_half_a_vs_half_b": floor, "md_replicas": R, "md_frames_per_replica": F,
            "md_steps_total": int(z["n_md_steps"]), "md_wall_s": float(z["wall_s"])}
    (args.out / "ala4-compare.md").write_text(
        "Mean forward KLD over the CG pairs " + ", ".join(f"{a}|{b}" for a, b in pairs) + " against MD half B.\n\n"
        + "\n".join(lines) + f"\n\n{json.dumps(info)}\n")
    print("\n".join(lines))
    print(json.dumps(info))

    # KLD vs evaluations
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for i, ((m, run), sel) in enumerate(groups.items()):
        ax.loglog([r["evaluations"] for r in sel], [r["forward_kld"] for r in sel], "o-" if m != "MD (half A)" else "s--",
                  ms=3, label=f"{m} ({run})" if m != "MD (half A)" else m, color=f"C{i}")
    ax.axhline(floor, color="k", lw=0.8, ls=":", label="noise floor (MD half A vs half B)")
    ax.set_xlabel("energy evaluations")
    ax.set_ylabel("forward KLD, mean over CG pairs (nats)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title("ala4: 2-D marginals against MD half B", fontsize=9)
    fig.tight_layout()
    fig.savefig(args.out / "ala4-kld.png", dpi=120)
    plt.close(fig)

    # marginals: active learning (last snapshot of the first run) above, full MD reference below
    have = dict(zip(pairs, last.marginal_pmf_kT))
    fig, axes = plt.subplots(2, len(pairs), figsize=(3.1 * len(pairs), 6.0), layout="constrained", squeeze=False)
    names = [str(n) for n in z["cg_names"]]
    for k, (i, j) in enumerate(pairs):
        ext = [edges[i][0], edges[i][-1], edges[j][0], edges[j][-1]]
        p_ref = ref_all.prob_of((i, j))
        f_ref = reference_pmf_kT(p_ref)
        kld = forward_kld(p_ref, np.maximum(probabilities_from_pmf(have[(i, j)]), args.epsilon))
        for row, (f, title) in enumerate(((have[(i, j)], f"active learning, KLD {kld:.3g}"),
                                          (f_ref, f"MD, {R} x {F * every * float(z['timestep_fs']) / 1e6:.2g} ns"))):
            ax = axes[row, k]
            im = ax.imshow(np.clip(np.where(np.isfinite(f), f, 12), 0, 12).T, origin="lower", extent=ext,
                           cmap="viridis", vmin=0, vmax=12, aspect="auto")
            ax.set_title(f"{names[i]} vs {names[j]}: {title}", fontsize=7)
            ax.set_xlabel(names[i], fontsize=7)
            ax.set_ylabel(names[j], fontsize=7)
    fig.colorbar(im, ax=axes.ravel().tolist(), shrink=0.8, label="PMF (kT)")
    fig.suptitle(f"ala4 2-D marginal PMFs: active learning after {last.evaluations:,} evaluations (top) and plain MD, "
                 f"{int(z['n_md_steps']):,} steps (bottom)", fontsize=9)
    fig.savefig(args.out / "ala4-marginals.png", dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
