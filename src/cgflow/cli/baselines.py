"""`cgflow md`, `umbrella`, `metad`, `opes`, `reference` and `compare`: the classical baselines, the
reference PMF they make, and the comparison of all methods by energy evaluations."""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import List, Optional

import typer

from cgflow.cli.common import app, fail, set_threads, threads_option

SYSTEM_HELP = "A preset name (its system section is used, e.g. mb or aldp) or a YAML file."


@contextmanager
def _errors_to_exit():
    from pydantic import ValidationError

    from cgflow.config import ConfigError
    from cgflow.core.run_directory import RunDirectoryError
    from cgflow.pmf.reference_file import ReferenceFileError

    try:
        yield
    except ValidationError as err:
        first = err.errors()[0]
        where = ".".join(str(x) for x in first.get("loc", ())) or err.title
        fail(f"{where}: {first['msg'].removeprefix('Value error, ')}")
    except (ConfigError, RunDirectoryError, ReferenceFileError, FileNotFoundError, FileExistsError) as err:
        fail(str(err))
    except ValueError as err:
        fail(str(err).splitlines()[0] if str(err) else repr(err))


def _system_key(item: str) -> str:
    """--set of a baseline command names a key of the system section: `cg=[phi]` and `system.cg=[phi]`
    are the same."""
    return item if item.strip().startswith("system.") or "=" not in item else f"system.{item.strip()}"


def _view(system_spec: str, set_: list[str], device: str = "cpu"):
    """The SimulationView of the system named by a preset / YAML (+ --set overrides)."""
    from cgflow.config import load_config
    from cgflow.core.simulation_view import simulation_view
    from cgflow.systems import build_system

    cfg = load_config(system_spec, [_system_key(s) for s in set_], None)
    return simulation_view(build_system(cfg.system, device=device)), cfg.system.name


def _check_out(out: Path, resume: bool = False) -> None:
    from cgflow.core.run_directory import RunDirectoryError, require_new_run_directory

    if not resume:
        resumable = any((out / name).exists() for name in ("md.json", "opes.json"))
        try:
            require_new_run_directory(out, "choose another --out" + (" or add --resume" if resumable else ""))
        except RunDirectoryError as err:
            fail(str(err))


@app.command()
def md(
    system: Optional[str] = typer.Argument(None, help=SYSTEM_HELP),
    out: Path = typer.Option(..., "--out", "-o", help="Run directory."),
    steps: Optional[int] = typer.Option(None, "--steps", min=1, help="MD steps per replica (on --resume: extend to)."),
    engine: str = typer.Option("openmm", "--engine", help="openmm (CPU, Threads=1) or torch (batched replicas)."),
    replicas: int = typer.Option(1, "--replicas", min=1, help="Independent replicas run together."),
    report_every: int = typer.Option(100, "--report-every", min=1, help="Record the CG values every this many steps."),
    timestep_fs: Optional[float] = typer.Option(None, "--timestep-fs", help="Time step [default: the system's]."),
    seed: int = typer.Option(0, "--seed"),
    device: str = typer.Option("cpu", "--device", help="cpu or cuda (torch engine)."),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in --out."),
    set_: List[str] = typer.Option([], "--set", "-s", metavar="KEY=VALUE",
                                   help="Override a system key of the preset, e.g. cg=[phi]."),
    threads: Optional[int] = threads_option(),
):
    """MD baseline: Langevin dynamics (300 K, 1/ps, no constraints), CG values streamed to disk,
    every force evaluation counted, checkpointed and resumable."""
    from cgflow.baselines.md import MD_JSON, MDRun, MDSettings

    set_threads(threads)
    with _errors_to_exit():
        if resume:
            import json

            if not (out / MD_JSON).is_file():
                fail(f"cannot resume: {out / MD_JSON} not found")
            info = json.loads((out / MD_JSON).read_text())
            asked = int(info["settings"]["n_steps"])
            if steps is not None and steps < asked:
                fail(f"--steps {steps} is below the {asked} steps per replica this run was asked for; give "
                      f"--steps > {asked} to extend it, or leave --steps out to finish it")
            view, _ = _view(system or info["system_spec"], info.get("system_set", []), info["settings"]["device"])
            new = None if steps is None else MDSettings(**{**info["settings"], "n_steps": steps})
            run = MDRun(view, out, new, resume=True)
        else:
            if system is None or steps is None:
                fail("give a SYSTEM and --steps")
            if engine not in ("openmm", "torch"):
                fail(f"--engine must be openmm or torch, not {engine!r}")
            _check_out(out)
            view, _ = _view(system, set_, device)
            st = MDSettings(n_steps=steps, engine=engine, n_replicas=replicas, report_every_steps=report_every,
                            timestep_fs=timestep_fs, seed=seed, device=device)
            run = MDRun(view, out, st, system_label=view.name)
            run.info.update(system_spec=system, system_set=list(set_))
            run._write_info()
        typer.echo(f"run directory: {out}")
        try:
            info = run.run()
        except KeyboardInterrupt:
            typer.echo(f"\ninterrupted; continue with: cgflow md --resume --out {out}", err=True)
            raise typer.Exit(130)
    typer.echo(f"{info['steps_done']} steps x {info['n_replicas']} replica(s) = {info['evaluations']} energy "
               f"evaluations in {info['wall_time_s']:.1f} s; CG trajectory in {out / 'cg_trajectory'}")


