"""Alanine dipeptide: forward KLD against energy evaluations and wall-clock, active learning vs WT-metaD vs OPES.

Runs an active-learning preset (default `aldp-fast`) for several seeds, well-tempered metadynamics
(benchmarks/metad_aldp.py, its tuned settings) and OPES (`cgflow opes aldp` defaults, `--opes-set` to
change them; `--opes-steps 0` skips it) for the same seeds, or reads finished run directories;
scores every PMF snapshot (`pmf_history/`) against the shipped reference
(`cgflow/data/alanine-dipeptide/reference-pmf.npz`, noise floor ~7e-4) and writes to OUT:

  efficiency.png   forward KLD vs evaluations and vs wall-clock, median and min-max over seeds (log-log)
  calibration.png  the ensemble's Boltzmann-weighted std (its own error bar) vs the actual
                   Boltzmann-weighted error, every iteration of every AL seed
  table.md         KLD at fixed budgets, and the budgets to reach (and stay below) KLD levels
  curves.csv       every snapshot: method, seed, evaluations, wall_time_s, forward_kld

Every energy evaluation is counted (AL: starting MD, training draws, diagnostics; metaD: every MD step).
Wall-clock: AL the run's own `wall_time_s` (initialization, starting MD, training, fits, MC, saving;
not Python start-up); metaD the MD loop's time at each snapshot.  Time only on an otherwise idle
machine: a second job on 2 cores distorts timings several-fold.

    python benchmarks/aldp_efficiency.py --out runs/eff                      # run everything (~1 h on 2 cores)
    python benchmarks/aldp_efficiency.py --out runs/eff --al-dirs A0 A1 A2 --metad-dirs M0 M1 M2   # score only
    python benchmarks/aldp_efficiency.py --out runs/eff --al-dirs --metad-dirs --opes-dirs O0   # one OPES run only
    python benchmarks/aldp_efficiency.py --out runs/eff --al-dirs A0 A1 A2 --metad-dirs --opes-steps 0 \
        --curves benchmarks/results/aldp-efficiency/curves.csv:WT-metadynamics     # a method scored earlier
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

from cgflow.analysis.metrics import forward_kld, probabilities_from_pmf  # noqa: E402
from cgflow.core.run_directory import read_metrics_csv  # noqa: E402
from cgflow.pmf.history import read_history  # noqa: E402
from cgflow.pmf.reference_file import load_reference  # noqa: E402
from cgflow.systems.molecules.molecule_system import package_data_file  # noqa: E402

REFERENCE = package_data_file("alanine-dipeptide", "reference-pmf.npz")
BUDGETS = (1e5, 1.5e5, 2.5e5, 5e5, 1e6, 1.5e6, 2e6, 3e6)
TIME_BUDGETS_S = (60, 120, 240, 480, 840)
LEVELS = (3e-2, 1e-2, 5e-3, 3e-3, 2e-3)


def snapshot_curve(run_dir: Path, prob_ref: np.ndarray) -> dict:
    """(evaluations, wall_time_s, forward_kld) arrays of a run directory's PMF snapshots."""
    snaps = sorted(read_history(run_dir), key=lambda s: s.evaluations)
    if not snaps:
        raise SystemExit(f"error: {run_dir} has no pmf_history/ snapshots")
    return {"evaluations": np.array([s.evaluations for s in snaps], dtype=np.float64),
            "wall_time_s": np.array([s.wall_time_s for s in snaps], dtype=np.float64),
            "forward_kld": np.array([forward_kld(prob_ref, probabilities_from_pmf(s.pmf_kT)) for s in snaps])}


def value_at(curve: dict, x_key: str, budget: float) -> float:
    """KLD of the last snapshot taken within the budget (a run that stopped earlier keeps its final
    value: it achieved it within any larger budget); NaN if none yet."""
    within = np.flatnonzero(curve[x_key] <= budget)
    return float(curve["forward_kld"][within[-1]]) if within.size else float("nan")


def first_reach(curve: dict, x_key: str, level: float) -> float:
    """x (evaluations or seconds) of the first snapshot at or below ``level``; NaN if never."""
    hit = np.flatnonzero(curve["forward_kld"] <= level)
    return float(curve[x_key][hit[0]]) if hit.size else float("nan")


def stay_below(curve: dict, x_key: str, level: float) -> float:
    """x of the snapshot from which the KLD stays at or below ``level`` to the end; NaN if the last is above."""
    above = np.flatnonzero(curve["forward_kld"] > level)
    if above.size == 0:
        return float(curve[x_key][0])
    j = int(above[-1])
    return float("nan") if j == len(curve["forward_kld"]) - 1 else float(curve[x_key][j + 1])


