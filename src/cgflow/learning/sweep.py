"""``cgflow sweep``: many whole runs at once, each a dask task on a dask.distributed cluster.

A sweep spec (YAML) lists configs (presets or YAML files, relative to the spec), seeds, overrides for all
runs and an optional grid of overrides; every combination is one ordinary cgflow run directory
``OUT/<name>[-<key>=<value>...]-seed<k>``, opened exactly as ``cgflow run [--resume]`` opens it
(:func:`cgflow.learning.resume.open_run`): a new run starts, a run with a checkpoint resumes, a finished run is
recognized as finished and skipped, a run killed before its first checkpoint starts over.  Killing the
sweep (even with kill -9) and starting it again with the same command therefore resumes the unfinished
runs and skips the finished ones; a worker killed under a run makes dask start the task again
elsewhere, which resumes the run from its checkpoint.

Example spec::

    runs: [mb, {config: my.yaml, name: mine, set: [ensemble.epochs=300]}]
    seeds: [0, 1]
    set: [stopping.max_iterations=8]        # for every run
    grid: {sampler.threshold: [0.25, 0.4]}  # every combination, x runs x seeds
    cluster: {scheduler: local, n_workers: 2}

The end of a sweep: a summary table (final forward KLD where a reference exists, energy evaluations,
wall time, status per run) printed and written to ``OUT/summary.csv``.
"""

from __future__ import annotations

import contextlib
import csv
import io
import itertools
import re
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Annotated, Any, Callable

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from cgflow.config import ConfigError, load_config
from cgflow.config.loading import format_validation_error, parse_yaml, resolve_source

__all__ = ["SweepSpec", "SweepItem", "load_sweep_spec", "expand_sweep", "run_sweep", "run_item", "SUMMARY",
           "SPEC_COPY"]

SUMMARY = "summary.csv"
SPEC_COPY = "sweep.yaml"
LOCKS = ".locks"
SUMMARY_COLUMNS = ("run", "status", "iterations", "forward_kld", "evals_total", "wall_time_s", "stop_reason",
                   "config", "seed", "overrides", "run_dir", "error")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class SweepRunSpec(_Strict):
    """One entry of ``runs``: a preset or YAML file, the directory name's stem, overrides of its own."""

    config: str
    name: str | None = None
    set: list[str] = []


class ClusterSection(_Strict):
    """Where the runs go: ``scheduler`` "local" (a LocalCluster of ``n_workers`` processes, default one per
    core) or an address; or ``class`` (a dotted cluster class, e.g. ``dask_jobqueue.SLURMCluster``) with
    ``options`` (its keyword arguments), scaled to ``n_workers`` workers."""

    scheduler: str = "local"
    n_workers: Annotated[int, Field(gt=0)] | None = None
    cls: str | None = Field(None, alias="class")
    options: dict[str, Any] = {}

    @field_validator("scheduler")
    @classmethod
    def _address(cls, v: str) -> str:
        from cgflow.distributed.cluster import check_scheduler_address

        return check_scheduler_address(v)

    def target(self):
        """What :func:`cgflow.distributed.cluster.connect` takes."""
        from cgflow.distributed.cluster import ClusterSpec

        if self.cls is not None:
            return ClusterSpec(self.cls, dict(self.options), n_workers=self.n_workers)
        return self.scheduler


class SweepSpec(_Strict):
    runs: Annotated[list[SweepRunSpec], Field(min_length=1)]
    seeds: Annotated[list[int], Field(min_length=1)] = [0]
    set: list[str] = []
    grid: dict[str, Annotated[list[Any], Field(min_length=1)]] = {}
    cluster: ClusterSection = Field(default_factory=ClusterSection)
    threads_per_run: Annotated[int, Field(gt=0)] = 1
    plots: bool = True

    @field_validator("runs", mode="before")
    @classmethod
    def _names_are_configs(cls, v):
        """``- mb`` is short for ``- {config: mb}``."""
        return [{"config": r} if isinstance(r, str) else r for r in v] if isinstance(v, list) else v


@dataclass
class SweepItem:
    """One run of a sweep (everything a worker needs; plain data)."""

    name: str
    config: str  # a preset name or an absolute YAML path
    overrides: list[str]
    seed: int
    run_dir: str