@app.command()
def umbrella(
    system: str = typer.Argument(..., help=SYSTEM_HELP),
    out: Path = typer.Option(..., "--out", "-o", help="Run directory."),
    windows: int = typer.Option(20, "--windows", help="Windows per CG dimension."),
    spring_kT: Optional[float] = typer.Option(None, "--spring-kT", help="kT per CG unit^2 [default: 2/spacing^2]."),
    equilibration_steps: int = typer.Option(2000, "--equilibration-steps"),
    production_steps: int = typer.Option(10000, "--production-steps"),
    sample_every: int = typer.Option(100, "--sample-every"),
    snapshots: int = typer.Option(4, "--snapshots", help="PMF estimates from growing parts of the production."),
    seed: int = typer.Option(0, "--seed"),
    device: str = typer.Option("cpu", "--device"),
    set_: List[str] = typer.Option([], "--set", "-s", metavar="KEY=VALUE",
                                   help="Override a system key of the preset, e.g. cg=[phi]."),
    threads: Optional[int] = threads_option(),
):
    """Umbrella sampling on a grid of CG windows (all windows batched in torch), PMF by MBAR (pymbar)."""
    from cgflow.baselines.umbrella import UmbrellaRun, UmbrellaSettings

    set_threads(threads)
    with _errors_to_exit():
        _check_out(out)
        st = UmbrellaSettings(windows_per_dim=windows, spring_kT=spring_kT, equilibration_steps=equilibration_steps,
                              production_steps=production_steps, sample_every_steps=sample_every,
                              n_snapshots=snapshots, seed=seed, device=device)
        view, _ = _view(system, set_, device)
        info = UmbrellaRun(view, out, st).run()
    typer.echo(f"{info['n_windows']} windows, {info['evaluations']} energy evaluations, sampling "
               f"{info['wall_time_sampling_s']:.1f} s, MBAR {info['wall_time_mbar_s']:.1f} s; PMFs in "
               f"{out / 'pmf_history'}")


@app.command()
def metad(
    system: str = typer.Argument(..., help=SYSTEM_HELP),
    out: Path = typer.Option(..., "--out", "-o", help="Run directory."),
    steps: int = typer.Option(..., "--steps", min=1),
    bias_factor: Optional[float] = typer.Option(None, "--bias-factor", help="[default: the system's, else 6]"),
    height_kT: Optional[float] = typer.Option(None, "--height-kT", help="Initial hill height, kT [default: the "
                                              "system's, else 0.5]"),
    width_fraction: Optional[float] = typer.Option(None, "--width-fraction", help="Gaussian width / CG domain "
                                                   "width [default: the system's, else 0.05]"),
    deposit_every: Optional[int] = typer.Option(None, "--deposit-every", help="[default: the system's, else 500]"),
    snapshot_every: int = typer.Option(50_000, "--snapshot-every"),
    timestep_fs: Optional[float] = typer.Option(None, "--timestep-fs", help="Time step [default: the tuned one, "
                                                "else the system's]."),
    friction: float = typer.Option(1.0, "--friction", help="Langevin friction, 1/ps."),
    cpu_core: Optional[int] = typer.Option(None, "--cpu-core", help="Pin the run (and OpenMM's worker thread) "
                                           "to this CPU core."),
    seed: int = typer.Option(0, "--seed"),
    set_: List[str] = typer.Option([], "--set", "-s", metavar="KEY=VALUE", help="Override a system key of the preset."),
):
    """Well-tempered metadynamics on the CG coordinates (OpenMM CPU, one thread), PMF snapshots as it
    goes.  Unset hill settings take the system's tuned defaults (alanine dipeptide: bias factor 6,
    1.2 kJ/mol hills of width 0.35 rad every 500 steps of 2 fs; see `cgflow.baselines.metadynamics`)."""
    from cgflow.baselines.metadynamics import MetadynamicsRun, MetadynamicsSettings, default_settings

    with _errors_to_exit():
        _check_out(out)
        view, _ = _view(system, set_)
        kw = default_settings(view.name)
        given = {"bias_factor": bias_factor, "height_kT": height_kT, "width_fraction": width_fraction,
                 "deposit_every_steps": deposit_every, "timestep_fs": timestep_fs}
        kw.update({k: v for k, v in given.items() if v is not None})
        st = MetadynamicsSettings(n_steps=steps, snapshot_every_steps=snapshot_every, friction_per_ps=friction,
                                  seed=seed, **kw)
        info = MetadynamicsRun(view, out, st).run(cpu_core=cpu_core)
    typer.echo(f"{info['evaluations']} energy evaluations in {info['wall_time_s']:.1f} s of MD "
               f"({info['steps_per_s']:.0f} steps/s; set-up {info['setup_time_s']:.1f} s); PMFs in "
               f"{out / 'pmf_history'}")


