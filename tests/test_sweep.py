"""`cgflow sweep` (cgflow.learning.sweep): 2 tiny Müller-Brown configs x 2 seeds on a 2-worker LocalCluster
(started through the shipped SLURM example's `cluster: {class: ...}` route), killed with kill -9 mid-sweep,
restarted (unfinished runs resume, finished ones are skipped) and equal to the same runs made one by one;
bad specs stop with a one-line error before anything is written."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from typer.testing import CliRunner

from cgflow.cli import app
from cgflow.core import run_directory as rd
from cgflow.learning.resume import open_run
from cgflow.learning.sweep import expand_sweep, load_sweep_spec
from conftest import cgflow_command, cgflow_env

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "slurm-sweep.yaml"
TINY = ["by_example.epochs=20", "by_energy.epochs_first=4", "by_energy.epochs_later=2", "ensemble.epochs=60",
        "stopping.max_iterations=3"]
TIMING = {"t_flow_s", "t_energy_s", "t_labels_s", "t_ensemble_s", "t_mc_s", "wall_time_s"}


def _spec(tmp_path: Path) -> Path:
    """The shipped SLURM example with the cluster class swapped for a LocalCluster of 2 workers and the runs
    swapped for two tiny Müller-Brown configs (a preset and a YAML file beside the spec) x 2 seeds."""
    spec = yaml.safe_load(EXAMPLE.read_text())
    (tmp_path / "mb-small.yaml").write_text("extends: mb\nensemble: {n_models: 5}\n")
    spec.update(runs=["mb", "mb-small.yaml"], seeds=[0, 1], set=TINY, plots=False)
    spec["cluster"] = {"class": "distributed.LocalCluster", "n_workers": 2,
                       "options": {"n_workers": 0, "threads_per_worker": 1, "processes": True,
                                   "dashboard_address": None, "silence_logs": 40}}
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def _sweep(spec: Path, out: Path, **kw) -> subprocess.Popen:
    """`cgflow sweep SPEC --out OUT` as a process of its own (its cluster from the spec)."""
    env = cgflow_env(extra_env={"OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"})
    return subprocess.Popen(cgflow_command("sweep", str(spec), "--out", str(out)), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, **kw)


@pytest.fixture(scope="module")
def scheduler_address():
    """A running 2-worker cluster that restarted sweeps connect to (its workers may start processes)."""
    import dask
    from distributed import LocalCluster

    with dask.config.set({"distributed.worker.daemon": False}):
        cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
                               silence_logs=40)
    yield cluster.scheduler_address
    cluster.close()


def _sweep_here(spec: Path, out: Path, address: str):
    """The same sweep in this process, on the running cluster at ``address``: (exit code, output)."""
    res = CliRunner().invoke(app, ["sweep", str(spec), "--out", str(out), "--scheduler", address])
    return res.exit_code, res.output


def _summary(out: Path) -> dict[str, dict]:
    with open(out / "summary.csv", newline="") as fh:
        return {r["run"]: r for r in csv.DictReader(fh)}


def _descendants(pid: int) -> list:
    import psutil

    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def test_example_spec_is_valid_and_renders_a_slurm_job():
    spec = load_sweep_spec(EXAMPLE)
    assert spec.cluster.cls == "dask_jobqueue.SLURMCluster" and spec.cluster.n_workers
    items = expand_sweep(spec, EXAMPLE.parent, Path("/nonexistent/out"))  # every config of it loads
    assert len(items) == len(spec.runs) * len(spec.seeds)
    assert len({it.run_dir for it in items}) == len(items)
    jobqueue = pytest.importorskip("dask_jobqueue")  # optional: not a dependency of cgflow
    cluster = jobqueue.SLURMCluster(**spec.cluster.options)
    try:
        script = cluster.job_script()
    finally:
        cluster.close()
    assert "#SBATCH -t 04:00:00" in script and "--nthreads 1" in script


@pytest.mark.slow
def test_sweep_killed_and_restarted_equals_runs_one_by_one(tmp_path, scheduler_address):
    spec, out = _spec(tmp_path), tmp_path / "sweep"
    items = expand_sweep(load_sweep_spec(spec), tmp_path, out)
    assert sorted(it.name for it in items) == ["mb-seed0", "mb-seed1", "mb-small-seed0", "mb-small-seed1"]

    # 1. start the sweep and kill -9 it as soon as one run has finished an iteration
    proc = _sweep(spec, out)
    deadline = time.monotonic() + 240
    workers = []
    while time.monotonic() < deadline and proc.poll() is None:
        workers = _descendants(proc.pid) or workers
        if any((out / it.name / rd.METRICS).is_file() for it in items):
            break
        time.sleep(0.05)
    assert proc.poll() is None, proc.communicate()[0]
    os.kill(proc.pid, signal.SIGKILL)
    proc.communicate()
    assert not (out / "summary.csv").exists()  # it died mid-sweep
    for w in workers:  # the workers die with the sweep (and a straggler could not touch a run: run locks)
        try:
            w.wait(timeout=30)
        except Exception:  # noqa: BLE001 - psutil.TimeoutExpired: clean up, the test goes on
            w.kill()
    done_iterations = sum(len(rd.read_metrics_csv(out / it.name / rd.METRICS)) for it in items
                          if (out / it.name / rd.METRICS).is_file())
    assert 1 <= done_iterations < 3 * len(items)
    had_checkpoint = {it.name: (out / it.name / rd.CHECKPOINT).is_file() for it in items}

    # 2. the same sweep again (on an already running cluster): finishes every run, resuming the started ones
    code, log = _sweep_here(spec, out, scheduler_address)
    assert code == 0, log
    summary = _summary(out)
    assert set(summary) == {it.name for it in items}
    for it in items:
        row = summary[it.name]
        assert row["status"] == ("resumed and finished" if had_checkpoint[it.name] else "finished"), row
        assert int(row["iterations"]) == 3 and float(row["forward_kld"]) > 0 and int(row["evals_total"]) > 0
    assert "forward KLD" in log and "summary.csv" in log

    # 3. the same runs one by one, in this process, give the same numbers
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for it in items:
            single = tmp_path / "single" / it.name
            run = open_run(single, it.config, it.overrides, it.seed, resume=False).runner
            run.run()
            a = rd.read_metrics_csv(out / it.name / rd.METRICS)
            b = rd.read_metrics_csv(single / rd.METRICS)
            assert [{k: v for k, v in r.items() if k not in TIMING} for r in a] == \
                   [{k: v for k, v in r.items() if k not in TIMING} for r in b], it.name
            np.testing.assert_array_equal(np.load(out / it.name / rd.PMF)["pmf_kT"], np.load(single / rd.PMF)["pmf_kT"])
            assert float(summary[it.name]["forward_kld"]) == pytest.approx(b[-1]["forward_kld"], rel=1e-12)
            assert int(summary[it.name]["evals_total"]) == run.state.counter.total
    finally:
        torch.set_num_threads(threads)

    # 4. once more: everything is recognized as finished and nothing is recomputed
    stamps = {it.name: (out / it.name / rd.CHECKPOINT).stat().st_mtime_ns for it in items}
    code, log = _sweep_here(spec, out, scheduler_address)
    assert code == 0, log
    assert {r["status"] for r in _summary(out).values()} == {"already finished"}
    assert stamps == {it.name: (out / it.name / rd.CHECKPOINT).stat().st_mtime_ns for it in items}


@pytest.mark.parametrize("spec_text, message", [
    ("runs: [mb]\nseed: [1]\n", "invalid sweep spec {spec}: seed: unknown key"),
    ("runs: [{config: mb, sett: [a=1]}]\n", "invalid sweep spec {spec}: runs.0.sett: unknown key"),
    ("runs: [nosuch]\n", "sweep run 'nosuch': 'nosuch' is neither a config file nor a preset"),
    ("runs: [missing.yaml]\n", "sweep run 'missing.yaml': config file not found: missing.yaml"),
    ("runs: [mb]\nset: [ensemble.epohcs=3]\n", "sweep run mb-seed0: invalid config: ensemble.epohcs: unknown key"),
    ("runs: [mb, mb]\n", "sweep runs share the directory name 'mb-seed0'"),
    ("runs: [mb]\ncluster: {scheduler: 'not an address'}\n", "invalid sweep spec {spec}: cluster.scheduler: "),
])
def test_bad_spec_is_a_one_line_error_and_writes_nothing(tmp_path, spec_text, message):
    spec = tmp_path / "s.yaml"
    spec.write_text(spec_text)
    out = tmp_path / "out"
    res = CliRunner().invoke(app, ["sweep", str(spec), "--out", str(out)])
    assert res.exit_code == 2, res.output
    lines = res.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: " + message.format(spec=spec)), res.output
    assert not out.exists()


def test_missing_spec_unreachable_scheduler_and_foreign_directory(tmp_path):
    runner = CliRunner()
    res = runner.invoke(app, ["sweep", str(tmp_path / "none.yaml"), "--out", str(tmp_path / "o")])
    assert res.exit_code == 2 and res.output.strip() == f"error: sweep spec not found: {tmp_path / 'none.yaml'}"
    spec = tmp_path / "s.yaml"
    spec.write_text("runs: [mb]\n")
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "keep.txt").write_text("mine")
    res = runner.invoke(app, ["sweep", str(spec), "--out", str(foreign)])
    assert res.exit_code == 2 and "is not a sweep directory" in res.output
    assert sorted(p.name for p in foreign.iterdir()) == ["keep.txt"]
    res = runner.invoke(app, ["sweep", str(spec), "--out", str(tmp_path / "o"), "--scheduler", "bad address"])
    assert res.exit_code == 2 and res.output.startswith("error: scheduler must be 'local' or an address")
    assert not (tmp_path / "o").exists()
