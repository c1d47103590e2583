"""aldp-fast before/after a change: the same seeds, one after another on one pinned core, scored alike.

Runs `cgflow run CONFIG --seed S` for each labelled config (a preset name or a YAML file; e.g. the preset
as it was before a change, `git show REV:src/cgflow/config/presets/aldp-fast.yaml > before.yaml`) and each
seed, alternating configs so that both see the same machine load, then writes OUT/table.md and
OUT/runs.csv (the console output of each run in OUT/LABEL-seedS.log): forward KLD and wall-clock at 2.5e5 evaluations (the last snapshot at or below), the run's own
stop (iteration, evaluations, wall-clock, KLD, its error bar, the actual error), the unweighted RMSE and
largest error where F_ref < 10 kT, and the time breakdown (flow incl. energies, ensemble fits, rest).

    python benchmarks/aldp_speed.py --out runs/speed --core 0 --seeds 0 1 2 \\
        --config after=aldp-fast --config before=before.yaml
    # --replay-error-bar KT: score the first config's runs as if they had stopped at error_bar_target_kT = KT

Time only on an idle machine, or say what else ran (the table records the load average before each run).
"""

from __future__ import annotations

import argparse
import csv
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from machine import describe_machine  # noqa: E402

from cgflow.core.run_directory import read_metrics_csv  # noqa: E402

BUDGET = 2.5e5


def run_one(config: str, seed: int, out: Path, core: int) -> None:
    log_path = out.parent / f"{out.name}.log"
    if (out / "pmf.npz").is_file() and log_path.is_file() and "finished:" in log_path.read_text(errors="replace"):
        return
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = ["taskset", "-c", str(core), sys.executable, "-m", "cgflow.cli", "run", config, "--seed", str(seed),
           "--out", str(out), "--no-plots"]
    if (out / "checkpoint.pt").is_file():
        cmd = ["taskset", "-c", str(core), sys.executable, "-m", "cgflow.cli", "run", "--resume", "--out", str(out),
               "--no-plots"]
    load = os.getloadavg()[0]
    with open(log_path, "a") as log:
        log.write(f"# load average before: {load:.2f}\n")
        log.flush()
        subprocess.run(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, check=True)


def replay_stop(rows: list[dict], target_kT: float, region_kT: float = 1.0) -> tuple[list[dict], str]:
    """The rows up to where ``stopping.error_bar_target_kT = target_kT`` (with the default region veto) would
    have stopped the run: a run is deterministic, so its first iterations are those of the shorter run."""
    for k, r in enumerate(rows):
        if float(r["error_bar_kT"]) < target_kT and float(r["error_bar_max_low_F_kT"]) <= region_kT:
            return rows[:k + 1], f"error bar {float(r['error_bar_kT']):.3g} kT < {target_kT:g} kT (replayed)"
    return rows, ""