@app.command()
def opes(
    system: Optional[str] = typer.Argument(None, help=SYSTEM_HELP + " [on --resume: the run's]"),
    out: Path = typer.Option(..., "--out", "-o", help="Run directory."),
    steps: Optional[int] = typer.Option(None, "--steps", help="MD steps in all (on --resume: extend to)."),
    barrier_kJ: Optional[float] = typer.Option(None, "--barrier-kJ", help="Barrier to overcome, kJ/mol "
                                               "[default: the system's, else 40]."),
    bias_factor: Optional[float] = typer.Option(None, "--bias-factor", help="gamma > 1 [default: barrier / kT]."),
    pace: Optional[int] = typer.Option(None, "--pace", help="A kernel every this many steps [default: the "
                                       "system's, else 500]."),
    sigma: Optional[float] = typer.Option(None, "--sigma", help="Fixed kernel width in CG units (rad for "
                                          "torsions) [default: the system's, else 0.03 x the CG domain]."),
    adaptive_sigma: bool = typer.Option(False, "--adaptive-sigma", help="Estimate the kernel width on the fly."),
    explore: bool = typer.Option(False, "--explore", help="OPES-explore instead of OPES."),
    corrected_fes: bool | None = typer.Option(None, "--corrected-fes/--raw-fes", help="Snapshots of the smoothing-"
                                              "corrected FES, or of the raw reweighted KDE [default: the system's "
                                              "(alanine dipeptide: corrected), else raw]."),
    snapshot_every: int = typer.Option(50_000, "--snapshot-every", help="A PMF snapshot and a checkpoint every "
                                       "this many steps."),
    timestep_fs: Optional[float] = typer.Option(None, "--timestep-fs", help="Time step [default: the system "
                                                "default's, else the system's]."),
    friction: float = typer.Option(1.0, "--friction", help="Langevin friction, 1/ps."),
    cpu_core: Optional[int] = typer.Option(None, "--cpu-core", help="Pin the run (and OpenMM's worker thread) "
                                           "to this CPU core."),
    seed: int = typer.Option(0, "--seed"),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in --out (bit-exact)."),
    set_: List[str] = typer.Option([], "--set", "-s", metavar="KEY=VALUE", help="Override a system key of the preset."),
):
    """OPES / OPES-explore on the CG coordinates (1-3 of them) with the openmm-opes package (OpenMM CPU, one
    thread), PMF snapshots as it goes, checkpointed and resumable.  Unset settings take the system's
    defaults (alanine dipeptide, the tuning scan's winner: barrier 40 kJ/mol, bias factor barrier / kT, a
    kernel every 250 steps of 2 fs, fixed sigma 0.15 rad, corrected FES; see `cgflow.baselines.opes`)."""
    import json

    from cgflow.baselines.opes import OPES_JSON, OpesRun, OpesSettings, check_view, default_settings

    for name, value, ok in (("--steps", steps, steps is None or steps > 0),
                            ("--barrier-kJ", barrier_kJ, barrier_kJ is None or barrier_kJ > 0),
                            ("--bias-factor", bias_factor, bias_factor is None or bias_factor > 1),
                            ("--pace", pace, pace is None or pace > 0), ("--sigma", sigma, sigma is None or sigma > 0),
                            ("--snapshot-every", snapshot_every, snapshot_every > 0),
                            ("--timestep-fs", timestep_fs, timestep_fs is None or timestep_fs > 0),
                            ("--friction", friction, friction > 0)):
        if not ok:
            fail(f"{name} must be {'> 1' if name == '--bias-factor' else '> 0'}, got {value}")
    with _errors_to_exit():
        if resume:
            if not (out / OPES_JSON).is_file():
                fail(f"cannot resume: {out / OPES_JSON} not found")
            info = json.loads((out / OPES_JSON).read_text())
            view, _ = _view(system or info["system_spec"], info.get("system_set", []))
            new = None if steps is None else OpesSettings(**{**info["settings"], "n_steps": steps})
            run = OpesRun(view, out, new, resume=True)
        else:
            if system is None or steps is None:
                fail("give a SYSTEM and --steps")
            _check_out(out)
            view, _ = _view(system, set_)
            check_view(view)
            kw = default_settings(view.name)
            given = {"barrier_kJ_per_mol": barrier_kJ, "bias_factor": bias_factor, "pace_steps": pace,
                     "sigma": sigma, "timestep_fs": timestep_fs, "corrected_fes": corrected_fes}
            kw.update({k: v for k, v in given.items() if v is not None})
            st = OpesSettings(n_steps=steps, adaptive_sigma=adaptive_sigma, explore=explore,
                              snapshot_every_steps=snapshot_every,
                              friction_per_ps=friction, seed=seed, **kw)
            run = OpesRun(view, out, st)
            run.info.update(system_spec=system, system_set=list(set_))
        typer.echo(f"run directory: {out}")
        try:
            info = run.run(cpu_core=cpu_core)
        except KeyboardInterrupt:
            typer.echo(f"\ninterrupted; continue with: cgflow opes --resume --out {out}", err=True)
            raise typer.Exit(130) from None
    rate = f"{info['steps_per_s']:.0f} steps/s; " if info.get("steps_per_s") else ""
    typer.echo(f"{info['method']}: {info['evaluations']} energy evaluations in {info['wall_time_s']:.1f} s of MD "
               f"({rate}set-up {info['setup_time_s']:.1f} s), {info['n_kernels']} kernels, bias factor "
               f"{info['bias_factor']:.3g}; PMFs in {out / 'pmf_history'}")


