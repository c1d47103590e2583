"""Is a run's error bar on its 2-D marginals right, and is `cgflow validate`'s verdict?  Both against REMD.

Reads a ``cgflow validate`` directory of an `ala4` run (validate.npz: the run's marginal PMFs, its error bar projected
on the marginal bins, the MD's z-scores) and the REMD 300 K frames (benchmarks/results/ala4-remd/ala4-remd-300K.npz).
For each ladder, over the bins the validation resolved that hold >= 20 frames of that ladder: the fraction where
|F_run - F_REMD| (both centred with the run's probabilities) exceeds 2 sqrt(eb^2 + n^2) (n: the REMD noise of the
bin, from the two ladders' difference / sqrt 2), the fraction beyond 2 eb alone, and the run-probability mass within
1 eb (nominal for a calibrated Gaussian error bar: ~5 %, ~5 %, ~68 %); beside it the fraction of resolved bins the
MD flagged (|z| > 2).  Usage: ``python benchmarks/ala4_error_bar_vs_remd.py VALIDATE_DIR``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from cgflow.analysis.marginals import histogram_marginals

REMD = Path(__file__).resolve().parent / "results" / "ala4-remd" / "ala4-remd-300K.npz"


def main() -> None:
    if len(sys.argv) != 2 or not Path(sys.argv[1], "validate.npz").is_file():
        raise SystemExit("usage: python benchmarks/ala4_error_bar_vs_remd.py VALIDATE_DIR (with validate.npz)")
    z = np.load(Path(sys.argv[1]) / "validate.npz")
    r = np.load(REMD)
    pairs = [tuple(int(v) for v in p) for p in z["marginal_pairs"]]
    edges = [z[f"marginal_edges_{i}"] for i in range(len(r["cg_names"]))]
    hist = {k: histogram_marginals(r[f"dihedrals_{k}"].astype(np.float64), edges, pairs) for k in ("A", "B")}
    for lad, other in (("A", "B"), ("B", "A")):
        n_frames = len(r[f"dihedrals_{lad}"])
        n = flag_both = flag_eb = 0
        within = []
        for p in range(len(pairs)):
            run, eb, res = z["run_marginal_pmf_kT"][p], z["run_error_bar_kT"][p], z["resolved"][p]
            h, ho = hist[lad][p], hist[other][p]
            with np.errstate(divide="ignore"):
                f_ref, f_other = -np.log(h), -np.log(ho)
            m = res & np.isfinite(f_ref) & np.isfinite(f_other) & (h * n_frames >= 20)
            pr = np.exp(-(run - run.min()))
            pr /= pr.sum()
            d = run - f_ref
            d = d - np.sum(pr[m] * d[m]) / pr[m].sum()
            with np.errstate(invalid="ignore"):
                noise = np.abs(f_ref - f_other) / np.sqrt(2.0)
            n += int(m.sum())
            flag_both += int(np.sum(np.abs(d[m]) > 2 * np.sqrt(eb[m] ** 2 + noise[m] ** 2)))
            flag_eb += int(np.sum(np.abs(d[m]) > 2 * eb[m]))
            within.append(float(np.sum(pr[m] * (np.abs(d[m]) <= eb[m])) / pr[m].sum()))
        print(f"REMD ladder {lad}: {n} bins; |run - REMD| > 2 sqrt(eb^2 + REMD noise^2): {flag_both / n:.1%}; "
              f"> 2 eb: {flag_eb / n:.1%}; run probability within 1 eb: {np.mean(within):.2f} (mean of the pairs)")
    zv = z["z"][z["resolved"]]
    print(f"cgflow validate: {np.mean(np.abs(zv) > 2):.1%} of {zv.size} resolved bins beyond 2 combined error bars")


if __name__ == "__main__":
    main()