def _median_range(values) -> tuple[float, float, float]:
    v = np.asarray(values, dtype=np.float64)
    if np.isnan(v).all():
        return (float("nan"),) * 3
    # a seed that never got there counts as +inf for the median of "budget to reach"
    return float(np.median(v)), float(np.nanmin(v)), float(np.nanmax(v))


def _fmt(x: float, kind: str) -> str:
    if not np.isfinite(x):
        return "—"
    if kind == "kld":
        return f"{x:.2g}"
    if kind == "evals":
        return f"{x:.2e}".replace("e+0", "e")
    return f"{x / 60:.1f} min"


def _cell(vals, kind) -> str:
    m, lo, hi = _median_range(vals)
    return f"{_fmt(m, kind)} ({_fmt(lo, kind)}–{_fmt(hi, kind)})" if np.isfinite(m) else "—"


def _reach_cell(vals, kind) -> str:
    v = np.asarray(vals, dtype=np.float64)
    med = float(np.median(np.where(np.isnan(v), np.inf, v)))
    n_ok = int(np.isfinite(v).sum())
    if not np.isfinite(med):
        return f"not reached ({n_ok}/{v.size} seeds)"
    return f"{_fmt(med, kind)} ({_fmt(np.nanmin(v), kind)}–{_fmt(np.nanmax(v), kind)}; {n_ok}/{v.size})"


def table(methods: dict[str, list[dict]]) -> str:
    lines = ["Forward KLD at a budget of energy evaluations, median (min–max) over seeds:", "",
             "| method | " + " | ".join(_fmt(b, "evals") for b in BUDGETS) + " |",
             "| --- |" + " --- |" * len(BUDGETS)]
    for name, curves in methods.items():
        lines.append(f"| {name} | " + " | ".join(_cell([value_at(c, "evaluations", b) for c in curves], "kld")
                                               for b in BUDGETS) + " |")
    lines += ["", "Forward KLD at a wall-clock budget, median (min–max) over seeds:", "",
              "| method | " + " | ".join(f"{t / 60:g} min" for t in TIME_BUDGETS_S) + " |",
              "| --- |" + " --- |" * len(TIME_BUDGETS_S)]
    for name, curves in methods.items():
        lines.append(f"| {name} | " + " | ".join(_cell([value_at(c, "wall_time_s", t) for c in curves], "kld")
                                               for t in TIME_BUDGETS_S) + " |")
    for x_key, kind, what in (("evaluations", "evals", "energy evaluations"), ("wall_time_s", "time", "wall-clock")):
        lines += ["", f"{what.capitalize()} to reach a forward KLD level (first snapshot at or below; then: from "
                      f"which it stays below), median (min–max; seeds that got there):", "",
                  "| method | " + " | ".join(f"{lv:g}" for lv in LEVELS) + " |", "| --- |" + " --- |" * len(LEVELS)]
        for name, curves in methods.items():
            lines.append(f"| {name} reaches | " + " | ".join(
                _reach_cell([first_reach(c, x_key, lv) for c in curves], kind) for lv in LEVELS) + " |")
            lines.append(f"| {name} stays below | " + " | ".join(
                _reach_cell([stay_below(c, x_key, lv) for c in curves], kind) for lv in LEVELS) + " |")
    return "\n".join(lines) + "\n"


def _band(ax, curves, x_key, color, label):
    lo_x = max(min(c[x_key][0] for c in curves), 1e-9)
    hi_x = max(c[x_key][-1] for c in curves)
    grid = np.geomspace(lo_x, hi_x, 200)
    vals = np.array([[value_at(c, x_key, g) if g >= c[x_key][0] else np.nan for g in grid] for c in curves])
    with np.errstate(all="ignore"):
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            med, lo, hi = np.nanmedian(vals, 0), np.nanmin(vals, 0), np.nanmax(vals, 0)
    ax.fill_between(grid, lo, hi, color=color, alpha=0.2, lw=0)
    ax.plot(grid, med, color=color, lw=2, label=f"{label} (median, min–max of {len(curves)} seeds)")
    for c in curves:
        ax.plot(c[x_key], c["forward_kld"], color=color, lw=0.5, alpha=0.5, marker=".", ms=2)


def plot(methods: dict[str, list[dict]], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colors = ["tab:blue", "tab:orange", "tab:green", "tab:red"]
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.6))
    for ax, x_key, xlabel in ((axes[0], "evaluations", "energy evaluations (all counted)"),
                              (axes[1], "wall_time_s", "wall-clock (s)")):
        for (name, curves), col in zip(methods.items(), colors):
            if x_key == "wall_time_s" and not all(np.isfinite(c[x_key]).all() for c in curves):
                continue
            _band(ax, curves, x_key, col, name)
        for lv in (1e-2, 3e-3):
            ax.axhline(lv, color="grey", lw=0.6, ls=":")
        ax.axhline(7e-4, color="k", lw=0.8, ls="--", label="reference noise floor (7e-4)")
        ax.set_xscale("log"), ax.set_yscale("log")
        ax.set_xlabel(xlabel), ax.set_ylabel("forward KLD vs reference (nats)")
        if x_key == "evaluations":
            ax.set_xlim(5e4, 4e6)
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=8)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)


