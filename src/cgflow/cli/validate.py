"""`cgflow validate`: check a run's PMF by MD biased with it (no reference needed)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from cgflow.cli.common import app, fail, set_threads, threads_option


@app.command()
def validate(
    run_dir: Path = typer.Argument(..., help="A run directory with a checkpoint (cgflow run --out ...)."),
    steps: int = typer.Option(5000, "--steps", help="Recorded MD steps per walker."),
    walkers: int = typer.Option(64, "--walkers", help="Independent walkers, each started from a flow sample."),
    equilibration_steps: int = typer.Option(500, "--equilibration-steps", help="Unrecorded steps per walker first."),
    ceiling_kT: float = typer.Option(10.0, "--ceiling-kT",
                                     help="The bias follows -F up to this many kT over the minimum, flat above."),
    bins: Optional[int] = typer.Option(None, "--bins", help="Histogram bins per CG dimension (default 50/20/10 "
                                                             "for d = 1/2/3)."),
    timestep_fs: Optional[float] = typer.Option(None, "--timestep-fs", help="MD time step (default: the system's)."),
    seed: int = typer.Option(0, "--seed"),
    out: Optional[Path] = typer.Option(None, "--out", help="Output directory (default RUN/validate)."),
    resume: bool = typer.Option(False, "--resume", help="Continue an interrupted validation in --out."),
    plots: bool = typer.Option(True, "--plots/--no-plots", help="Write validate.png."),
    threads: Optional[int] = threads_option(),
):
    """Check a run's PMF by all-atom MD biased with it: if the PMF is right the biased CG histogram is
    flat below the ceiling; its deviations are the PMF's error, with a bootstrap error bar over walkers.
    Writes validate.json, validate.npz (residual, corrected PMF) and validate.png, and prints a verdict."""
    from pydantic import ValidationError

    from cgflow.core.run_directory import CHECKPOINT, PMF, RunDirectoryError

    out = out or run_dir / "validate"
    if not run_dir.is_dir():
        fail(f"no such run directory: {run_dir}")
    if not (run_dir / CHECKPOINT).is_file():
        fail(f"{run_dir} has no {CHECKPOINT}: not a cgflow run directory, or its run stopped before its first "
             f"checkpoint")
    from cgflow.validation.biased_md import VALIDATE_CHECKPOINT, BiasedMDValidation, ValidationSettings

    if resume and not (out / VALIDATE_CHECKPOINT).is_file():
        fail(f"--resume: {out} holds no interrupted validation ({VALIDATE_CHECKPOINT})")
    if not resume and out.exists() and any(out.iterdir()):
        fail(f"{out} exists and is not empty; use --resume to continue it or choose another --out")
    try:
        settings = ValidationSettings(walkers=walkers, steps=steps, equilibration_steps=equilibration_steps,
                                      ceiling_kT=ceiling_kT, bins=bins, timestep_fs=timestep_fs, seed=seed)
    except ValidationError as err:
        e = err.errors()[0]
        fail(f"--{str(e['loc'][0]).replace('_', '-')}: {e['msg']}")
    set_threads(threads)
    from cgflow.core.simulation_view import simulation_view
    from cgflow.learning.run import ActiveLearningRun
    from cgflow.validation.biased_md import learned_pmf_of_run

    try:
        run = ActiveLearningRun(None, run_dir, resume=True)
        view = simulation_view(run.system)
        if not (run_dir / PMF).is_file():
            fail(f"{run_dir} has no {PMF}: its run stopped before its first iteration")
        runner = BiasedMDValidation(learned_pmf_of_run(run, run_dir / PMF), view, out, settings, resume=resume,
                                    progress=True)
    except (RunDirectoryError, FileNotFoundError, ValueError) as err:
        fail(str(err))
    result, info = runner.run()
    if plots:
        from cgflow.validation.figure import plot_validation

        plot_validation(out, out / "validate.png")
    typer.echo(f"{info['evaluations']:,} MD energy evaluations ({settings.walkers} walkers x "
               f"{info['md_steps_per_walker']:,} steps of {info['timestep_fs']} fs), {info['wall_s']:.1f} s; "
               f"non-finite energies {info['nonfinite_energies']}; wrote {out}/validate.json, validate.npz"
               + (", validate.png" if plots else ""))
    typer.echo(info["verdict"])


@app.command()
def refine(
    run_dir: Path = typer.Argument(..., help="A run directory with a checkpoint."),
    validation: Path = typer.Option(..., "--validate", help="A `cgflow validate` directory of that run (d > 3: "
                                                            "its validate_frames.npz)."),
    out: Path = typer.Option(..., "--out", help="New run directory: a copy of RUN_DIR that continues there."),
    points: int = typer.Option(400, "--points", help="CG points taken from the MD frames (at most)."),
    radius: float = typer.Option(0.6, "--radius", help="Only frames farther than this from every CG point of the "
                                                        "run (CG units, radians for angles)."),
    iterations: int = typer.Option(5, "--iterations", help="Active-learning iterations to run after adding them."),
    seed: int = typer.Option(0, "--seed"),
    threads: Optional[int] = threads_option(),
):
    """Continue a run with CG points where its biased-MD validation went but the run has no points: biased by -F,
    the MD over-visits regions whose F is too high, which an ensemble that is confidently wrong never acquires.
    Copies RUN_DIR to --out (RUN_DIR is not changed), adds up to --points frames farther than --radius from every
    existing point (farthest-point selection), counts the validation's MD evaluations with the run's diagnostics,
    and runs --iterations more iterations."""
    import shutil

    import numpy as np
    import torch

    from cgflow.config import ConfigError
    from cgflow.core.run_directory import CHECKPOINT, CONFIG, METRICS, PMF, RunDirectoryError
    from cgflow.validation.biased_md import VALIDATE_FRAMES, VALIDATE_JSON

    for path, what in ((run_dir / CHECKPOINT, "a run checkpoint"), (validation / VALIDATE_FRAMES, "validation frames "
                                                                    "(`cgflow validate` of a run with d > 3)")):
        if not path.is_file():
            fail(f"{path} not found: refine needs {what}")
    if out.exists():
        fail(f"{out} exists; choose a new --out (the refined run is a copy of {run_dir})")
    if points < 1 or iterations < 1 or radius < 0:
        fail("--points and --iterations must be >= 1 and --radius >= 0")
    set_threads(threads)
    import json

    from cgflow.learning import resume as rs
    from cgflow.learning.reporters import ConsoleReporter
    from cgflow.sampling.acquisition import novel_points

    info = json.loads((validation / VALIDATE_JSON).read_text())
    with np.load(validation / VALIDATE_FRAMES) as z:
        frames = torch.as_tensor(np.asarray(z["frames"], dtype=np.float64).reshape(-1, z["frames"].shape[-1]))
    frames = frames[torch.isfinite(frames).all(1)]
    out.mkdir(parents=True)
    for name in (CONFIG, CHECKPOINT, METRICS, PMF):
        if (run_dir / name).is_file():
            shutil.copy2(run_dir / name, out / name)
    try:
        saved = rs.saved_config(out)
        opened = rs.open_run(out, None, [f"stopping.max_iterations={saved.stopping.max_iterations + iterations}"],
                             None, resume=True, reporters=[ConsoleReporter()])
        runner = opened.runner
        if frames.shape[1] != runner.system.cg_dim:
            fail(f"the validation's frames have {frames.shape[1]} CG coordinates, the run {runner.system.cg_dim}")
        sub = frames[torch.as_tensor(np.random.default_rng(seed).permutation(frames.shape[0])[:20000])]
        new = novel_points(sub, runner.dataset.points, points, radius, runner.system.cg_periodic,
                           np.random.default_rng(seed))
        n = runner.add_points(new, evaluations=int(info.get("evaluations", 0)))
        typer.echo(f"refining {run_dir} in {out}: {n} CG points from {frames.shape[0]:,} biased-MD frames "
                   f"(farther than {radius:g} from the run's {len(runner.dataset) - n:,} points); "
                   f"{int(info.get('evaluations', 0)):,} MD evaluations counted; {iterations} more iterations")
        if opened.extension:
            typer.echo(opened.extension)
        if runner.state.done:
            typer.echo(rs.finished_note(runner))
            return
        runner.run()
    except (ConfigError, RunDirectoryError, FileNotFoundError) as err:
        fail(str(err))
