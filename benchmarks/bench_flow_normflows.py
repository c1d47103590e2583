"""Our ConditionalSplineFlow against a normflows conditional spline flow of the same size, on the CPU.

One reverse-KL training step, timed identically for both flows in the same process: draw CG points s
uniformly on the (phi, psi) torus, context = (cos, sin) of s (4 features), sample x ~ q(. | s) with
log q, loss = mean(log q - log p~(x, s)) with the cheap elementwise quadratic stand-in target of
``bench_flow.py`` (no molecule: this measures the flows), backward, Adam step.

Both flows: ``--blocks`` coupling blocks (default 12), conditioner width ``--hidden`` (default 256)
with 1 residual block, 8 bins, 58 FG dims of which 10 circular (the seeded mask of ``bench_flow.py``'s
quadratic stand-in), the same random half split alternating between blocks, an unconditional spline on
the identity half, circular dims shifted by a fixed random angle after every second block, identity
initialization, base uniform on [-pi, pi) (circular) x standard normal.  normflows model:
``nf.flows.CircularCoupledRationalQuadraticSpline`` (``num_context_channels=4``, per-dim ``tail_bound``
pi / 5), ``nf.flows.PeriodicShift``, ``nf.distributions.UniformGaussian`` in a
``nf.ConditionalNormalizingFlow``, converted with ``.to(dtype)``.  The conditioners differ in detail:
ours feeds (cos, sin) of circular inputs and concatenates the context into each residual block;
normflows' uses learned elementwise periodic features and a GLU context gate (parameter counts are
printed).

The two flows' steps alternate (A, B, A, B, ...) so that load changes on a shared machine hit both.

Usage::

    python benchmarks/bench_flow_normflows.py [--batches 64,1024,8192] [--steps N] [--threads 2]
        [--dtype float64|float32] [--blocks 12] [--hidden 256]

normflows is not a dependency of cgflow: ``pip install normflows --no-deps`` (it needs only torch and
numpy); without it the script says so and times only our flow.
"""

from __future__ import annotations

import argparse
import datetime
import math
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from bench_flow import ALANINE_FG_DIM, quadratic_target, random_s  # noqa: E402
from machine import cpu_model  # noqa: E402

from cgflow.core.features import CGFeatures  # noqa: E402
from cgflow.flows.spline import ConditionalSplineFlow  # noqa: E402

TAIL_BOUND = 5.0  # ConditionalSplineFlow's default for non-circular dims
N_BINS = 8


