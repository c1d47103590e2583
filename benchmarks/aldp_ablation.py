"""Which lever bought how much: `aldp-fast` with one lever removed (or added) at a time, one seed.

Each variant is `cgflow run aldp-fast` with `--set` overrides and a fixed iteration budget; the table
gives the forward KLD against the shipped reference at several evaluation budgets (the last PMF
snapshot within each budget), the final evaluations, and the wall time per iteration spent in the flow
and in the ensemble fit.  Prints markdown and writes OUT/ablation.md and OUT/ablation.csv.

    python benchmarks/aldp_ablation.py --out runs/ablation [--iterations 10] [--seed 0] [--only NAME ...]
"""

from __future__ import annotations

import argparse
import csv
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from aldp_efficiency import REFERENCE, snapshot_curve, value_at  # noqa: E402
from machine import describe_machine  # noqa: E402

from cgflow.core.run_directory import read_metrics_csv  # noqa: E402
from cgflow.pmf.reference_file import load_reference  # noqa: E402

VARIANTS: dict[str, tuple[str, list[str]]] = {
    "aldp-fast (all levers)": ("all", []),
    "values only (no mean forces)": ("no-mean-forces", ["labels.mean_forces=false", "ensemble.gradient_weight=0"]),
    "latest draw per copy (no pooling, no mean forces)": (
        "no-pooling", ["labels.estimator=latest", "labels.mean_forces=false", "ensemble.gradient_weight=0",
                       "ensemble.weighting=uniform"]),
    "MC acquisition (reference method) instead of grid score": ("mc-acquisition", ["sampler.kind=mc"]),
    "no space-filling seed points": ("no-space-filling", ["acquisition.n_space_filling_seed_points=0"]),
    "uniform residual weights (no standard errors)": ("uniform-weights", ["ensemble.weighting=uniform"]),
    "cold ensemble fits (500 epochs from scratch)": ("cold-fits", ["ensemble.warm_epochs=null"]),
    "float64 flow": ("float64-flow", ["flow.dtype=float64"]),
    "+ priority revisits (exp(-F) se^2)": ("priority-revisits", ["by_energy.old_selection=boltzmann_se"]),
    "+ first-order bias correction of labels": ("bias-correction", ["labels.bias_correction=true"]),
    "no top-k weight clipping": ("no-clipping", ["labels.top_k_clip=0"]),
    "inverse-variance pooling across iterations (power 2)": ("inverse-variance-pooling",
                                                             ["labels.pool_rule=inverse_variance"]),
    "+ label perturbation (parametric bootstrap)": ("perturb-labels", ["ensemble.perturb_labels=true"]),
}
BUDGETS = (7e4, 1e5, 1.5e5, 2e5)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--preset", default="aldp-fast")
    ap.add_argument("--iterations", type=int, default=10)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--only", nargs="*", default=None, help="short names of the variants to run")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads))
    ref = load_reference(REFERENCE)
    rows = []
    for label, (short, overrides) in VARIANTS.items():
        if args.only is not None and short not in args.only:
            continue
        d = args.out / short
        finished = (d / "metrics.csv").is_file() and len(read_metrics_csv(d / "metrics.csv")) >= args.iterations
        if not finished:
            if d.exists():
                shutil.rmtree(d)  # a run cut short: start it over
            # equal iteration budgets: the preset's own stopping rule (its error bar) is switched off
            cmd = [sys.executable, "-m", "cgflow.cli", "run", args.preset, "--out", str(d), "--seed", str(args.seed),
                   "--no-plots", "--set", "progress=false", "--set", f"stopping.max_iterations={args.iterations}",
                   "--set", "stopping.std_target_kT=null"]
            cmd += [x for o in overrides for x in ("--set", o)]
            print("+", " ".join(cmd), flush=True)
            subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL)
        curve = snapshot_curve(d, ref.prob)
        m = read_metrics_csv(d / "metrics.csv")
        n = len(m)
        rows.append({"variant": label, "short": short, **{f"kld@{b:.0e}": value_at(curve, "evaluations", b)
                                                          for b in BUDGETS},
                     "final_kld": float(curve["forward_kld"][-1]), "final_evaluations": int(curve["evaluations"][-1]),
                     "wall_s": float(m[-1]["wall_time_s"]),
                     "boltzmann_std_kT": float(m[-1].get("boltzmann_std_kT") or "nan"),
                     "boltzmann_abs_err_kT": float(m[-1].get("boltzmann_abs_err_kT") or "nan"),
                     "flow_s_per_it": float(np.mean([float(r["t_flow_s"]) for r in m])),
                     "ensemble_s_per_it": float(np.mean([float(r["t_ensemble_s"]) for r in m])), "iterations": n})
    keys = list(rows[0])
    with open(args.out / "ablation.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=keys)
        w.writeheader()
        w.writerows(rows)
    head = ("| variant | " + " | ".join(f"KLD @ {b:.1e}" for b in BUDGETS)
            + " | final KLD (evaluations) | ensemble std / actual error (kT) | wall | flow s/it | ensemble s/it |")
    lines = [f"{describe_machine()}; seed {args.seed}, {args.iterations} iterations each", "", head,
             "| --- |" + " --- |" * (len(BUDGETS) + 5)]
    for r in rows:
        lines.append(f"| {r['variant']} | " + " | ".join(f"{r[f'kld@{b:.0e}']:.2g}" for b in BUDGETS)
                     + f" | {r['final_kld']:.2g} ({r['final_evaluations']:.2e})"
                     f" | {r['boltzmann_std_kT']:.3f} / {r['boltzmann_abs_err_kT']:.3f} | {r['wall_s'] / 60:.1f} min"
                     f" | {r['flow_s_per_it']:.1f} | {r['ensemble_s_per_it']:.1f} |")
    md = "\n".join(lines) + "\n"
    (args.out / "ablation.md").write_text(md)
    print(md)


if __name__ == "__main__":
    main()
