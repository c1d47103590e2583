"""Collect what a calibration study of the run's error bar needs, per iteration of an AL run.

    python benchmarks/calibration_collect.py PRESET_OR_YAML --seed N --out DIR [--set KEY=VALUE ...]
                                             [--exact-pmf MODULE:FUNC]

Runs ``cgflow run`` (Python API, no plots) and writes ``DIR/calib/iter_XXX.npz`` after every
iteration: the members' predictions on the evaluation grid (K, n_bins) kT, the ensemble mean/std,
the labels (points, values, standard errors, two-halves noise, ESS, draws), each member's
predictions at the labelled points and which member held which point out, the dataset's points,
and the reference probabilities on the grid (when the system has a full-grid reference).
``benchmarks/calibration.py`` evaluates candidate error bars from these files offline, so a new
candidate needs no new run.  Pin it: ``OMP_NUM_THREADS=1 taskset -c 0 python ...``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch


class CalibrationDump:
    """A reporter (never changes what the run computes) that writes DIR/calib/iter_XXX.npz."""

    def __init__(self, out: Path, exact_pmf=None):
        self.out = Path(out) / "calib"  # made at the first iteration (the run wants a new directory)
        self.exact_pmf = exact_pmf  # f(points (n, d)) -> exact PMF (kT, (n,)), for systems of d > 2

    @torch.no_grad()
    def on_iteration(self, run, row: dict) -> None:
        ens, dev = run.ensemble, run.device
        self.out.mkdir(exist_ok=True)
        members = ens(run.grid.to(dev)).cpu().numpy()
        lab = run.last_labels
        arrays = {
            "members_grid_kT": members, "grid": run.grid.numpy(),
            "grid_shape": np.array([len(e) - 1 for e in run.edges]),
            "label_points": lab.points.numpy(), "label_pmf_kT": lab.pmf_kT.numpy(),
            "label_index": lab.index.numpy(),
            "members_at_labels_kT": ens(lab.points.to(dev)).cpu().numpy(),
            "held_out": ens.last_held_out.numpy(),
            "points": run.dataset.points.numpy(), "points_added_in": run.dataset.added_in.numpy(),
            "points_is_train": run.dataset.is_train.numpy(),
            "cg_periodic": np.array(run.system.cg_periodic), "cg_domain": np.array(run.system.cg_domain),
            "evals_total": np.array(row["evals_total"]), "std_scale": np.array(float(ens.std_scale)),
        }
        for k in ("pmf_se_kT", "pmf_noise2_kT2", "ess", "n_draws"):
            v = getattr(lab, k)
            if v is not None:
                arrays[f"label_{k}"] = v.numpy()
        if lab.se_factor is not None:
            arrays["label_se_factor"] = np.array(lab.se_factor)
        if run.reference is not None:
            arrays["reference_prob"] = run.reference.prob.reshape(-1)
        elif self.exact_pmf is not None:  # d > 2: the exact PMF at the coarse grid's bin centres
            f = self.exact_pmf(run.grid.numpy())
            p = np.exp(-(f - f.min()))
            arrays["reference_prob"] = p / p.sum()
        for i, e in enumerate(run.edges):
            arrays[f"edges_{i}"] = e
        np.savez_compressed(self.out / f"iter_{row['iteration']:03d}.npz", **arrays)

    def on_finish(self, run) -> None:
        pass


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("config")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", required=True)
    ap.add_argument("--set", action="append", default=[], dest="overrides")
    ap.add_argument("--exact-pmf", default=None,
                    help="MODULE:FUNC giving the exact PMF (kT) at CG points (n, d), for d > 2 systems "
                         "(e.g. torus_system:exact_pmf_kT); scored on the run's coarse full grid")
    a = ap.parse_args()
    torch.set_num_threads(1)
    from cgflow.config import load_config
    from cgflow.learning.reporters import ConsoleReporter
    from cgflow.learning.run import ActiveLearningRun

    exact = None
    if a.exact_pmf:
        import importlib
        import sys

        sys.path.insert(0, ".")
        mod, func = a.exact_pmf.split(":")
        exact = getattr(importlib.import_module(mod), func)
    cfg = load_config(a.config, [*a.overrides, "progress=false"], a.seed)
    run = ActiveLearningRun(cfg, a.out, reporters=[CalibrationDump(Path(a.out), exact), ConsoleReporter()])
    run.run()


if __name__ == "__main__":
    main()
