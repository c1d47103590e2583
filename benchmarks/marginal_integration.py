"""How exactly does cgflow integrate a 6-D PMF down to its 2-D marginals?  An analytic peptide-like test.

The test PMF (kT) on the 6-torus s = (phi1, psi1, phi2, psi2, phi3, psi3), rad:

    F(s) = sum_k R(phi_k, psi_k) + C sum_k cos(psi_k - phi_{k+1} - D)

with R a Fourier series (|m|, |n| <= ORDER) least-squares fitted to the shipped alanine-dipeptide reference PMF
(clipped at 15 kT): narrow Ramachandran basins 0-15 kT deep like Ala4's, with neighbour couplings.  Its exact
2-D marginals on the 24 x 24 bin centres of the `ala4` preset's five pairs come from a transfer-matrix sum
over a fine periodic grid of the other four coordinates (trapezoid rule on smooth periodic functions:
spectrally accurate; GRID and 1.5 GRID are compared to show it).  The "run's CG points" around which the
importance sampler centres its kernels are mimicked by 1024 uniform points plus 3000 drawn from exp(-F/2)
(the preset's sampler.beta 0.5) per residue, jittered.

For each method (`sobol`: quasi-MC uniform; `importance`: kernels around the CG points, the preset's
setting) and number of points per bin, over several seeds: the actual forward KLD of the marginals against the exact ones
(mean over the five pairs), the stated integration error (what cgflow prints), and the seconds.

    OMP_NUM_THREADS=1 taskset -c 0 python benchmarks/marginal_integration.py --out benchmarks/results/marginal-integration

``--run DIR`` does the same on a finished `cgflow run ala4` (any d > 2 run with marginal pairs): its ensemble
mean (float32, as the run measures it) and its own CG points as centres; "exact" is then the mean of two
independent ``--truth-points`` importance estimates (their difference is printed: the truth's own error).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from machine import describe_machine  # noqa: E402

from cgflow.analysis.marginals import marginal_pmfs  # noqa: E402
from cgflow.analysis.metrics import forward_kld, probabilities_from_pmf  # noqa: E402
from cgflow.pmf.reference_file import load_reference  # noqa: E402
from cgflow.systems.molecules.molecule_system import package_data_file  # noqa: E402

ORDER, C, D, CLIP_KT = 6, 0.6, 0.4, 15.0
PAIRS = [(0, 1), (1, 2), (2, 3), (3, 4), (4, 5)]
N_BINS = 24


def fit_ramachandran() -> np.ndarray:
    """Complex Fourier coefficients c[m, n] (m, n = -ORDER..ORDER) of R(phi, psi) = Re sum c e^{i(m phi + n psi)}."""
    ref = load_reference(package_data_file("alanine-dipeptide", "reference-pmf.npz"))
    with np.errstate(divide="ignore"):
        f = -np.log(ref.prob)
    f = np.minimum(f - f[np.isfinite(f)].min(), CLIP_KT)
    phi, psi = (0.5 * (e[1:] + e[:-1]) for e in ref.edges)
    P, Q = np.meshgrid(phi, psi, indexing="ij")
    ms = np.arange(-ORDER, ORDER + 1)
    cols, idx = [], []
    for m in ms:
        for n in ms:
            if (m, n) < (0, 0):
                continue  # real basis: each +-(m, n) pair once
            cols.append(np.cos(m * P + n * Q).ravel())
            idx.append((m, n, "c"))
            if (m, n) != (0, 0):
                cols.append(np.sin(m * P + n * Q).ravel())
                idx.append((m, n, "s"))
    A = np.stack(cols, 1)
    coef, *_ = np.linalg.lstsq(A, f.ravel(), rcond=None)
    c = np.zeros((len(ms), len(ms)), complex)
    for a, (m, n, kind) in zip(coef, idx):
        if kind == "c":
            c[m + ORDER, n + ORDER] += a if (m, n) == (0, 0) else a / 2
            if (m, n) != (0, 0):
                c[-m + ORDER, -n + ORDER] += a / 2
        else:  # sin x = (e^{ix} - e^{-ix}) / 2i
            c[m + ORDER, n + ORDER] += a / 2j
            c[-m + ORDER, -n + ORDER] -= a / 2j
    return c


class TestPMF:
    def __init__(self, coef: np.ndarray):
        self.c = torch.as_tensor(coef, dtype=torch.complex128)
        self.ms = torch.arange(-ORDER, ORDER + 1, dtype=torch.float64)

    def ramachandran(self, phi: torch.Tensor, psi: torch.Tensor) -> torch.Tensor:
        ep = torch.exp(1j * phi[..., None] * self.ms)  # (..., 2 ORDER + 1)
        eq = torch.exp(1j * psi[..., None] * self.ms)
        return torch.einsum("...m,mn,...n->...", ep, self.c, eq).real

    def __call__(self, s: torch.Tensor) -> torch.Tensor:
        f = sum(self.ramachandran(s[:, 2 * k], s[:, 2 * k + 1]) for k in range(3))
        return f + C * (torch.cos(s[:, 1] - s[:, 2] - D) + torch.cos(s[:, 3] - s[:, 4] - D))


def exact_marginals(pmf: TestPMF, centres: np.ndarray, grid_n: int) -> list[np.ndarray]:
    """F_ij at the bin centres (24 x 24) of each pair, the other four coordinates summed on a grid_n grid."""
    g = torch.as_tensor(-np.pi + 2 * np.pi * (np.arange(grid_n) + 0.5) / grid_n)
    c = torch.as_tensor(centres)

    def B(x, y):  # Boltzmann factor of one residue, outer product of x (a,) and y (b,)
        X, Y = torch.meshgrid(x, y, indexing="ij")
        return torch.exp(-pmf.ramachandran(X, Y))

    def K(x, y):  # coupling between psi_k (x) and phi_{k+1} (y)
        return torch.exp(-C * torch.cos(x[:, None] - y[None, :] - D))

    Bgg = B(g, g)
    R3 = K(g, g) @ Bgg.sum(1)            # R3(psi2) on the grid: sum over phi3, psi3
    R3c = K(c, g) @ Bgg.sum(1)           # R3 at the centres
    L1 = Bgg.sum(0) @ K(g, g)            # L1(phi2) on the grid: sum over phi1, psi1
    L1c = Bgg.sum(0) @ K(g, c)
    out = []
    # (phi1, psi1) = (a, b): B(a, b) sum_{phi2, psi2} K(b, phi2) B(phi2, psi2) R3(psi2)
    inner = K(c, g) @ (Bgg @ R3)
    out.append(B(c, c) * inner[None, :])
    # (psi1, phi2) = (a, b): [sum_phi1 B(phi1, a)] K(a, b) [sum_psi2 B(b, psi2) R3(psi2)]
    out.append(B(g, c).sum(0)[:, None] * K(c, c) * (B(c, g) @ R3)[None, :])
    # (phi2, psi2) = (a, b): L1(a) B(a, b) R3(b)
    out.append(L1c[:, None] * B(c, c) * R3c[None, :])
    # (psi2, phi3) = (a, b): [sum_phi2 L1(phi2) B(phi2, a)] K(a, b) [sum_psi3 B(b, psi3)]
    out.append((L1 @ B(g, c))[:, None] * K(c, c) * B(c, g).sum(1)[None, :])
    # (phi3, psi3) = (a, b): [sum_{phi2, psi2} L1(phi2) B(phi2, psi2) K(psi2, a)] B(a, b)
    out.append(((L1 @ Bgg) @ K(g, c))[:, None] * B(c, c))
    return [(-torch.log(z)).numpy() for z in out]


def cg_points(pmf: TestPMF, rng: np.random.Generator) -> np.ndarray:
    """1024 uniform points + 3000 from exp(-R/2) per residue (independently), jittered by 0.1 rad."""
    n = 200
    g = -np.pi + 2 * np.pi * (np.arange(n) + 0.5) / n
    X, Y = np.meshgrid(g, g, indexing="ij")
    r = pmf.ramachandran(torch.as_tensor(X), torch.as_tensor(Y)).numpy()
    p = np.exp(-0.5 * (r - r.min())).ravel()
    p /= p.sum()
    cols = []
    for _ in range(3):
        k = rng.choice(p.size, size=3000, p=p)
        cols += [X.ravel()[k], Y.ravel()[k]]
    drawn = np.stack(cols, 1) + 0.1 * rng.standard_normal((3000, 6))
    pts = np.concatenate([rng.uniform(-np.pi, np.pi, (1024, 6)), drawn])
    return np.mod(pts + np.pi, 2 * np.pi) - np.pi


def run_target(run_dir: Path):
    """(PMF function, edges, domain, periodic, pairs, centres) of a finished d > 2 run, as it measures itself."""
    from cgflow.learning.resume import open_run

    run = open_run(run_dir, None, [], None, resume=True).runner
    setup = run.measure.setup
    ens32 = run.ensemble.float()

    def f(s):
        with torch.no_grad():
            return ens32.mean_and_std(s.to(torch.float32))[0].double()

    return (f, setup.edges, run.system.cg_domain, run.system.cg_periodic, setup.pairs,
            run.dataset.points.numpy())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--points", type=int, nargs="+", default=[512, 1024, 2048])
    ap.add_argument("--methods", nargs="+", default=["sobol", "importance"], choices=["sobol", "importance"])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--grid", type=int, default=96, help="grid of the exact sums (checked against 1.5x)")
    ap.add_argument("--run", type=Path, default=None, help="a finished d > 2 run directory instead of the test PMF")
    ap.add_argument("--truth-points", type=int, default=32768)
    args = ap.parse_args()
    torch.set_num_threads(1)
    args.out.mkdir(parents=True, exist_ok=True)
    if args.run is not None:
        pmf, edges, domain, periodic, pairs, run_centres = run_target(args.run)
        halves = [marginal_pmfs(pmf, edges, domain, pairs, n_points=args.truth_points, seed=10_000 + h,
                                periodic=periodic, centres=run_centres) for h in range(2)]
        exact = [-np.logaddexp(-a, -b) for a, b in zip(halves[0].pmf_kT, halves[1].pmf_kT)]
        grid_err = float(np.mean([forward_kld(probabilities_from_pmf(a), probabilities_from_pmf(b))
                                  for a, b in zip(halves[0].pmf_kT, halves[1].pmf_kT)])) / 4
        truth_note = (f"run {args.run}: 'exact' = two {args.truth_points}-point importance estimates, their "
                      f"difference / 4 = {grid_err:.1e} nats")
    else:
        pmf = TestPMF(fit_ramachandran())
        edges = [np.linspace(-np.pi, np.pi, N_BINS + 1)] * 6
        centres_1d = 0.5 * (edges[0][1:] + edges[0][:-1])
        exact = exact_marginals(pmf, centres_1d, args.grid)
        finer = exact_marginals(pmf, centres_1d, int(1.5 * args.grid))
        grid_err = float(np.mean([forward_kld(probabilities_from_pmf(a), probabilities_from_pmf(b))
                                  for a, b in zip(exact, finer)]))
        domain, periodic, pairs, run_centres = [(-np.pi, np.pi)] * 6, (True,) * 6, PAIRS, None
        truth_note = f"analytic test PMF: exact marginals on grid {args.grid} vs {int(1.5 * args.grid)} differ by {grid_err:.1e} nats"
    p_exact = [probabilities_from_pmf(f) for f in exact]
    f_ref = [f - f.min() for f in exact]
    print(f"machine: {describe_machine()}; {truth_note}; marginal F range {min(float(f.max()) for f in f_ref):.1f}-"
          f"{max(float(f.max()) for f in f_ref):.1f} kT")
    rows = []
    for method in args.methods:
        for n in args.points:
            for seed in args.seeds:
                if method == "sobol":
                    centres = None
                else:
                    centres = run_centres if run_centres is not None else cg_points(pmf, np.random.default_rng(100 + seed))
                t = time.perf_counter()
                m = marginal_pmfs(pmf, edges, domain, pairs, n_points=n, seed=seed, periodic=periodic,
                                  centres=centres)
                dt = time.perf_counter() - t
                actual = [forward_kld(p, probabilities_from_pmf(f)) for p, f in zip(p_exact, m.pmf_kT)]
                rows.append({"method": method, "n_points": n, "seed": seed, "actual_kld_mean": float(np.mean(actual)),
                             "actual_kld_max_pair": float(np.max(actual)),
                             "stated_error_mean": float(np.mean(m.integration_error_kld)), "seconds": dt})
                print(json.dumps(rows[-1]))
    lines = [f"machine: {describe_machine()}; one thread; {truth_note}", "",
             "| method | points per bin | actual KLD vs exact, mean of 5 pairs (median over seeds; max) | "
             "worst pair (median) | stated integration error (median) | stated / actual | seconds (5 pairs) |",
             "|---|---:|---|---:|---:|---:|---:|"]
    for method in args.methods:
        for n in args.points:
            sel = [r for r in rows if r["method"] == method and r["n_points"] == n]
            a = np.array([r["actual_kld_mean"] for r in sel])
            st = np.array([r["stated_error_mean"] for r in sel])
            lines.append(f"| {method} | {n} | {np.median(a):.2e} (max {a.max():.2e}) | "
                         f"{np.median([r['actual_kld_max_pair'] for r in sel]):.2e} | {np.median(st):.2e} | "
                         f"{np.median(st / a):.2f} | {np.median([r['seconds'] for r in sel]):.1f} |")
    (args.out / "table.md").write_text("\n".join(lines) + "\n")
    (args.out / "rows.json").write_text(json.dumps(rows, indent=1))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
