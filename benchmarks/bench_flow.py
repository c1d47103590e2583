"""Time per reverse-KL (energy) training step of the paper-size ConditionalSplineFlow.

One step: draw CG points s uniformly on the (phi, psi) torus, sample x_fg ~ q(. | s) from the flow
(with log q), evaluate the target, loss = mean(log q - log p), backward, Adam step.

Flow: 12 coupling blocks, hidden 256, 1 residual block, 8 bins, float64, FG dimension 58 with the
circular mask of alanine dipeptide (5 circular dims), context (cos, sin) of phi and psi (4 features).

Targets (``--energy``):
* ``alanine`` (default): ``MoleculeSystem.log_target`` of alanine dipeptide with the torch energy
  (Amber ff96 + OBC1): normalized FG ICs -> Cartesian reconstruction + log-Jacobian + energy.
* ``quadratic``: a stand-in ``-0.5 |x_lin|^2 / 0.1^2 + sum cos(x_circ - s_1)``, no molecule.

Variants: CPU eager; with ``torch.cuda.is_available()`` also CUDA eager, ``torch.compile`` (of the
loss function; default and "reduce-overhead" modes) and a whole-step CUDA graph
(``torch.cuda.graph`` capture of sample + target + backward + ``Adam(capturable=True)`` with a
static input tensor for s).  A failing variant is reported as a row.

Usage::

    python benchmarks/bench_flow.py [--quick] [--full] [--energy alanine|quadratic] [--steps N] [--threads 1,2]

``--quick``: batches 64 and 1024, 5 timed steps.  Default: 64 and 1024, 20 timed steps.  ``--full``:
adds batch 8192.
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

try:
    import cgflow  # noqa: F401
except ImportError:  # not installed: run from the source tree
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from cgflow.core.features import CGFeatures  # noqa: E402
from cgflow.flows.spline import ConditionalSplineFlow  # noqa: E402

ALANINE_FG_DIM = 58


sys.path.insert(0, str(Path(__file__).parent))
from machine import cpu_model  # noqa: E402

# --------------------------------------------------------------------------------------------------
# targets
# --------------------------------------------------------------------------------------------------


def alanine_target(device: str):
    """(log_target(s, x_flow), fg_periodic, description) for alanine dipeptide on ``device``."""
    from cgflow.systems.molecules.molecule_system import alanine_dipeptide

    system = alanine_dipeptide(energy_backend="torch", device=device, progress=False, use_cache=True)

    def log_target(s, x):
        # x_fg is in the system's normalized ICs ((value - ref) / std, circular torsions as angles)
        return system.log_target(s, x)

    return log_target, tuple(system.fg_periodic), f"alanine dipeptide torch energy ({system.fg_dim} FG dims)"


def quadratic_target(device: str):
    periodic = torch.zeros(ALANINE_FG_DIM, dtype=torch.bool)
    periodic[torch.randperm(ALANINE_FG_DIM, generator=torch.Generator().manual_seed(0))[:10]] = True
    periodic = periodic.to(device)

    def log_target(s, x):
        lin = torch.where(periodic, torch.zeros_like(x), x)
        circ = torch.where(periodic, torch.cos(x - s[:, :1]), torch.zeros_like(x))
        return -0.5 * (lin**2).sum(-1) / 0.01 + circ.sum(-1)

    return log_target, tuple(bool(b) for b in periodic.cpu()), "quadratic stand-in (10 circular dims)"


# --------------------------------------------------------------------------------------------------
# one training step
# --------------------------------------------------------------------------------------------------


def make_flow(fg_periodic, device) -> ConditionalSplineFlow:
    torch.manual_seed(0)
    flow = ConditionalSplineFlow(len(fg_periodic), fg_periodic, CGFeatures((True, True)), n_blocks=12, hidden=256,
                                 n_res_blocks=1, n_bins=8)
    return flow.to(device)


def loss_fn_of(flow, log_target):
    def loss_fn(s):
        x, log_q = flow.sample(s)
        return (log_q - log_target(s, x)).mean()

    return loss_fn


def random_s(batch, device):
    return (torch.rand(batch, 2, dtype=torch.float64, device=device) * 2 - 1) * math.pi


def time_steps(step, n_warmup: int, n_steps: int, sync) -> tuple[float, float, float]:
    """(median s/step, warm-up seconds, last loss)."""
    t0 = time.perf_counter()
    loss = None
    for _ in range(n_warmup):
        loss = step()
    sync()
    warm = time.perf_counter() - t0
    times = []
    for _ in range(n_steps):
        t0 = time.perf_counter()
        loss = step()
        sync()
        times.append(time.perf_counter() - t0)
    return float(np.median(times)), warm, float(loss)


def bench_variant(variant: str, device: str, batch: int, fg_periodic, log_target, n_steps: int, n_warmup: int):
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    flow = make_flow(fg_periodic, device)
    loss_fn = loss_fn_of(flow, log_target)
    note = ""

    if variant == "eager":
        opt = torch.optim.Adam(flow.parameters(), lr=1e-4)

        def step():
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(random_s(batch, device))
            loss.backward()
            opt.step()
            return loss.detach()

    elif variant.startswith("compile"):
        mode = variant.split(":", 1)[1] if ":" in variant else "default"
        opt = torch.optim.Adam(flow.parameters(), lr=1e-4)
        compiled = torch.compile(loss_fn, mode=mode, dynamic=False)

        def step():
            if mode == "reduce-overhead":
                torch.compiler.cudagraph_mark_step_begin()
            opt.zero_grad(set_to_none=True)
            loss = compiled(random_s(batch, device))
            loss.backward()
            opt.step()
            return loss.detach().clone()

    elif variant == "cuda-graph":
        opt = torch.optim.Adam(flow.parameters(), lr=1e-4, capturable=True)
        static_s = random_s(batch, device)
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):  # warm up on a side stream (allocations, lazy init, Adam state)
            for _ in range(3):
                opt.zero_grad(set_to_none=True)
                loss_fn(static_s).backward()
                opt.step()
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        opt.zero_grad(set_to_none=True)
        with torch.cuda.graph(graph):
            static_loss = loss_fn(static_s)
            static_loss.backward()
            opt.step()

        def step():
            static_s.copy_(random_s(batch, device))
            graph.replay()
            return static_loss.detach().clone()

        note = "whole step captured (sample + target + backward + Adam)"
    else:
        raise ValueError(variant)

    per_step, warm, loss = time_steps(step, n_warmup, n_steps, sync)
    if variant != "eager":
        note = (note + "; " if note else "") + f"warm-up incl. compile/capture {warm:.1f} s"
    if not math.isfinite(loss):
        note = (note + "; " if note else "") + "non-finite loss"
    return per_step, note


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="batches 64, 1024 and 5 timed steps")
    p.add_argument("--full", action="store_true", help="also batch 8192")
    p.add_argument("--energy", choices=("alanine", "quadratic"), default="alanine")
    p.add_argument("--steps", type=int, default=None, help="timed steps per point")
    p.add_argument("--threads", default=None,
                   help="comma separated CPU thread counts (default: torch's default); on a shared machine "
                        "use 1: with busy cores every multi-threaded op waits for a descheduled thread")
    p.add_argument("--no-cuda", action="store_true")
    args = p.parse_args(argv)

    batches = [64, 1024] + ([8192] if args.full else [])
    n_steps = args.steps or (5 if args.quick else 20)
    n_warmup = 2  # CUDA: 3 (compile, cudagraph-tree warm-up and recording)
    load_before = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    make_target = alanine_target if args.energy == "alanine" else quadratic_target

    default_threads = torch.get_num_threads()
    threads = [int(t) for t in args.threads.split(",")] if args.threads else [default_threads]
    rows = []
    log_target, fg_periodic, target_desc = make_target("cpu")
    for nt in threads:
        torch.set_num_threads(nt)
        for b in batches:
            print(f"cpu eager {nt} threads batch {b} ...", file=sys.stderr)
            try:
                t, note = bench_variant("eager", "cpu", b, fg_periodic, log_target, n_steps, n_warmup)
            except Exception as exc:  # noqa: BLE001
                t, note = float("nan"), f"failed: {_msg(exc)}"
            rows.append(("cpu", f"eager, {nt} thread{'s' if nt > 1 else ''}", b, t, note))
            print(f"  {rows[-1]}", file=sys.stderr)
    torch.set_num_threads(default_threads)

    gpu = "none"
    if torch.cuda.is_available() and not args.no_cuda:
        gpu = torch.cuda.get_device_name(0)
        try:
            log_target, fg_periodic, _ = make_target("cuda")
        except Exception as exc:  # noqa: BLE001
            rows.append(("cuda", "target setup", 0, float("nan"), f"failed: {_msg(exc)}"))
            log_target = None
        if log_target is not None:
            for variant in ("eager", "compile:default", "compile:reduce-overhead", "cuda-graph"):
                for b in batches:
                    print(f"cuda {variant} batch {b} ...", file=sys.stderr)
                    try:
                        t, note = bench_variant(variant, "cuda", b, fg_periodic, log_target, n_steps, 3)
                    except Exception as exc:  # noqa: BLE001 - report and continue
                        t, note = float("nan"), f"failed: {_msg(exc)}"
                        try:
                            torch.cuda.synchronize()
                        except Exception:  # noqa: BLE001 - e.g. an invalidated capture
                            pass
                    rows.append(("cuda", variant, b, t, note))
                    print(f"  {rows[-1]}", file=sys.stderr)

    n_circ = sum(fg_periodic)
    lines = [
        "## Reverse-KL training step: ConditionalSplineFlow (12 blocks, hidden 256, 8 bins, float64)",
        "",
        f"- date: {datetime.datetime.now().isoformat(timespec='seconds')}",
        f"- CPU: {cpu_model()}, {os.cpu_count()} logical cores, torch default threads {default_threads}; "
        f"1-min load average before the run {load_before:.2f}",
        f"- GPU: {gpu}",
        f"- torch {torch.__version__}, Python {platform.python_version()}",
        f"- flow: fg_dim {len(fg_periodic)} ({n_circ} circular), 4 context features; target: {target_desc}",
        f"- mode: {'--quick' if args.quick else 'default'}{' --full' if args.full else ''}; "
        f"{n_warmup} (CUDA: 3) warm-up + {n_steps} timed steps, median; each step draws new s",
        "",
        "| device | variant | batch | ms/step | samples/s | notes |",
        "|---|---|---:|---:|---:|---|",
    ]
    for device, variant, b, t, note in rows:
        rate = b / t if t == t and t > 0 else float("nan")
        lines.append(f"| {device} | {variant} | {b} | {1e3 * t:.1f} | {rate:,.0f} | {note} |")
    print("\n".join(lines))


def _msg(exc: Exception) -> str:
    text = str(exc).strip()
    return (text.splitlines()[0][:100] if text else type(exc).__name__).replace("|", "/")


if __name__ == "__main__":
    main()
