"""`cgflow sweep`: many whole runs at once on a dask.distributed cluster (registered on cgflow.cli.app)."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from cgflow.cli.common import app, fail


@app.command()
def sweep(
    spec: Path = typer.Argument(..., help="A sweep spec (YAML): runs (presets or YAML files), seeds, set, grid, "
                                          "cluster; see README 'Scale-out (dask)'."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Sweep directory [default: sweeps/SPEC-NAME]; "
                                                                 "run the same command again to resume."),
    set_: List[str] = typer.Option([], "--set", "-s", metavar="KEY=VALUE",
                                   help="Override a config key of every run (after the spec's own)."),
    scheduler: Optional[str] = typer.Option(None, "--scheduler",
                                            help="'local' or a dask scheduler address (overrides cluster.scheduler)."),
    n_workers: Optional[int] = typer.Option(None, "--n-workers", min=1,
                                            help="Workers of the LocalCluster, or to wait for at an address."),
    threads: Optional[int] = typer.Option(None, "--threads", min=1,
                                          help="torch threads per run (overrides threads_per_run; default 1)."),
    no_plots: bool = typer.Option(False, "--no-plots", help="Do not write PNG plots in the run directories."),
):
    """Run every (config x grid x seed) of a sweep spec as a dask task, each an ordinary run directory
    OUT/NAME-seedK; resumes unfinished runs and skips finished ones when started again; ends with a summary
    table (also OUT/summary.csv)."""
    from cgflow.config import ConfigError
    from cgflow.core.run_directory import RunDirectoryError
    from cgflow.distributed.cluster import SchedulerError, check_scheduler_address
    from cgflow.learning.sweep import expand_sweep, load_sweep_spec, run_sweep, summary_table

    out = out if out is not None else Path("sweeps") / spec.stem
    try:
        sp = load_sweep_spec(spec)
        cluster = sp.cluster
        if scheduler is not None:
            cluster = cluster.model_copy(update={"scheduler": check_scheduler_address(scheduler), "cls": None})
        if n_workers is not None:
            cluster = cluster.model_copy(update={"n_workers": n_workers})
        items = expand_sweep(sp, spec.resolve().parent, out, list(set_))
        results = run_sweep(items, out, spec.read_text(), cluster.target(), n_workers=cluster.n_workers,
                            threads=threads or sp.threads_per_run, plots=sp.plots and not no_plots, echo=typer.echo)
    except (ConfigError, RunDirectoryError, SchedulerError) as err:
        fail(str(err))
    except ValueError as err:
        fail(str(err).splitlines()[0] if str(err) else repr(err))
    except KeyboardInterrupt:
        typer.echo(f"\ninterrupted; continue with the same command: cgflow sweep {spec} --out {out}", err=True)
        raise typer.Exit(130)
    typer.echo(summary_table(results))
    typer.echo(f"summary: {out / 'summary.csv'}")
    failed = [r.run for r in results if r.status == "error"]
    if failed:
        typer.echo(f"error: {len(failed)} run(s) failed: {', '.join(failed)}", err=True)
        raise typer.Exit(1)
