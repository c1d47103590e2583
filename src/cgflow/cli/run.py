"""`cgflow run`, `plot`, `sample` and `presets`: active learning and what reads its run directory."""

from __future__ import annotations

import time
from pathlib import Path
from typing import List, Optional

import typer

from cgflow.cli.common import app, fail, set_threads, threads_option


@app.command()
def run(
    config: Optional[str] = typer.Argument(None, help="A preset name (see `cgflow presets`) or a YAML file."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Run directory [default: runs/NAME-TIMESTAMP]."),
    set_: List[str] = typer.Option([], "--set", "-s", metavar="KEY=VALUE",
                                   help="Override a config key, e.g. --set ensemble.epochs=200."),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in --out from its last checkpoint."),
    seed: Optional[int] = typer.Option(None, "--seed", help="Random seed (overrides the config's)."),
    device: Optional[str] = typer.Option(None, "--device", help="auto, cpu or cuda (overrides the config's)."),
    no_plots: bool = typer.Option(False, "--no-plots", help="Do not write PNG plots each iteration."),
    reference: Optional[Path] = typer.Option(None, "--reference",
                                             help="Reference PMF .npz (keys edges, prob) for the accuracy metrics "
                                                  "of a molecule."),
    threads: Optional[int] = threads_option(),
):
    """Run active learning; writes config.yaml, metrics.csv, checkpoint.pt, pmf.npz and plots to the run directory."""
    from cgflow.analysis.plotting import PlotReporter
    from cgflow.config import ConfigError, load_config
    from cgflow.core.run_directory import RunDirectoryError
    from cgflow.learning.reporters import ConsoleReporter

    n_threads = set_threads(threads)
    overrides = list(set_) + ([f"device={device}"] if device else [])
    if reference is not None:
        if not reference.is_file():
            fail(f"reference file not found: {reference}")
        overrides.append(f"system.reference={reference.resolve()}")
    try:
        from cgflow.learning import resume as rs

        if resume and out is None:
            fail("--resume needs --out RUN_DIR")
        if not resume and config is None:
            fail("give a preset name or a YAML file (see `cgflow presets`)")
        if out is None:
            load_config(config, overrides, seed)  # bad input fails before a directory name is made up
            out = Path("runs") / f"{Path(config).stem}-{time.strftime('%Y%m%d-%H%M%S')}"
        reporters = ([] if no_plots else [PlotReporter()]) + [ConsoleReporter()]
        opened = rs.open_run(out, config, overrides, seed, resume=resume, reporters=reporters)  # shared with sweep
        runner = opened.runner
        if opened.started_over:
            typer.echo(f"{out} has no checkpoint (the run was stopped before its first one): starting it over")
        typer.echo(f"run directory: {out}"
                   + (f" (resuming at iteration {runner.state.iteration})" if opened.resumed else "")
                   + (f"; torch threads: {n_threads}" if runner.device.type == "cpu" else ""))
        if opened.extension:
            typer.echo(opened.extension)
        if runner.state.done:
            typer.echo(rs.finished_note(runner))
            return
        runner.run()
    except (ConfigError, RunDirectoryError, FileNotFoundError) as err:
        fail(str(err))
    except ValueError as err:
        fail(str(err).splitlines()[0] if str(err) else repr(err))
    except KeyboardInterrupt:
        typer.echo(f"\ninterrupted; continue with: cgflow run --resume --out {out}", err=True)
        raise typer.Exit(130)


@app.command()
def plot(run_dir: Path = typer.Argument(..., help="A run directory.")):
    """(Re)draw the PNG plots of a run directory."""
    from cgflow.analysis.plotting import plot_run
    from cgflow.core.run_directory import CONFIG, RunDirectoryError

    if not run_dir.is_dir():
        fail(f"no such run directory: {run_dir}")
    if not (run_dir / CONFIG).is_file():
        fail(f"{run_dir} is not a cgflow run directory (no {CONFIG})")
    try:
        for p in plot_run(run_dir):
            typer.echo(str(p))
    except RunDirectoryError as err:
        fail(str(err))


@app.command()
def sample(
    run_dir: Path = typer.Argument(..., help="A run directory with a checkpoint."),
    cg: str = typer.Option(..., "--cg", help="CG values, comma-separated, e.g. --cg=-1.4,2.6 (radians)."),
    n: int = typer.Option(100, "--n", min=1, help="Number of structures."),
    out: Path = typer.Option(..., "--out", "-o", help="Output .pdb or .dcd (any format mdtraj writes)."),
    degrees: bool = typer.Option(False, "--degrees", help="--cg values are in degrees."),
    threads: Optional[int] = threads_option(),
):
    """Backmapping: draw all-atom structures from the flow at given CG values, with importance weights.

    Writes the structures to --out and their log importance weights (log p~ - log q, kT) to
    OUT.weights.csv; structures rejected by the system's filter are written too and marked."""
    import math

    import numpy as np
    import torch

    from cgflow.core.run_directory import RunDirectoryError, atomic_write_text
    from cgflow.learning.run import ActiveLearningRun

    try:
        values = [float(v) for v in cg.split(",")]
    except ValueError:
        fail(f"--cg {cg!r}: expected comma-separated numbers")
    if degrees:
        values = [math.radians(v) for v in values]
    if out.exists():
        fail(f"{out} exists; choose another --out")
    if not run_dir.is_dir():
        fail(f"no such run directory: {run_dir}")
    if not (run_dir / "checkpoint.pt").is_file():
        fail(f"{run_dir} has no checkpoint.pt: not a cgflow run directory, or its run stopped before the first "
              f"checkpoint")
    set_threads(threads)
    try:
        run = ActiveLearningRun(None, run_dir, resume=True)
    except (RunDirectoryError, FileNotFoundError, ValueError) as err:
        fail(str(err))
    system = run.system
    if not hasattr(system, "topology"):
        fail(f"system {system.name!r} has no all-atom topology to write")
    if len(values) != system.cg_dim:
        fail(f"--cg has {len(values)} values, the CG space of {system.name} has {system.cg_dim} ({', '.join(system.cg_names)})")
    s = torch.tensor([values] * n, dtype=torch.float64, device=run.device)
    xyz, ok_np, log_p, log_q = draw_structures(run, s)
    ok = torch.as_tensor(ok_np)
    log_w = log_p - log_q
    log_w[~ok_np] = -np.inf
    import mdtraj as md

    out.parent.mkdir(parents=True, exist_ok=True)
    md.Trajectory(xyz, system.topology).save(str(out))
    finite = np.isfinite(log_w)
    w = np.zeros_like(log_w)
    if finite.any():
        w[finite] = np.exp(log_w[finite] - log_w[finite].max())
        w /= w.sum()
    lines = ["frame,accepted,log_weight_kT,normalized_weight"]
    lines += [f"{i},{bool(a)},{lw:.6f},{wi:.6e}" for i, (a, lw, wi) in enumerate(zip(ok.cpu().numpy(), log_w, w))]
    atomic_write_text(Path(str(out) + ".weights.csv"), "\n".join(lines) + "\n")
    ess = 1.0 / float((w**2).sum()) if finite.any() else 0.0
    typer.echo(f"wrote {n} structures to {out} ({int(ok.sum())} accepted by the filter; {int(ok.sum())} energy "
               f"evaluations); effective sample size {ess:.1f}; weights in {out}.weights.csv")
    from cgflow.learning.diagnostics import sample_ess_warning

    warning = sample_ess_warning(ess, n)
    if warning:
        typer.echo(f"warning: {warning}", err=True)


def draw_structures(run, s, batch_size: int = 512):
    """Backmapping: one flow draw per CG point s (n, cg_dim) -> (xyz (n, atoms, 3) nm, accepted by the system's
    filter (n,), log p~ (n,), log q (n,)) as numpy arrays (kT); shared by `sample` and `simulate --all-atom`."""
    import numpy as np
    import torch

    system = run.system
    parts = []
    for start in range(0, s.shape[0], batch_size):
        sb = s[start:start + batch_size].to(device=run.device, dtype=torch.float64)
        with torch.no_grad():
            x_fg, log_q = run.flow.sample(sb)
            ok = system.valid(sb, x_fg)
            log_p = system.log_target(sb, x_fg)
            xyz, _ = system.from_internal(sb, x_fg)
        parts.append((xyz.cpu().numpy(), ok.cpu().numpy().astype(bool), log_p.double().cpu().numpy(),
                      log_q.double().cpu().numpy()))
    return tuple(np.concatenate([p[i] for p in parts]) for i in range(4))


def preset_description(text: str) -> str:
    """The first sentence of a preset's header comment (which may span several comment lines)."""
    import re

    lines = []
    for line in text.splitlines():
        if not line.startswith("#"):
            break
        lines.append(line.lstrip("#").strip())
    joined = " ".join(x for x in lines if x)
    m = re.search(r"(?<=[.!?])\s", joined)
    return joined[: m.start()] if m else joined


@app.command()
def presets(show: Optional[str] = typer.Argument(None, help="Print this preset's YAML."),
            describe: bool = typer.Option(False, "--describe", "-d",
                                          help="Print every key of the preset (defaults included) with its value, "
                                               "unit and description instead of the YAML.")):
    """List the shipped presets, or print one."""
    from cgflow.config import preset_names, preset_text

    names = preset_names()
    if show is None:
        if describe:
            fail("--describe needs a preset name, e.g. `cgflow presets mb --describe`")
        import textwrap

        for n in names:
            typer.echo(textwrap.fill(preset_description(preset_text(n)), width=100, initial_indent=f"{n:12s} ",
                                     subsequent_indent=" " * 13))
        return
    if show not in names:
        fail(f"unknown preset {show!r} (presets: {', '.join(names)})")
    if describe:
        from cgflow.config import load_config
        from cgflow.config.describe import describe_config, format_description

        typer.echo(f"# preset {show}: every key (defaults included), its value and description\n"
                   + format_description(describe_config(load_config(show))), nl=False)
        return
    typer.echo(preset_text(show), nl=False)