def split_mask(fg_dim: int, seed: int = 0) -> torch.Tensor:
    """The identity half of the even blocks, drawn as ConditionalSplineFlow draws it."""
    order = torch.randperm(fg_dim, generator=torch.Generator().manual_seed(seed))
    mask = torch.zeros(fg_dim, dtype=torch.bool)
    mask[order[:fg_dim // 2]] = True
    return mask


def make_ours(periodic, blocks: int, hidden: int, dtype) -> ConditionalSplineFlow:
    torch.manual_seed(0)
    return ConditionalSplineFlow(len(periodic), tuple(periodic), CGFeatures((True, True)), n_blocks=blocks,
                                 hidden=hidden, n_res_blocks=1, n_bins=N_BINS, tail_bound=TAIL_BOUND, seed=0,
                                 dtype=dtype)


def make_normflows(nf, periodic, blocks: int, hidden: int, dtype):
    torch.manual_seed(0)
    dim = len(periodic)
    ind_circ = [i for i, p in enumerate(periodic) if p]
    ind_t = torch.tensor(ind_circ, dtype=torch.long)
    bound = torch.tensor([math.pi if p else TAIL_BOUND for p in periodic], dtype=torch.float64)
    identity_even = split_mask(dim)

    class Shift(nf.flows.PeriodicShift):  # PeriodicShift takes no context argument
        def forward(self, z, context=None):
            return super().forward(z)

        def inverse(self, z, context=None):
            return super().inverse(z)

    gen = torch.Generator().manual_seed(1)
    flows, total_shift = [], torch.zeros(len(ind_circ), dtype=torch.float64)
    for i in range(blocks):
        transformed = ~identity_even if i % 2 == 0 else identity_even  # mask > 0: transformed
        flows.append(nf.flows.CircularCoupledRationalQuadraticSpline(
            dim, 1, hidden, ind_circ, num_context_channels=4, num_bins=N_BINS, tail_bound=bound,
            mask=transformed.to(torch.float64), init_identity=True))
        if ind_circ and i % 2 == 1 and i != blocks - 1:
            shift = (torch.rand(len(ind_circ), generator=gen, dtype=torch.float64) * 2 - 1) * math.pi
            total_shift += shift
            flows.append(Shift(ind_t, bound=math.pi, shift=shift))
    if ind_circ and total_shift.abs().sum() > 0:
        flows.append(Shift(ind_t, bound=math.pi, shift=-total_shift))
    scale = torch.tensor([2 * math.pi if p else 1.0 for p in periodic], dtype=torch.float64)
    q0 = nf.distributions.UniformGaussian(dim, ind_circ, scale)
    return nf.ConditionalNormalizingFlow(q0, flows).to(dtype)


def step_ours(flow, log_target, batch, dtype):
    opt = torch.optim.Adam(flow.parameters(), lr=1e-4)

    def step():
        s = random_s(batch, "cpu").to(dtype)
        opt.zero_grad(set_to_none=True)
        x, log_q = flow.sample(s)
        loss = (log_q - log_target(s, x)).mean()
        loss.backward()
        opt.step()
        return loss.detach()

    return step


def step_normflows(model, log_target, batch, dtype):
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)

    def step():
        s = random_s(batch, "cpu").to(dtype)
        opt.zero_grad(set_to_none=True)
        ctx = torch.cat([torch.cos(s), torch.sin(s)], dim=-1)
        x, log_q = model.sample(batch, context=ctx)
        loss = (log_q - log_target(s, x)).mean()
        loss.backward()
        opt.step()
        return loss.detach()

    return step


def time_alternating(steps: dict, n_warmup: int, n_steps: int) -> dict:
    """{name: (median s/step, last loss)}; the flows' steps alternate."""
    last = {}
    for name, step in steps.items():
        for _ in range(n_warmup):
            last[name] = step()
    times = {name: [] for name in steps}
    for _ in range(n_steps):
        for name, step in steps.items():
            t0 = time.perf_counter()
            last[name] = step()
            times[name].append(time.perf_counter() - t0)
    return {name: (float(np.median(t)), float(last[name])) for name, t in times.items()}


def n_params(module) -> int:
    return sum(p.numel() for p in module.parameters())


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batches", default="64,1024", help="comma separated batch sizes (default 64,1024)")
    p.add_argument("--steps", type=int, default=10, help="timed steps per flow and batch (median)")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's default)")
    p.add_argument("--dtype", choices=("float64", "float32"), default="float64")
    p.add_argument("--blocks", type=int, default=12)
    p.add_argument("--hidden", type=int, default=256)
    args = p.parse_args(argv)

    if args.threads:
        torch.set_num_threads(args.threads)
    dtype = getattr(torch, args.dtype)
    batches = [int(b) for b in args.batches.split(",")]
    load_before = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    log_target, periodic, _ = quadratic_target("cpu")
    assert len(periodic) == ALANINE_FG_DIM

    try:
        import normflows as nf
    except ImportError:
        nf = None
        print("normflows is not installed (pip install normflows --no-deps): timing only our flow",
              file=sys.stderr)

    ours = make_ours(periodic, args.blocks, args.hidden, dtype)
    models = {"cgflow ConditionalSplineFlow": ours}
    if nf is not None:
        models["normflows ConditionalNormalizingFlow"] = make_normflows(nf, periodic, args.blocks, args.hidden, dtype)

    rows = []
    for b in batches:
        print(f"batch {b} ...", file=sys.stderr)
        steps = {}
        for name, m in models.items():
            make = step_ours if m is ours else step_normflows
            steps[name] = make(m, log_target, b, dtype)
        res = time_alternating(steps, args.warmup, args.steps)
        for name, (t, loss) in res.items():
            rows.append((name, b, t, loss))
            print(f"  {name}: {1e3 * t:.1f} ms/step, loss {loss:.3g}", file=sys.stderr)

    load_after = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    ref = {b: t for name, b, t, _ in rows if name.startswith("cgflow")}
    lines = [
        f"## Reverse-KL training step on the CPU: ConditionalSplineFlow vs normflows "
        f"({args.blocks} blocks, hidden {args.hidden}, {N_BINS} bins, {args.dtype})",
        "",
        f"- date: {datetime.datetime.now().isoformat(timespec='seconds')}",
        f"- CPU: {cpu_model()}, {os.cpu_count()} logical cores, torch threads {torch.get_num_threads()}; "
        f"1-min load average before {load_before:.2f}, after {load_after:.2f}",
        f"- torch {torch.__version__}, normflows {getattr(nf, '__version__', 'not installed')}, "
        f"Python {platform.python_version()}",
        f"- flow: fg_dim {len(periodic)} ({sum(periodic)} circular), 4 context features; parameters: "
        + ", ".join(f"{name} {n_params(m):,}" for name, m in models.items()),
        f"- target: elementwise quadratic stand-in; {args.warmup} warm-up + {args.steps} timed steps per flow, "
        f"alternating, median",
        "",
        "| flow | batch | ms/step | samples/s | time / ours | last loss |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, b, t, loss in rows:
        lines.append(f"| {name} | {b} | {1e3 * t:.1f} | {b / t:,.0f} | {t / ref[b]:.2f} | {loss:.3g} |")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
