"""Time one warm-started-size Sobolev fit of the PMF ensemble, float64 vs float32 networks.

The fit of `aldp-fast` (10 tanh MLPs 64x64, full batch, values + mean forces weighted by their standard
errors, 150 epochs) on P synthetic labels on the (phi, psi) torus (a smooth function plus noise of the
size of real labels: 0.2 kT on values, 1 kT/rad on mean forces).  Both dtypes fit the same data from the
same initial seed; the table gives seconds per fit, the ratio, and the largest difference of the two
fitted ensemble means at 2,500 random points against the ensemble's own spread there (float32 must be a
different but equally good fit: the difference should be of the order of the spread, not above it).

    OMP_NUM_THREADS=1 taskset -c 0 python benchmarks/bench_ensemble_fit.py --points 1000 3000 --epochs 150
    OMP_NUM_THREADS=1 taskset -c 0 python benchmarks/bench_ensemble_fit.py --dim 6 --points 7000 --repeats 1   # ala4

Pin it to one core (as above): the fit runs one torch thread.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from machine import describe_machine  # noqa: E402

from cgflow.core.features import CGFeatures  # noqa: E402
from cgflow.pmf.ensemble import FitOptions, PMFEnsemble  # noqa: E402


def torus_labels(n: int, seed: int, dim: int = 2) -> tuple[torch.Tensor, ...]:
    """s (n, dim) rad, values (n,) kT, mean forces (n, dim) kT/rad, with label-sized noise:
    F = sum_i 2 cos(s_i) + sin(2 s_i) + 0.5 sum_i cos(s_i - s_{i+1})."""
    gen = torch.Generator().manual_seed(seed)
    s = ((torch.rand(n, dim, generator=gen, dtype=torch.float64) * 2 - 1) * math.pi).requires_grad_(True)
    f = (2 * torch.cos(s) + torch.sin(2 * s)).sum(1) + 0.5 * torch.cos(s[:, :-1] - s[:, 1:]).sum(1)
    g, = torch.autograd.grad(f.sum(), s)
    s, f = s.detach(), f.detach()
    return (s, f + 0.2 * torch.randn(n, generator=gen, dtype=torch.float64),
            g + 1.0 * torch.randn(n, dim, generator=gen, dtype=torch.float64))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--points", type=int, nargs="+", default=[1000, 3000])
    ap.add_argument("--epochs", type=int, default=150)
    ap.add_argument("--repeats", type=int, default=2, help="timed fits per dtype (median reported)")
    ap.add_argument("--dim", type=int, default=2, help="CG dimensions (periodic); ala4 has 6")
    args = ap.parse_args()
    torch.set_num_threads(1)
    grid = torus_labels(2500, seed=12345, dim=args.dim)[0]  # where the two fits are compared
    print(f"machine: {describe_machine()}; torch threads {torch.get_num_threads()}")
    print(f"CG dimensions: {args.dim}")
    print("| labelled points | epochs | float64 s/fit | float32 s/fit | speed-up | max abs diff of means, kT | "
          "median ensemble std, kT |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for n in args.points:
        s, y, g = torus_labels(n, seed=n, dim=args.dim)
        se_v, se_g = torch.full_like(y, 0.2), torch.full_like(g, 1.0)
        secs, means, stds = {}, {}, {}
        for dtype in (torch.float64, torch.float32):
            times = []
            for _ in range(args.repeats):
                torch.manual_seed(1)
                ens = PMFEnsemble(CGFeatures((True,) * args.dim), 10, [64, 64], "tanh", dtype=dtype)
                opts = FitOptions(epochs=args.epochs, batch_size=100_000, lr=1e-2, progress=False, gradient_weight=1.0)
                t = time.perf_counter()
                ens.fit(s, y, opts, rng=np.random.default_rng(0), grads=g, value_se=se_v, grad_se=se_g)
                times.append(time.perf_counter() - t)
            secs[dtype] = float(np.median(times))
            with torch.no_grad():
                m, sd = ens.mean_and_std(grid)
            means[dtype], stds[dtype] = m - m.mean(), sd
        diff = float((means[torch.float64] - means[torch.float32]).abs().max())
        print(f"| {n} | {args.epochs} | {secs[torch.float64]:.2f} | {secs[torch.float32]:.2f} | "
              f"{secs[torch.float64] / secs[torch.float32]:.2f} | {diff:.3f} | {float(stds[torch.float64].median()):.3f} |")


if __name__ == "__main__":
    main()