@dataclass
class SweepResult:
    run: str
    status: str  # finished | resumed and finished | already finished | error
    iterations: int = 0
    forward_kld: float | None = None
    evals_total: int | None = None
    wall_time_s: float | None = None
    stop_reason: str = ""
    config: str = ""
    seed: int = 0
    overrides: str = ""
    run_dir: str = ""
    error: str = ""
    session_s: float = field(default=0.0, repr=False)  # time of this task in this sweep session


# --- spec ------------------------------------------------------------------------------------------
def load_sweep_spec(path: str | Path) -> SweepSpec:
    """The validated spec of a YAML file; ConfigError (one line, naming the key) otherwise."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"sweep spec not found: {path}")
    data = parse_yaml(path.read_text(), str(path))
    try:
        return SweepSpec.model_validate(data)
    except ValidationError as err:
        raise ConfigError(f"invalid sweep spec {path}: {format_validation_error(err)}") from None


def _label(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._=+-]+", "_", text)


def expand_sweep(spec: SweepSpec, spec_dir: Path, out: Path, extra_overrides: list[str] = ()) -> list[SweepItem]:
    """Every (run entry, grid combination, seed) as a :class:`SweepItem`, each config checked now (one-line
    ConfigError naming the run otherwise), so that bad input stops the sweep before anything is written."""
    keys = list(spec.grid)
    combos = list(itertools.product(*(spec.grid[k] for k in keys))) if keys else [()]
    items: list[SweepItem] = []
    for entry in spec.runs:
        try:
            _text, _name, path = resolve_source(entry.config, spec_dir)
        except ConfigError as err:
            raise ConfigError(f"sweep run {entry.config!r}: {err}") from None
        source = str(path) if path is not None else entry.config
        stem = entry.name or Path(entry.config).stem
        for combo in combos:
            grid_set = [f"{k}={yaml.safe_dump(v, default_flow_style=True).strip().removesuffix('...').strip()}"
                        for k, v in zip(keys, combo)]
            label = "-".join([stem] + [_label(s) for s in grid_set])
            for seed in spec.seeds:
                overrides = list(spec.set) + list(entry.set) + grid_set + list(extra_overrides) + ["progress=false"]
                name = f"{label}-seed{seed}"
                try:
                    load_config(source, overrides, seed)
                except ConfigError as err:
                    raise ConfigError(f"sweep run {name}: {err}") from None
                items.append(SweepItem(name, source, overrides, int(seed), str(Path(out) / name)))
    names = [it.name for it in items]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ConfigError(f"sweep runs share the directory name {dup[0]!r}; give the entries different `name`s")
    return items


# --- one run (on a worker) ---------------------------------------------------------------------------
@contextlib.contextmanager
def _run_lock(path: Path):
    """An exclusive lock on ``path`` (fcntl; released when the holder dies), so that a run is never
    advanced by two processes at once (e.g. a worker orphaned by a killed sweep and its restart)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def run_item(item: SweepItem, threads: int = 1, plots: bool = True) -> SweepResult:
    """Run (or resume, or recognize as finished) one sweep run; never raises for a failing run."""
    from cgflow.core.threads import apply_threads
    from cgflow.learning.resume import open_run

    t0 = time.perf_counter()
    apply_threads(threads)
    out = Path(item.run_dir)
    res = SweepResult(item.name, "error", config=item.config, seed=item.seed, overrides=" ".join(item.overrides),
                      run_dir=item.run_dir)
    runner = None
    with _run_lock(out.parent / LOCKS / f"{item.name}.lock"):
        try:
            reporters = []
            if plots:
                from cgflow.analysis.plotting import PlotReporter

                reporters.append(PlotReporter())
            resume = out.is_dir() and any(out.iterdir())
            opened = open_run(out, item.config, item.overrides, item.seed, resume=resume, reporters=reporters)
            runner = opened.runner
            if runner.state.done:
                res.status = "already finished"
            else:
                runner.run()
                res.status = "resumed and finished" if opened.resumed else "finished"
        except Exception as err:  # noqa: BLE001 - reported in the summary; the other runs go on
            msg = str(err).splitlines()[0] if str(err) else ""
            res.error = f"{type(err).__name__}: {msg}"
        finally:
            close = getattr(getattr(runner, "system", None), "close", None)
            if callable(close):
                close()
    if runner is not None:
        st = runner.state
        last = st.rows[-1] if st.rows else {}
        res.iterations, res.stop_reason = len(st.rows), st.stop_reason
        res.forward_kld = last.get("forward_kld")
        res.evals_total, res.wall_time_s = st.counter.total, st.wall_time_s
    res.session_s = time.perf_counter() - t0
    return res


