"""OPES tuning scan on alanine dipeptide (issue 19 part 1): run configurations with `cgflow opes`, score them.

Stage 1: every configuration of STAGE1 for one seed (default 1e6 steps).  Stage 2: the best two
(forward KLD at the stage-1 budget; a KLD within 5% of the next better one is a tie, broken by the
basin error) for three seeds to 2e6 steps: seed 0 extended with `--resume --steps N`, the others fresh.
Runs go to OUT/<config>/seed-<s>; a finished run is skipped, an unfinished one (a checkpoint) resumed,
so the same command line continues an interrupted scan.  Each run is pinned to one core
(`--cpu-core`, `taskset -c`, OMP_NUM_THREADS=1).

Scores of every PMF snapshot against the shipped reference (100x100 grid, as benchmarks/aldp_efficiency.py):
forward KLD; the basin free-energy differences (basins of benchmarks/aldp_basins.py; F_b = -ln of the
basin's probability, differences alpha_R - C7eq/beta, alpha_L - C7eq/beta, alpha_L - alpha_R), the largest
|error| of the three in kT; RMSE and max |error| where F_ref < 10 kT (after removing the mean offset there).

    python benchmarks/opes_scan.py --out /tmp/opes-scan --results benchmarks/results/opes-scan      # everything
    python benchmarks/opes_scan.py --out /tmp/opes-scan --stage 1             # stage 1 only (then: --stage score)
    python benchmarks/opes_scan.py --out /tmp/opes-scan --stage 2 --stage2-configs b50-g10 defaults

Writes to --results: curves.csv (config, seed, evaluations, wall_time_s, forward_kld, basin_max_err_kT,
rmse_kT, max_err_kT), scan.json (each configuration's flags and settings, the ranking), tables.md.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from aldp_basins import BASINS  # noqa: E402
from aldp_efficiency import REFERENCE  # noqa: E402
from machine import describe_machine  # noqa: E402

from cgflow.analysis.metrics import forward_kld, probabilities_from_pmf  # noqa: E402
from cgflow.pmf.history import read_history  # noqa: E402
from cgflow.pmf.reference_file import load_reference  # noqa: E402

#: name -> (flags of `cgflow opes`, description).  All but the explicitly raw one snapshot the corrected FES.
# explicit pace and FES flags: `cgflow opes aldp`'s own defaults are now this scan's winner (pace 250, corrected)
CONFIGS: dict[str, tuple[list[str], str]] = {
    "defaults": (["--pace", "500", "--corrected-fes"], "defaults: barrier 40 kJ/mol, gamma = barrier/kT = 16, pace 500, sigma 0.15"),
    "b50-g10": (["--pace", "500", "--barrier-kJ", "50", "--bias-factor", "10", "--corrected-fes"],
                "the OPES paper's aldp setting: barrier 50, bias factor 10"),
    "b30": (["--pace", "500", "--barrier-kJ", "30", "--corrected-fes"], "barrier 30 (gamma = 12)"),
    "b40-adaptive": (["--pace", "500", "--barrier-kJ", "40", "--adaptive-sigma", "--corrected-fes"], "barrier 40, adaptive sigma"),
    "b40-sigma0.10": (["--pace", "500", "--barrier-kJ", "40", "--sigma", "0.10", "--corrected-fes"], "barrier 40, sigma 0.10"),
    "b40-pace250": (["--barrier-kJ", "40", "--pace", "250", "--corrected-fes"], "barrier 40, a kernel every 250 steps"),
    "explore-b40": (["--pace", "500", "--barrier-kJ", "40", "--explore", "--corrected-fes"], "OPES-explore, barrier 40"),
    "b40-g8": (["--pace", "500", "--barrier-kJ", "40", "--bias-factor", "8", "--corrected-fes"], "barrier 40, bias factor 8"),
    "defaults-raw": (["--pace", "500", "--raw-fes"], "defaults, raw (uncorrected) KDE FES"),
}
STAGE1 = ["defaults", "b50-g10", "b30", "b40-adaptive", "b40-sigma0.10", "b40-pace250", "explore-b40", "b40-g8"]
BUDGETS = (2.5e5, 5e5, 1e6, 2e6)
TIE = 1.05


def cgflow_cmd() -> list[str]:
    exe = Path(sys.executable).with_name("cgflow")
    return [str(exe)] if exe.is_file() else [sys.executable, "-m", "cgflow.cli"]


def run_one(out: Path, config: str, seed: int, n_steps: int, cpu_core: int, snapshot_every: int) -> Path:
    """Run (or resume, or extend) OUT/config/seed-S to n_steps; a run already there is kept."""
    d = out / config / f"seed-{seed}"
    info_path = d / "opes.json"
    info = json.loads(info_path.read_text()) if info_path.is_file() else None
    if info and info.get("finished") and info["steps_done"] >= n_steps:
        print(f"= {d}: {info['steps_done']} steps, kept", flush=True)
        return d
    pin = ["taskset", "-c", str(cpu_core)] if shutil.which("taskset") else []
    if info and (d / "checkpoint.pt").is_file():
        cmd = pin + cgflow_cmd() + ["opes", "-o", str(d), "--resume", "--steps", str(n_steps),
                                    "--cpu-core", str(cpu_core)]
    else:
        if d.exists():  # killed before its first checkpoint: nothing to keep
            shutil.rmtree(d)
        d.parent.mkdir(parents=True, exist_ok=True)
        cmd = pin + cgflow_cmd() + ["opes", "aldp", "-o", str(d), "--steps", str(n_steps), "--cpu-core", str(cpu_core),
                                    "--seed", str(seed), "--snapshot-every", str(snapshot_every)] + CONFIGS[config][0]
    print("+", " ".join(cmd), flush=True)
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    with open(d.parent / f"seed-{seed}.log", "a") as log:
        subprocess.run(cmd, check=True, env=env, stdout=log, stderr=subprocess.STDOUT)
    return d


# --- scoring ------------------------------------------------------------------------------------
class Scorer:
    def __init__(self):
        ref = load_reference(REFERENCE)
        self.prob = ref.prob
        c = [np.degrees(0.5 * (e[1:] + e[:-1])) for e in ref.edges]
        phi, psi = np.meshgrid(c[0], c[1], indexing="ij")
        self.masks = {name: sel(phi, psi) for name, sel in BASINS.items()}
        with np.errstate(divide="ignore"):
            r = -np.log(ref.prob)
        self.f_ref = r - r[np.isfinite(r)].min()
        self.low = np.isfinite(self.f_ref) & (self.f_ref < 10)
        self.basin_ref = self.basin_differences(ref.prob)

    def basin_differences(self, prob: np.ndarray) -> np.ndarray:
        with np.errstate(divide="ignore"):
            f = {k: -np.log(prob[m].sum()) for k, m in self.masks.items()}
        return np.array([f["alpha_R"] - f["C7eq/beta"], f["alpha_L"] - f["C7eq/beta"], f["alpha_L"] - f["alpha_R"]])

    def score(self, pmf_kT: np.ndarray) -> dict:
        p = probabilities_from_pmf(pmf_kT)
        dd = np.asarray(pmf_kT, dtype=np.float64) - self.f_ref
        dd = dd[self.low] - dd[self.low].mean()
        return {"forward_kld": forward_kld(self.prob, p),
                "basin_max_err_kT": float(np.abs(self.basin_differences(p) - self.basin_ref).max()),
                "rmse_kT": float(np.sqrt(np.mean(dd ** 2))), "max_err_kT": float(np.abs(dd).max())}

    def curve(self, run_dir: Path) -> list[dict]:
        rows = []
        for s in sorted(read_history(run_dir), key=lambda s: s.evaluations):
            rows.append({"evaluations": int(s.evaluations), "wall_time_s": float(s.wall_time_s), **self.score(s.pmf_kT)})
        return rows


def at(rows: list[dict], budget: float, key: str = "forward_kld") -> float:
    """The value of the last snapshot within ``budget`` evaluations (exactly at it: steps + 1); NaN if the
    run has not reached the budget."""
    if not rows or rows[-1]["evaluations"] < budget:
        return float("nan")
    within = [r for r in rows if r["evaluations"] <= budget + 1]
    return float(within[-1][key]) if within else float("nan")


def steps_per_s(rows: list[dict], budget: float) -> float:
    within = [r for r in rows if r["evaluations"] <= budget + 1]
    return (within[-1]["evaluations"] - 1) / within[-1]["wall_time_s"] if within else float("nan")


def rank(curves: dict, budget: float) -> list[str]:
    """Configurations by KLD at ``budget`` (seed 0); within TIE x of the next better one, the lower basin error
    first."""
    names = [n for n in curves if 0 in curves[n] and np.isfinite(at(curves[n][0], budget))]
    names.sort(key=lambda n: at(curves[n][0], budget))
    for _ in range(len(names)):
        for i in range(len(names) - 1):
            a, b = curves[names[i]][0], curves[names[i + 1]][0]
            if (at(b, budget) <= TIE * at(a, budget)
                    and at(b, budget, "basin_max_err_kT") < at(a, budget, "basin_max_err_kT")):
                names[i], names[i + 1] = names[i + 1], names[i]
    return names


def _f(x: float, nd: int = 2) -> str:
    return f"{x:.{nd}g}" if np.isfinite(x) else "—"


def tables(curves: dict, stage1: list[str], stage2: list[str], stage1_steps: int, stage2_steps: int) -> str:
    b1 = stage1_steps + 1
    lines = [f"Stage 1 (seed 0), forward KLD at a budget of evaluations; at {b1 - 1:.0e} steps also the basin error "
             f"(max |error| of the 3 basin free-energy differences, kT) and RMSE / max |error| where F_ref < 10 kT; "
             f"MD steps/s to then:", "",
             "| config | flags | KLD 2.5e5 | KLD 5e5 | KLD 1e6 | basin max err (kT) | RMSE / max err (kT) | steps/s |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for n in stage1:
        rows = curves.get(n, {}).get(0)
        if not rows:
            lines.append(f"| {n} | `{' '.join(CONFIGS[n][0])}` | not run |  |  |  |  |  |")
            continue
        lines.append(f"| {n} | `{' '.join(CONFIGS[n][0])}` | {_f(at(rows, 2.5e5))} | {_f(at(rows, 5e5))} | "
                     f"{_f(at(rows, b1))} | {_f(at(rows, b1, 'basin_max_err_kT'))} | "
                     f"{_f(at(rows, b1, 'rmse_kT'))} / {_f(at(rows, b1, 'max_err_kT'))} | "
                     f"{steps_per_s(rows, b1):.0f} |")
    if stage2:
        budgets = [5e5 + 1, 1e6 + 1, stage2_steps + 1]
        lines += ["", "Stage 2, median (min–max) over the seeds that got there (n):", "",
                  "| config | " + " | ".join(f"KLD {b - 1:.0e}" for b in budgets)
                  + f" | basin max err {stage2_steps:.0e} (kT) | RMSE {stage2_steps:.0e} (kT) |",
                  "| --- |" + " --- |" * (len(budgets) + 2)]
        for n in stage2:
            seeds = curves.get(n, {})
            cells = []
            for b, key in [(b, "forward_kld") for b in budgets] + [(budgets[-1], "basin_max_err_kT"),
                                                                   (budgets[-1], "rmse_kT")]:
                v = np.array([at(rows, b, key) for rows in seeds.values()])
                v = v[np.isfinite(v)]
                cells.append(f"{_f(np.median(v))} ({_f(v.min())}–{_f(v.max())}; n={v.size})" if v.size else "—")
            lines.append(f"| {n} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("/tmp/opes-scan"), help="run directories")
    ap.add_argument("--results", type=Path, default=None, help="write curves.csv, scan.json, tables.md here")
    ap.add_argument("--stage", choices=["1", "2", "all", "score"], default="all")
    ap.add_argument("--configs", nargs="+", default=STAGE1, choices=list(CONFIGS), help="stage-1 configurations")
    ap.add_argument("--stage2-configs", nargs="+", default=None, choices=list(CONFIGS),
                    help="stage-2 configurations [default: the best two of stage 1]")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="stage-2 seeds")
    ap.add_argument("--stage1-steps", type=int, default=1_000_000)
    ap.add_argument("--stage2-steps", type=int, default=2_000_000)
    ap.add_argument("--snapshot-every", type=int, default=50_000)
    ap.add_argument("--cpu-core", type=int, default=1)
    args = ap.parse_args()

    if args.stage in ("1", "all"):
        for n in args.configs:
            run_one(args.out, n, 0, args.stage1_steps, args.cpu_core, args.snapshot_every)
    scorer = Scorer()

    def score_all() -> dict:
        curves: dict = {}
        for cdir in sorted(p for p in args.out.iterdir() if p.is_dir() and p.name in CONFIGS):
            for sdir in sorted(cdir.glob("seed-*")):
                if (sdir / "pmf_history").is_dir():
                    curves.setdefault(cdir.name, {})[int(sdir.name.split("-")[1])] = scorer.curve(sdir)
        return curves

    curves = score_all()
    ranking = rank({n: curves[n] for n in args.configs if n in curves}, args.stage1_steps + 1)
    stage2 = args.stage2_configs or ranking[:2]
    print("stage-1 ranking (KLD at the stage-1 budget):", ", ".join(ranking), flush=True)
    if args.stage in ("2", "all"):
        for n in stage2:
            for s in args.seeds:
                run_one(args.out, n, s, args.stage2_steps, args.cpu_core, args.snapshot_every)
        curves = score_all()
    has_stage2 = [n for n in stage2 if any(rows and rows[-1]["evaluations"] > args.stage1_steps + 1
                                           for rows in curves.get(n, {}).values())]
    md = tables(curves, args.configs, has_stage2, args.stage1_steps, args.stage2_steps)
    print(md)
    if args.results:
        args.results.mkdir(parents=True, exist_ok=True)
        with open(args.results / "curves.csv", "w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(["config", "seed", "evaluations", "wall_time_s", "forward_kld", "basin_max_err_kT",
                        "rmse_kT", "max_err_kT"])
            for n, seeds in curves.items():
                for s, rows in sorted(seeds.items()):
                    for r in rows:
                        w.writerow([n, s, r["evaluations"], f"{r['wall_time_s']:.2f}", f"{r['forward_kld']:.6g}",
                                    f"{r['basin_max_err_kT']:.4g}", f"{r['rmse_kT']:.4g}", f"{r['max_err_kT']:.4g}"])
        settings = {}
        for n, seeds in curves.items():
            info = json.loads((args.out / n / f"seed-{min(seeds)}" / "opes.json").read_text())
            st = {k: info["settings"][k] for k in ("barrier_kJ_per_mol", "bias_factor", "pace_steps", "sigma",
                                                   "adaptive_sigma", "explore", "corrected_fes", "timestep_fs",
                                                   "friction_per_ps", "snapshot_every_steps")}
            settings[n] = {"flags": CONFIGS[n][0], "description": CONFIGS[n][1], "settings": st,
                           "bias_factor_used": info["bias_factor"], "package": info["package"],
                           "seeds": {s: json.loads((args.out / n / f"seed-{s}" / "opes.json").read_text())
                                     ["steps_done"] for s in sorted(seeds)}}
        scan = {"machine": describe_machine(), "stage1_steps": args.stage1_steps, "stage2_steps": args.stage2_steps,
                "stage1_ranking": ranking, "stage2_configs": stage2, "tie_factor": TIE,
                "command": "cgflow opes aldp -o OUT/CONFIG/seed-S --steps N --cpu-core C --seed S "
                           "--snapshot-every K FLAGS (extension: cgflow opes -o DIR --resume --steps N)",
                "configs": settings}
        (args.results / "scan.json").write_text(json.dumps(scan, indent=1) + "\n")
        (args.results / "tables.md").write_text(md)
        print(f"wrote {args.results}/curves.csv, scan.json, tables.md")


if __name__ == "__main__":
    main()
