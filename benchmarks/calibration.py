"""Calibration of candidate error bars against known answers, from calibration_collect.py dumps.

    python benchmarks/calibration.py RUN_DIR [RUN_DIR ...] [--from-iteration 3] [--csv OUT.csv]

For every iteration (from ``--from-iteration`` on) of every run and every candidate error bar
sigma_c(b) (kT per bin) it prints

* predicted: sqrt(2/pi) * sum_b p_model(b) sigma_c(b), the Boltzmann-weighted absolute error a
  Gaussian error of std sigma_c predicts (model weights: what a run without a reference can compute);
* actual: sum_b p_ref(b) |F(b) - F_ref(b) - c|, c the p_ref-weighted mean of F - F_ref (reference
  weights);
* ratio predicted/actual, and the coverages: the p_ref mass of bins with |F - F_ref - c| <= sigma_c
  (1 sigma, nominal 0.683) and <= 2 sigma_c (nominal 0.954);
* actual_model_kT / ratio_model: the same actual error with the model's weights (p_model, and c its
  p_model-weighted mean), what the prediction averages over: the two differ when the model puts
  probability where the reference has little (an extrapolated basin in an exploring iteration).

``--plot OUT.png``: one row per system (run names SYSTEM_sSEED): predicted vs actual over iterations
and seeds (the 1.5x band shaded), and the coverages against their nominal values.

The candidates are the functions in CANDIDATES; the one cgflow ships is
``cgflow.pmf.error_bar.error_bar_per_bin`` (candidate "shipped").
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import numpy as np

SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)


def load_iterations(run_dir: Path) -> list[dict]:
    out = []
    for f in sorted((Path(run_dir) / "calib").glob("iter_*.npz")):
        d = dict(np.load(f))
        d["iteration"] = int(f.stem.split("_")[1])
        out.append(d)
    return out


def truth(d: dict):
    """(per-bin error e (n_bins,), p_ref, mask of bins with p_ref > 0)."""
    mean = d["members_grid_kT"].mean(0)
    p_ref = d["reference_prob"]
    ok = p_ref > 0
    f_ref = np.where(ok, -np.log(np.where(ok, p_ref, 1.0)), np.nan)
    diff = mean - f_ref
    c = np.sum(p_ref[ok] * diff[ok]) / p_ref[ok].sum()
    return np.where(ok, diff - c, np.nan), p_ref, ok


def model_prob(d: dict) -> np.ndarray:
    mean = d["members_grid_kT"].mean(0)
    w = np.exp(-(mean - mean.min()))
    return w / w.sum()


def cand_std(d):
    return d["members_grid_kT"].std(0, ddof=1)


def cand_heldout(d):
    return float(d["std_scale"]) * cand_std(d)


def cand_shipped(d):
    from cgflow.pmf.error_bar import ErrorBarInputs, error_bar_per_bin

    return error_bar_per_bin(ErrorBarInputs.from_arrays(d)).error_bar_kT


CANDIDATES = {"std": cand_std, "heldout": cand_heldout, "shipped": cand_shipped}


def evaluate(d: dict, sigma: np.ndarray) -> dict:
    e, p_ref, ok = truth(d)
    p = model_prob(d)
    pred = SQRT_2_OVER_PI * float(np.sum(p * sigma))
    actual = float(np.sum(p_ref[ok] * np.abs(e[ok])))
    cov1 = float(np.sum(p_ref[ok] * (np.abs(e[ok]) <= sigma[ok])))
    cov2 = float(np.sum(p_ref[ok] * (np.abs(e[ok]) <= 2 * sigma[ok])))
    em = e[ok] - np.sum(p[ok] * e[ok]) / p[ok].sum()
    actual_m = float(np.sum(p[ok] * np.abs(em)) / p[ok].sum())
    return {"predicted_kT": pred, "actual_kT": actual, "ratio": pred / actual, "cov1": cov1, "cov2": cov2,
            "actual_model_kT": actual_m, "ratio_model": pred / actual_m}


def system_of(run: str) -> str:
    return run.rsplit("_s", 1)[0]


def summarize(rows: list[dict], label: str) -> str:
    rat = np.array([x["ratio"] for x in rows])
    ratm = np.array([x["ratio_model"] for x in rows])
    c1 = np.array([x["cov1"] for x in rows])
    c2 = np.array([x["cov2"] for x in rows])
    return (f"{label:28s} n={len(rows):3d} | ratio {rat.min():.2f}-{rat.max():.2f} (median {np.median(rat):.2f}; "
            f"{np.mean((rat >= 1 / 1.5) & (rat <= 1.5)):.0%} within 1.5x) | vs model-weighted actual: median "
            f"{np.median(ratm):.2f}, {np.mean((ratm >= 1 / 1.5) & (ratm <= 1.5)):.0%} within 1.5x | cov1 "
            f"{c1.min():.2f}-{c1.max():.2f} (median {np.median(c1):.2f}) | cov2 {c2.min():.2f}-{c2.max():.2f} "
            f"(median {np.median(c2):.2f})")


def plot(rows: list[dict], candidate: str, png: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sel = [x for x in rows if x["candidate"] == candidate]
    systems = sorted({system_of(x["run"]) for x in sel})
    fig, axes = plt.subplots(len(systems), 2, figsize=(11, 4 * len(systems)), squeeze=False)
    for ax, sysname in zip(axes, systems):
        rs = [x for x in sel if system_of(x["run"]) == sysname]
        act, pred = np.array([x["actual_kT"] for x in rs]), np.array([x["predicted_kT"] for x in rs])
        it = np.array([x["iteration"] for x in rs])
        lo, hi = min(act.min(), pred.min()) / 2, max(act.max(), pred.max()) * 2
        t = np.geomspace(lo, hi, 10)
        ax[0].fill_between(t, t / 1.5, t * 1.5, color="0.85", label="within 1.5x")
        ax[0].plot(t, t, "k-", lw=0.8)
        sc = ax[0].scatter(act, pred, c=it, cmap="viridis", s=30)
        fig.colorbar(sc, ax=ax[0], label="iteration")
        ax[0].set_xscale("log")
        ax[0].set_yscale("log")
        from matplotlib.ticker import NullFormatter

        ax[0].xaxis.set_minor_formatter(NullFormatter())
        ax[0].yaxis.set_minor_formatter(NullFormatter())
        ax[0].set_xlabel("actual Boltzmann-weighted |error| (reference weights, kT)")
        ax[0].set_ylabel("predicted: the run's error_bar_kT (kT)")
        ax[0].set_title(f"{sysname}: predicted vs actual ({len({x['run'] for x in rs})} seeds)", fontsize=13)
        ax[0].legend(loc="upper left")
        for key, nominal, col in (("cov1", 0.683, "C0"), ("cov2", 0.954, "C3")):
            for run in sorted({x["run"] for x in rs}):
                r2 = [x for x in rs if x["run"] == run]
                ax[1].plot([x["iteration"] for x in r2], [x[key] for x in r2], "o-", color=col, alpha=0.5, ms=4)
            ax[1].axhline(nominal, color=col, ls="--", label=f"{key[-1]}-sigma coverage (nominal {nominal})")
        ax[1].set_ylim(-0.02, 1.02)
        ax[1].set_xlabel("iteration")
        ax[1].set_ylabel("reference mass within k error bars")
        ax[1].set_title(f"{sysname}: coverage", fontsize=13)
        ax[1].legend(loc="lower right", fontsize=9)
    fig.tight_layout()
    fig.savefig(png, dpi=100)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+")
    ap.add_argument("--from-iteration", type=int, default=3)
    ap.add_argument("--candidates", default=",".join(CANDIDATES))
    ap.add_argument("--csv")
    ap.add_argument("--plot", help="figure of the shipped candidate (PNG)")
    a = ap.parse_args()
    names = a.candidates.split(",")
    rows = []
    for r in a.runs:
        for d in load_iterations(Path(r)):
            if d["iteration"] < a.from_iteration or "reference_prob" not in d:
                continue
            for n in names:
                rows.append({"run": Path(r).name, "iteration": d["iteration"], "evals": int(d["evals_total"]),
                             "candidate": n, **evaluate(d, CANDIDATES[n](d))})
    for n in names:
        sel = [x for x in rows if x["candidate"] == n]
        if not sel:
            continue
        print(summarize(sel, f"{n}: all"))
        for sysname in sorted({system_of(x["run"]) for x in sel}):
            print(summarize([x for x in sel if system_of(x["run"]) == sysname], f"{n}: {sysname}"))
    if a.plot:
        plot(rows, "shipped", a.plot)
    if a.csv:
        import csv

        with open(a.csv, "w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)


if __name__ == "__main__":
    main()