@app.command()
def reference(
    out: Path = typer.Option(..., "--out", "-o", help="Reference file to write (.npz)."),
    from_run: Optional[Path] = typer.Option(None, "--from-run", help="An MD or umbrella run directory."),
    exact: Optional[str] = typer.Option(None, "--exact", help="A system with an exact PMF (e.g. mb)."),
    discard_steps: int = typer.Option(0, "--discard-steps", help="MD: ignore the first steps of every replica."),
    n_bins: int = typer.Option(100, "--bins", help="Bins per CG dimension (MD / umbrella)."),
):
    """Write a reference PMF file (edges, prob, pmf_kT, meta) for --reference and `cgflow compare`,
    with its noise floor (forward KLD between two independent halves)."""
    from cgflow.baselines.reference import reference_from_exact, reference_from_run

    if out.exists():
        fail(f"{out} exists; choose another --out")
    if (from_run is None) == (exact is None):
        fail("give exactly one of --from-run RUN_DIR or --exact SYSTEM")
    with _errors_to_exit():
        if exact is not None:
            from cgflow.config import load_config
            from cgflow.systems import build_system

            meta = reference_from_exact(build_system(load_config(exact, [], None).system), out)
        else:
            meta = reference_from_run(from_run, out, n_bins=n_bins, discard_steps=discard_steps)
    nf = meta.get("noise_floor_forward_kld")
    typer.echo(f"wrote {out}: {meta['description']}" + (f"; noise floor (forward KLD of halves) {nf:.3g}"
                                                       if nf is not None else ""))


@app.command()
def compare(
    run_dirs: List[Path] = typer.Argument(..., help="Run directories (cgflow run / md / umbrella / metad)."),
    reference_file: Path = typer.Option(..., "--reference", help="Reference PMF file (cgflow reference)."),
    out: Path = typer.Option(Path("comparison"), "--out", "-o", help="Output directory."),
    epsilon: float = typer.Option(1e-10, "--epsilon", help="Probability floor for unvisited bins."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace the files in an existing --out."),
    levels: str = typer.Option("1e-2,3e-3,1e-3", "--levels", help="Forward-KLD levels of the table, comma-separated."),
):
    """Accuracy against energy evaluations for every run: forward/reverse KLD and PMF RMSE, a plot,
    and the evaluations each method needs to reach given KLD levels, with speedups over MD."""
    from cgflow.analysis.compare import run_compare

    for d in run_dirs:
        if not d.is_dir():
            fail(f"no such run directory: {d}")
    try:
        lv = tuple(float(v) for v in levels.split(","))
    except ValueError:
        fail(f"--levels {levels!r}: expected comma-separated numbers")
    with _errors_to_exit():
        res = run_compare(run_dirs, reference_file, out, epsilon=epsilon, overwrite=overwrite, levels=lv)
    typer.echo((out / "comparison.md").read_text())
    typer.echo("wrote " + ", ".join(str(p) for p in res["files"]))