def plot_calibration(al_dirs: list[Path], path: Path) -> None:
    """Predicted (ensemble Boltzmann-weighted std) vs actual (Boltzmann-weighted |error|), per iteration."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 4.6))
    for d in al_dirs:
        rows = read_metrics_csv(d / "metrics.csv")
        pred = [float(r["boltzmann_std_kT"]) for r in rows if r.get("boltzmann_std_kT") not in (None, "")]
        act = [float(r["boltzmann_abs_err_kT"]) for r in rows if r.get("boltzmann_abs_err_kT") not in (None, "")]
        held = [float(r["boltzmann_std_heldout_kT"]) for r in rows if r.get("boltzmann_std_heldout_kT") not in (None, "")]
        if pred and len(pred) == len(act):
            line, = ax.plot(pred, act, marker="o", ms=3, lw=0.8, label=f"{d.name}: ensemble std")
            if len(held) == len(act):
                ax.plot(held, act, marker="x", ms=3, lw=0.5, ls=":", color=line.get_color(),
                        label=f"{d.name}: held-out-scaled std")
    lim = ax.get_xlim()[1], ax.get_ylim()[1]
    top = max(lim)
    ax.plot([1e-3, top], [1e-3, top], "k--", lw=0.8, label="predicted = actual")
    ax.set_xscale("log"), ax.set_yscale("log")
    ax.set_xlabel("predicted: sum_b p(b) sigma(b)  (kT)")
    ax.set_ylabel("actual: sum_b p(b) |F - F_ref - c|  (kT)")
    ax.set_title("Error bars: ensemble std vs actual error, every iteration", fontsize=9)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)


def read_curves(spec: str) -> dict[str, dict[str, dict]]:
    """{method: {run: curve}} from a curves.csv with columns method (or config), run (or seed),
    evaluations, wall_time_s, forward_kld: ``PATH``, ``PATH:METHOD`` for one method's rows, or
    ``PATH:METHOD=LABEL`` to show them as LABEL."""
    path, _, only = spec.partition(":")
    only, _, label = only.partition("=")
    rows = list(csv.DictReader(open(path, newline="")))
    if not rows:
        raise SystemExit(f"error: {path} has no rows")
    out: dict[str, dict[str, list]] = {}
    for r in rows:
        method = r.get("method") or r.get("config") or "?"
        if only and method != only:
            continue
        run = r.get("run") or f"seed{r.get('seed', '?')}"
        out.setdefault(label or method, {}).setdefault(run, []).append(r)
    if not out:
        raise SystemExit(f"error: {path} has no rows of method {only!r}")
    curves: dict[str, dict[str, dict]] = {}
    for method, by_run in out.items():
        for run, rs in by_run.items():
            rs.sort(key=lambda r: float(r["evaluations"]))
            curves.setdefault(method, {})[run] = {
                k: np.array([float(r[k]) for r in rs]) for k in ("evaluations", "wall_time_s", "forward_kld")}
    return curves


def run_al(preset: str, seeds, out: Path, threads: int, extra: list[str]) -> list[Path]:
    dirs = []
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    for seed in seeds:
        d = out / f"al-{preset}-seed{seed}"
        if not (d / "checkpoint.pt").is_file():
            cmd = [sys.executable, "-m", "cgflow.cli", "run", preset, "--out", str(d), "--seed", str(seed),
                   "--no-plots", "--set", "progress=false"] + [x for o in extra for x in ("--set", o)]
            print("+", " ".join(cmd), flush=True)
            subprocess.run(cmd, check=True, env=env)
        dirs.append(d)
    return dirs


def run_opes_seeds(out_dir: Path, seeds, n_steps: int, overrides: list[str], cpu_core: int | None = None,
                   snapshot_every_steps: int = 50_000) -> list[Path]:
    """OPES with `cgflow opes aldp`'s defaults (+ ``overrides``, OpesSettings fields as KEY=VALUE) once per
    seed, one after the other, into ``out_dir/seed-{s}``; a finished run is kept."""
    import json

    import yaml

    from cgflow.baselines.opes import OPES_JSON, OpesRun, OpesSettings, default_settings
    from cgflow.systems.molecules.molecule_system import alanine_dipeptide

    view = alanine_dipeptide(progress=False).simulation_view()
    kw = default_settings(view.name)
    for item in overrides:
        key, _, value = item.partition("=")
        kw[key.strip()] = yaml.safe_load(value)
    dirs = []
    for s in seeds:
        d = Path(out_dir) / f"seed-{s}"
        if not ((d / OPES_JSON).is_file() and json.loads((d / OPES_JSON).read_text()).get("finished")):
            st = OpesSettings(n_steps=n_steps, seed=int(s), snapshot_every_steps=snapshot_every_steps, **kw)
            info = OpesRun(view, d, st, system_label="aldp", progress=False).run(cpu_core=cpu_core)
            print(f"OPES seed {s}: {info['evaluations']} evaluations, {info['wall_time_s']:.1f} s MD "
                  f"({info['steps_per_s']:.0f} steps/s) -> {d}", flush=True)
        dirs.append(d)
    return dirs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--preset", default="aldp-fast")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--set", dest="overrides", action="append", default=[], help="override for the AL runs")
    ap.add_argument("--threads", type=int, default=1, help="torch threads of each AL run")
    ap.add_argument("--al-dirs", type=Path, nargs="*", default=None, help="finished AL runs (skip running)")
    ap.add_argument("--metad-dirs", type=Path, nargs="*", default=None, help="finished WT-metaD runs (skip running)")
    ap.add_argument("--metad-steps", type=int, default=3_500_000)
    ap.add_argument("--opes-dirs", type=Path, nargs="*", default=None, help="finished OPES runs (skip running)")
    ap.add_argument("--opes-steps", type=int, default=3_500_000, help="OPES steps per seed (0: no OPES)")
    ap.add_argument("--opes-set", action="append", default=[], help="OpesSettings KEY=VALUE for the OPES runs, "
                                                                    "e.g. corrected_fes=true")
    ap.add_argument("--opes-label", default="OPES")
    ap.add_argument("--al-label", default=None)
    ap.add_argument("--note", default="", help="a line about the machine's load, printed in the title")
    ap.add_argument("--curves", nargs="*", default=[], metavar="CSV[:METHOD[=LABEL]]",
                    help="add methods already scored: a curves.csv this script (or benchmarks/opes_scan.py) wrote, "
                         "optionally only its rows of METHOD (the snapshots as they were scored; nothing rerun)")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    machine = describe_machine()
    (args.out / "machine.txt").write_text(machine + "\n" + args.note + "\n")
    al_dirs = args.al_dirs if args.al_dirs is not None else run_al(args.preset, args.seeds, args.out, args.threads,
                                                                   args.overrides)
    if args.metad_dirs is not None:
        metad_dirs = args.metad_dirs
    else:
        from metad_aldp import run_metad_seeds

        metad_dirs = [Path(d) for d in run_metad_seeds(args.out / "metad", seeds=tuple(args.seeds),
                                                       n_steps=args.metad_steps)]
    if args.opes_dirs is not None:
        opes_dirs = args.opes_dirs
    elif args.opes_steps > 0:
        opes_dirs = run_opes_seeds(args.out / "opes", args.seeds, args.opes_steps, args.opes_set)
    else:
        opes_dirs = []
    ref = load_reference(REFERENCE)
    al_label = args.al_label or f"active learning ({args.preset})"
    runs = {al_label: al_dirs, "WT-metadynamics": metad_dirs, args.opes_label: opes_dirs}
    runs = {name: dirs for name, dirs in runs.items() if dirs}
    methods = {name: [snapshot_curve(d, ref.prob) for d in dirs] for name, dirs in runs.items()}
    names = {name: [d.name for d in dirs] for name, dirs in runs.items()}
    for spec in args.curves:
        for name, run_curves in read_curves(spec).items():
            methods.setdefault(name, []).extend(run_curves.values())
            names.setdefault(name, []).extend(run_curves)
    with open(args.out / "curves.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["method", "run", "evaluations", "wall_time_s", "forward_kld"])
        for name, curves in methods.items():
            for c, run_name in zip(curves, names[name]):
                for e, t, k in zip(c["evaluations"], c["wall_time_s"], c["forward_kld"]):
                    w.writerow([name, run_name, int(e), f"{t:.2f}", f"{k:.6g}"])
    md = table(methods)
    (args.out / "table.md").write_text(f"{machine}. {args.note}\n\n{md}")
    plot(methods, args.out / "efficiency.png", f"alanine dipeptide vs the umbrella+MBAR reference; {machine}\n{args.note}")
    if al_dirs:
        plot_calibration(al_dirs, args.out / "calibration.png")
    print(md)
    print(f"wrote {args.out}/efficiency.png, calibration.png, table.md, curves.csv")


if __name__ == "__main__":
    main()
