"""Time the default job (`cgflow run mb`) end to end and report its accuracy and cost.

Runs the CLI in a subprocess per seed (excluding installation, including Python start-up), then
reads the run directory.  Prints a markdown table for docs/benchmarks.md.

    python benchmarks/mb_benchmark.py --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from machine import describe_machine  # noqa: E402

from cgflow.core.run_directory import read_metrics_csv  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="mb")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for seed in args.seeds:
            out = Path(tmp) / f"seed{seed}"
            cmd = [sys.executable, "-m", "cgflow.cli", "run", args.preset, "--out", str(out), "--seed", str(seed),
                   "--set", "progress=false"] + [x for o in args.overrides for x in ("--set", o)]
            t0 = time.perf_counter()
            subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
            wall = time.perf_counter() - t0
            m = read_metrics_csv(out / "metrics.csv")
            last = m[-1]
            rows.append((seed, wall, last, m))
            print(f"seed {seed}: {wall:.1f} s, KLD {last['forward_kld']:.2e}", file=sys.stderr, flush=True)
    print(f"Machine: {describe_machine()}\n")
    print(f"`cgflow run {args.preset} --seed N` " + " ".join(f"--set {o}" for o in args.overrides))
    print()
    print("| seed | wall time (s) | AL iterations | final forward KLD | PMF RMSE weighted by p_ref (kT) | energy evaluations "
          "(all) | of which training | diagnostics | starting data |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for seed, wall, last, m in rows:
        print(f"| {seed} | {wall:.1f} | {last['iteration']} | {last['forward_kld']:.2e} | {last.get('pmf_rmse_weighted_kT', last.get('pmf_rmse_kT')):.3f} "
              f"| {last['evals_total']:,} | {last['evals_training']:,} | {last['evals_diagnostics']:,} "
              f"| {last['evals_starting_data']:,} |")
    print("\nForward KLD against total evaluations, per iteration (seed "
          f"{rows[0][0]}): " + ", ".join(f"{r['evals_total']:,}: {r['forward_kld']:.2e}" for r in rows[0][3]))


if __name__ == "__main__":
    main()
