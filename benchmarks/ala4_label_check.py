"""Where does an `ala4` run's alpha_L error come from?  Labels, regression or flow, at REMD frames.

For CG points drawn from the REMD reference's 300 K frames (benchmarks/results/ala4-remd/ala4-remd-300K.npz), in
alpha_L of one residue (phi_k > 0) and elsewhere, this script compares at each point

* ``F_ens``: the run's ensemble mean (kT), with its std;
* ``F_hi``:  a high-sample importance-sampling estimate through the run's flow, -ln mean exp(log w) over
  ``--draws`` fresh draws per point (with its effective sample size);

and the run's own training labels near alpha_L against the ensemble (the regression residual), and how far the
frames lie from the nearest labelled CG point (radians, 6-D Euclidean).  The common additive
constant of F is removed by comparing the alpha_L - rest *difference* of (F_ens - F_hi): if it is ~0, the ensemble
follows what the flow can estimate and the error is the flow's (mode-missing proposals bias F upward); if it is
> 0, the regression (or too few/too noisy labels) puts alpha_L too high.  Every fresh draw is an energy evaluation;
the total is printed.  Writes ``--out`` JSON.

Usage: ``OMP_NUM_THREADS=1 taskset -c 0 python benchmarks/ala4_label_check.py RUN_DIR --points 40 --draws 2048``.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np
import torch

REMD = Path(__file__).resolve().parent / "results" / "ala4-remd" / "ala4-remd-300K.npz"


@torch.no_grad()
def high_sample_labels(run, s: torch.Tensor, draws: int, batch: int = 4096,
                       ladder: tuple[int, ...] = ()) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """-ln mean_i w_i (kT, up to the run's constant) and the ESS, per row of s (P, 6), from ``draws`` fresh flow
    draws per point; and (P, len(ladder)) the same estimate from the first n draws for each n of ``ladder``."""
    flow, system = run.flow, run.system
    f, ess = np.empty(len(s)), np.empty(len(s))
    f_n = np.empty((len(s), len(ladder)))
    for p in range(len(s)):
        lw = []
        for start in range(0, draws, batch):
            n = min(batch, draws - start)
            sp = s[p:p + 1].expand(n, -1).to(run.device)
            x, log_q = flow.sample(sp)
            ok = system.valid(sp, x)
            lp = torch.full_like(log_q, -math.inf)
            lp[ok] = system.log_target(sp[ok], x[ok])
            lw.append(torch.nan_to_num(lp - log_q, nan=-math.inf))
        w = torch.cat(lw).double()
        m = torch.logsumexp(w, 0)
        f[p] = float(-(m - math.log(len(w))))
        ess[p] = float(torch.exp(2 * m - torch.logsumexp(2 * w, 0)))
        for j, n in enumerate(ladder):
            f_n[p, j] = float(-(torch.logsumexp(w[:n], 0) - math.log(n)))
    return f, ess, f_n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run_dir", type=Path)
    ap.add_argument("--points", type=int, default=40, help="REMD frames per group (alpha_L of the residue, rest)")
    ap.add_argument("--draws", type=int, default=2048, help="fresh flow draws per point")
    ap.add_argument("--residue", type=int, default=1, choices=(1, 2, 3))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    torch.manual_seed(args.seed)
    from cgflow.learning.run import ActiveLearningRun

    run = ActiveLearningRun(None, args.run_dir, resume=True)
    z = np.load(REMD)
    frames = np.concatenate([z["dihedrals_A"], z["dihedrals_B"]]).astype(np.float64)
    k = 2 * (args.residue - 1)  # phi_k column
    rng = np.random.default_rng(args.seed)
    in_l = np.nonzero(frames[:, k] > 0)[0]
    rest = np.nonzero(frames[:, k] <= 0)[0]
    groups = {"alpha_L": frames[rng.choice(in_l, args.points, replace=False)],
              "rest": frames[rng.choice(rest, args.points, replace=False)]}
    out: dict = {"run": str(args.run_dir), "iteration": run.state.iteration, "residue": args.residue,
                 "draws_per_point": args.draws, "groups": {}}
    from cgflow.sampling.acquisition import distance_to_nearest

    labelled = run.label_set().points
    for name, pts in groups.items():
        s = torch.as_tensor(pts, dtype=torch.float64)
        mean, std = (t.detach().cpu().numpy() for t in run.ensemble.mean_and_std(s.to(run.device)))
        ladder = tuple(n for n in (16, 64, 256, 1024, 4096, 16384) if n < args.draws)
        f_hi, ess, f_n = high_sample_labels(run, s, args.draws, ladder=ladder)
        d = mean - f_hi
        out["groups"][name] = {"F_ens_minus_F_hi_mean": float(np.mean(d)), "F_ens_minus_F_hi_sd": float(np.std(d)),
                               "ens_std_median": float(np.median(std)), "ess_median": float(np.median(ess)),
                               "ess_min": float(np.min(ess)), "F_hi_mean": float(np.mean(f_hi)),
                               "F_ens_mean": float(np.mean(mean)),
                               "nearest_label_distance_median": float(distance_to_nearest(
                                   s, labelled, tuple(run.system.cg_periodic)).median()),
                               "F_hi_minus_F_n_mean_by_n": {str(n): float(np.mean(f_hi - f_n[:, j]))
                                                            for j, n in enumerate(ladder)}}
    g = out["groups"]
    out["offset_alpha_L_minus_rest_kT"] = g["alpha_L"]["F_ens_minus_F_hi_mean"] - g["rest"]["F_ens_minus_F_hi_mean"]
    # the run's own labels: residual label - ensemble, for train points in alpha_L vs the rest
    lab = run.label_set()
    pts = lab.points
    pred = run.ensemble.mean_and_std(pts.to(run.device))[0].detach().cpu().numpy()
    res = lab.pmf_kT.cpu().numpy() - pred
    inl = pts[:, k].cpu().numpy() > 0
    out["labels"] = {"n_alpha_L": int(inl.sum()), "n_rest": int((~inl).sum()),
                     "residual_alpha_L_mean": float(res[inl].mean()), "residual_rest_mean": float(res[~inl].mean()),
                     "se_alpha_L_median": float(lab.pmf_se_kT[torch.as_tensor(inl)].median()),
                     "se_rest_median": float(lab.pmf_se_kT[torch.as_tensor(~inl)].median()),
                     "ess_alpha_L_median": float(lab.ess[torch.as_tensor(inl)].median()),
                     "ess_rest_median": float(lab.ess[torch.as_tensor(~inl)].median())}
    out["evaluations"] = 2 * args.points * args.draws
    print(json.dumps(out, indent=2))
    if args.out is not None:
        args.out.write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
