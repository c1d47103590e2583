"""Well-tempered metadynamics on alanine dipeptide (phi, psi) with the tuned settings of
`cgflow metad aldp`, several seeds, and its accuracy curves against the precise reference.

    python benchmarks/metad_aldp.py --out DIR --seeds 0 1 2 --steps 3500000 [--cpu-core 1] [--csv curves.csv]

Every seed runs in turn in this process (OpenMM CPU platform, one thread; with --cpu-core the run and
OpenMM's worker thread are pinned to that core), into ``DIR/seed-{s}``: metad.json + pmf_history/
(one PMF snapshot per --snapshot-every steps with the evaluations and the MD wall-clock spent).
For other tunings pass --set KEY=VALUE (MetadynamicsSettings fields: bias_factor, height_kT,
width_fraction, deposit_every_steps, timestep_fs, friction_per_ps, grid_points ...).

Interface used by benchmarks/aldp_efficiency.py:
    run_metad_seeds(out_dir, seeds=(0, 1, 2), n_steps=..., cpu_core=None, **overrides) -> list[Path]
    kld_curves(run_dir, reference_path=REFERENCE) -> dict(evaluations=, wall_time_s=, forward_kld=)
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

import numpy as np

from cgflow.analysis.metrics import forward_kld, probabilities_from_pmf
from cgflow.baselines.metadynamics import MetadynamicsRun, MetadynamicsSettings, default_settings
from cgflow.pmf.history import read_history
from cgflow.pmf.reference_file import load_reference

SYSTEM = "alanine-dipeptide"
REFERENCE = Path(__file__).resolve().parents[1] / "src/cgflow/data/alanine-dipeptide/reference-pmf.npz"


def tuned_settings(n_steps: int, seed: int = 0, snapshot_every_steps: int = 50_000, **overrides) -> MetadynamicsSettings:
    """The settings `cgflow metad aldp` uses, with ``overrides`` (MetadynamicsSettings fields)."""
    kw = default_settings(SYSTEM)
    kw.update(overrides)
    return MetadynamicsSettings(n_steps=n_steps, seed=seed, snapshot_every_steps=snapshot_every_steps, **kw)


def run_metad_seeds(out_dir, seeds=(0, 1, 2), n_steps: int = 3_500_000, cpu_core: int | None = None,
                    snapshot_every_steps: int = 50_000, progress: bool = False, **overrides) -> list[Path]:
    """Run tuned WT-metaD once per seed, one after the other, into ``out_dir/seed-{s}``; returns the
    run directories.  ``cpu_core`` pins each run (single-threaded) to that core."""
    from cgflow.systems.molecules.molecule_system import alanine_dipeptide

    view = alanine_dipeptide(progress=False).simulation_view()
    out = []
    for s in seeds:
        d = Path(out_dir) / f"seed-{s}"
        st = tuned_settings(n_steps, seed=int(s), snapshot_every_steps=snapshot_every_steps, **overrides)
        info = MetadynamicsRun(view, d, st, system_label="aldp", progress=progress).run(cpu_core=cpu_core)
        print(f"seed {s}: {info['evaluations']} evaluations, {info['wall_time_s']:.1f} s MD "
              f"({info['steps_per_s']:.0f} steps/s), set-up {info['setup_time_s']:.2f} s -> {d}", flush=True)
        out.append(d)
    return out


def kld_curves(run_dir, reference_path=REFERENCE) -> dict:
    """Forward KLD of every PMF snapshot of a run against the reference: dict of arrays
    ``evaluations``, ``wall_time_s`` (MD wall-clock, set-up excluded), ``forward_kld`` (nats), plus
    ``step``; model bin probabilities p ~ exp(-F) over all bins."""
    ref = load_reference(reference_path)
    ev, wall, kld, step = [], [], [], []
    for h in read_history(run_dir):
        if h.pmf_kT.shape != ref.prob.shape or not all(np.allclose(a, b) for a, b in zip(h.edges, ref.edges)):
            raise ValueError(f"{run_dir}: snapshot {h.label!r} is not on the reference bins")
        ev.append(h.evaluations)
        wall.append(h.wall_time_s)
        kld.append(forward_kld(ref.prob, probabilities_from_pmf(h.pmf_kT)))
        step.append(int(h.label.split()[-1]) if h.label.startswith("step ") else h.evaluations - 1)
    return {"evaluations": np.array(ev, dtype=np.int64), "wall_time_s": np.array(wall),
            "forward_kld": np.array(kld), "step": np.array(step, dtype=np.int64)}


def write_curves_csv(run_dirs, path, reference_path=REFERENCE) -> Path:
    """CSV with columns seed, step, evaluations, wall_time_s, forward_kld (seed from metad.json)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["seed", "step", "evaluations", "wall_time_s", "forward_kld"])
        for d in run_dirs:
            seed = json.loads((Path(d) / "metad.json").read_text())["settings"]["seed"]
            c = kld_curves(d, reference_path)
            for i in range(len(c["evaluations"])):
                w.writerow([seed, c["step"][i], c["evaluations"][i], f"{c['wall_time_s'][i]:.3f}",
                            f"{c['forward_kld'][i]:.6g}"])
    return path


def value_at(curve: dict, evaluations: float, key: str = "forward_kld") -> float:
    """``curve[key]`` at the snapshot with the given evaluations (nearest), NaN if none within 1 %."""
    e = curve["evaluations"]
    i = int(np.argmin(np.abs(e - evaluations)))
    return float(curve[key][i]) if abs(e[i] - evaluations) <= 0.01 * evaluations else float("nan")


def _parse_set(items) -> dict:
    out = {}
    for it in items:
        k, v = it.split("=", 1)
        out[k.strip()] = json.loads(v) if v.strip()[:1] in "0123456789-[{tfn" else v
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--steps", type=int, default=3_500_000)
    ap.add_argument("--snapshot-every", type=int, default=50_000)
    ap.add_argument("--cpu-core", type=int, default=None)
    ap.add_argument("--set", dest="set_", action="append", default=[], help="KEY=VALUE settings override")
    ap.add_argument("--csv", type=Path, default=None, help="curves CSV [default: OUT/curves.csv]")
    ap.add_argument("--reference", type=Path, default=REFERENCE)
    a = ap.parse_args()
    dirs = []
    for s in a.seeds:  # the CSV is rewritten after every seed, so a cut-short run leaves its curves
        dirs += run_metad_seeds(a.out, [s], a.steps, a.cpu_core, a.snapshot_every, **_parse_set(a.set_))
        path = write_curves_csv(dirs, a.csv or a.out / "curves.csv", a.reference)
    print(f"curves: {path}")
    marks = [m for m in (1e5, 2.5e5, 5e5, 1e6, 1.5e6, 2e6, 3e6, 3.5e6) if m <= a.steps + 1]
    curves = [kld_curves(d, a.reference) for d in dirs]
    print("evaluations  " + "  ".join(f"{m:9.3g}" for m in marks))
    for s, c in zip(a.seeds, curves):
        print(f"seed {s:<7d} " + "  ".join(f"{value_at(c, m):9.4f}" for m in marks))
    if len(curves) > 1:
        print("median       " + "  ".join(f"{np.nanmedian([value_at(c, m) for c in curves]):9.4f}" for m in marks))
        print("wall s (med) " + "  ".join(f"{np.nanmedian([value_at(c, m, 'wall_time_s') for c in curves]):9.1f}"
                                          for m in marks))


if __name__ == "__main__":
    main()