# --- the sweep (client side) -------------------------------------------------------------------------
def check_sweep_dir(out: Path) -> None:
    """RunDirectoryError if ``out`` exists and is not a sweep directory (a new or empty one is fine)."""
    from cgflow.core.run_directory import RunDirectoryError

    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not (out / SPEC_COPY).is_file())):
        raise RunDirectoryError(f"{out} exists and is not a sweep directory (no {SPEC_COPY}); choose another --out")


def prepare_sweep_dir(out: Path, spec_text: str) -> None:
    """Create ``out`` (or reuse it if it is a sweep directory) and keep the spec as ``sweep.yaml``; an
    existing directory that is not a sweep's is refused (nothing in it is touched)."""
    from cgflow.core.run_directory import atomic_write_text

    check_sweep_dir(out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / SPEC_COPY, spec_text)


def summary_table(results: list[SweepResult]) -> str:
    """The console table: one line per run."""
    head = f"{'run':<40s} {'status':<22s} {'iter':>4s} {'forward KLD':>11s} {'evaluations':>12s} {'wall s':>8s}"
    lines = [head, "-" * len(head)]
    for r in results:
        kld = f"{r.forward_kld:.3g}" if r.forward_kld is not None else "-"
        ev = f"{r.evals_total:,}" if r.evals_total is not None else "-"
        wall = f"{r.wall_time_s:.1f}" if r.wall_time_s is not None else "-"
        lines.append(f"{r.run:<40s} {r.status:<22s} {r.iterations:>4d} {kld:>11s} {ev:>12s} {wall:>8s}")
        if r.error:
            lines.append(f"    {r.error}")
    return "\n".join(lines)


def write_summary(path: Path, results: list[SweepResult]) -> None:
    from cgflow.core.run_directory import atomic_write_text

    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=SUMMARY_COLUMNS, extrasaction="ignore")
    w.writeheader()
    for r in results:
        w.writerow({k: ("" if v is None else v) for k, v in asdict(r).items()})
    atomic_write_text(path, buf.getvalue())


def run_sweep(items: list[SweepItem], out: Path, spec_text: str, cluster, *, n_workers: int | None = None,
              threads: int = 1, plots: bool = True, echo: Callable[[str], None] = print,
              timeout_s: float = 30.0) -> list[SweepResult]:
    """Submit every run of ``items`` as a dask task to ``cluster`` (see :func:`cgflow.distributed.cluster.connect`),
    show the progress, and return the results in the order of ``items`` (also written to ``out/summary.csv``)."""
    import tqdm.auto
    from distributed import as_completed

    from cgflow.distributed.cluster import connect

    out = Path(out)
    check_sweep_dir(out)  # before a cluster is started; nothing is written before it is reached
    conn = connect(cluster, n_workers, timeout_s=timeout_s, daemon_workers=False)
    results: dict[str, SweepResult] = {}
    try:
        prepare_sweep_dir(out, spec_text)
        echo(f"sweep: {len(items)} run(s) in {out} on {conn.description}")
        tag = uuid.uuid4().hex[:8]
        futures = {conn.client.submit(run_item, it, threads, plots, key=f"cgflow-run-{it.name}-{tag}", pure=False): it
                   for it in items}
        bar = tqdm.auto.tqdm(total=len(items), desc="sweep", unit="run")
        for fut in as_completed(futures):
            it = futures[fut]
            try:
                res = fut.result()
            except Exception as err:  # noqa: BLE001 - e.g. KilledWorker: the run's workers kept dying
                res = SweepResult(it.name, "error", config=it.config, seed=it.seed, overrides=" ".join(it.overrides),
                                  run_dir=it.run_dir, error=f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}")
            results[it.name] = res
            kld = f", forward KLD {res.forward_kld:.3g}" if res.forward_kld is not None else ""
            bar.write(f"{res.run}: {res.status}" + (f" ({res.error})" if res.error else
                                                    f" after {res.iterations} iteration(s){kld}"))
            bar.update(1)
        bar.close()
    finally:
        conn.close()
    ordered = [results[it.name] for it in items]
    write_summary(out / SUMMARY, ordered)
    return ordered