def summarize(label: str, seed: int, out: Path, stop_error_bar: float | None = None, region_kT: float = 1.0) -> dict:
    rows = read_metrics_csv(out / "metrics.csv")
    replayed = ""
    if stop_error_bar is not None:
        rows, replayed = replay_stop(rows, stop_error_bar, region_kT)
    f = {k: np.array([float(r[k]) for r in rows]) for k in
         ("evals_total", "forward_kld", "wall_time_s", "error_bar_kT", "abs_err_ref_weighted_kT",
          "pmf_rmse_unweighted_kT", "pmf_max_abs_error_kT", "t_flow_s", "t_ensemble_s")}
    at = np.flatnonzero(f["evals_total"] <= BUDGET)
    i = int(at[-1]) if at.size else 0
    log = (out.parent / f"{out.name}.log").read_text(errors="replace")
    stop = replayed or next((ln.split("finished:", 1)[1].strip() for ln in log.splitlines()
                             if ln.startswith("finished:")), "")
    load = next((ln.split(":", 1)[1].strip() for ln in log.splitlines() if ln.startswith("# load average")), "")
    wall = f["wall_time_s"][-1]
    return {"config": label, "seed": seed, "evals_at_budget": f["evals_total"][i], "kld_at_budget": f["forward_kld"][i],
            "wall_at_budget_s": f["wall_time_s"][i], "iterations": len(rows), "evals_final": f["evals_total"][-1],
            "kld_final": f["forward_kld"][-1], "wall_final_s": wall, "error_bar_final_kT": f["error_bar_kT"][-1],
            "actual_err_final_kT": f["abs_err_ref_weighted_kT"][-1], "rmse_low_F_kT": f["pmf_rmse_unweighted_kT"][-1],
            "max_err_low_F_kT": f["pmf_max_abs_error_kT"][-1], "t_flow_s": f["t_flow_s"].sum(),
            "t_ensemble_s": f["t_ensemble_s"].sum(), "t_rest_s": wall - f["t_flow_s"].sum() - f["t_ensemble_s"].sum(),
            "stop": stop, "load_before": load}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--config", action="append", required=True, help="LABEL=PRESET_OR_YAML (repeatable)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--core", type=int, default=0)
    ap.add_argument("--score-only", action="store_true")
    ap.add_argument("--replay-error-bar", type=float, default=None, metavar="KT",
                    help="score each run as if it had stopped at stopping.error_bar_target_kT = KT (its rows up to there)")
    ap.add_argument("--replay-region", type=float, default=1.0, metavar="KT",
                    help="with --replay-error-bar: the stopping.region_error_bar_kT veto replayed")
    args = ap.parse_args()
    configs = [c.split("=", 1) for c in args.config]
    args.out.mkdir(parents=True, exist_ok=True)
    if not args.score_only:
        for seed in args.seeds:
            for label, cfg in configs:
                run_one(cfg, seed, args.out / f"{label}-seed{seed}", args.core)
    rows = [summarize(label, s, args.out / f"{label}-seed{s}", args.replay_error_bar if label == configs[0][0] else None,
                      args.replay_region)
            for s in args.seeds for label, _ in configs if (args.out / f"{label}-seed{s}" / "metrics.csv").is_file()]
    with open(args.out / "runs.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    lines = [f"machine: {describe_machine()}; each run pinned to core {args.core}, one torch thread", "",
             "| config | seed | KLD @ <= 2.5e5 evals (evals) | wall @ that point, s | stop: iterations, evals, wall s "
             "| final KLD | error bar / actual error, kT | RMSE / max err F_ref < 10 kT | flow / ensemble / rest, s "
             "| load before |",
             "|---|---:|---|---:|---|---:|---|---|---|---:|"]
    for r in rows:
        lines.append(f"| {r['config']} | {r['seed']} | {r['kld_at_budget']:.2e} ({r['evals_at_budget']:.3g}) | "
                     f"{r['wall_at_budget_s']:.0f} | {r['iterations']}, {r['evals_final']:.3g}, {r['wall_final_s']:.0f} | "
                     f"{r['kld_final']:.2e} | {r['error_bar_final_kT']:.3f} / {r['actual_err_final_kT']:.3f} | "
                     f"{r['rmse_low_F_kT']:.3f} / {r['max_err_low_F_kT']:.2f} | {r['t_flow_s']:.0f} / "
                     f"{r['t_ensemble_s']:.0f} / {r['t_rest_s']:.0f} | {r['load_before']} |")
    for label, _ in configs:
        sel = [r for r in rows if r["config"] == label]
        if sel:
            med = {k: float(np.median([r[k] for r in sel])) for k in ("kld_at_budget", "wall_at_budget_s", "kld_final",
                                                                      "evals_final", "wall_final_s")}
            lines.append(f"| **{label}, median of {len(sel)}** | | {med['kld_at_budget']:.2e} | "
                         f"{med['wall_at_budget_s']:.0f} | {med['evals_final']:.3g} evals, {med['wall_final_s']:.0f} s | "
                         f"{med['kld_final']:.2e} | | | | |")
    (args.out / "table.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
