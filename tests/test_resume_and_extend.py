"""A run killed before its first checkpoint can be started over with --resume;
a finished run can be extended through its stopping keys (the extension equals the longer run);
other config changes on --resume are refused naming the keys; `md --resume --steps` below what was
asked is an error."""

import pytest

from cgflow.config import dump_config, load_config
from cgflow.core import run_directory as rd
from cgflow.learning.run import ActiveLearningRun
from conftest import run_cgflow

SMALL = ["progress=false", "by_example.epochs=5", "by_energy.epochs_first=2", "by_energy.epochs_later=1",
         "ensemble.epochs=30", "stopping.max_iterations=1"]
TIMING = {"t_flow_s", "t_energy_s", "t_labels_s", "t_ensemble_s", "t_mc_s", "wall_time_s"}


def cgflow(*args, cwd):
    return run_cgflow(*args, cwd=cwd, extra_env={"OMP_NUM_THREADS": "1"}, timeout=600)


def small_yaml(tmp_path):
    p = tmp_path / "small.yaml"
    p.write_text("extends: mb\n" + "".join(f"# {s}\n" for s in SMALL))
    cfg = load_config("mb", SMALL)
    p.write_text(dump_config(cfg))
    return p, cfg


def no_times(rows):
    return [{k: v for k, v in r.items() if k not in TIMING} for r in rows]


@pytest.mark.slow
def test_run_killed_before_first_checkpoint_starts_over_with_resume(tmp_path):
    _, cfg = small_yaml(tmp_path)
    d = tmp_path / "r"
    d.mkdir()
    (d / rd.CONFIG).write_text(dump_config(cfg))          # what a kill before the checkpoint leaves
    (d / ".checkpoint.pt.x1y2.tmp").write_bytes(b"half")  # an interrupted atomic write
    res = cgflow("run", "mb", "--out", "r", *sum((["--set", s] for s in SMALL), []), cwd=tmp_path)
    assert res.returncode != 0
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "no checkpoint" in lines[0] and "cgflow run --resume --out r" in lines[0]
    assert sorted(p.name for p in d.iterdir()) == [".checkpoint.pt.x1y2.tmp", "config.yaml"]

    res = cgflow("run", "--resume", "--out", "r", "--no-plots", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert "starting it over" in res.stdout
    rows = rd.read_metrics_csv(d / rd.METRICS)
    assert len(rows) == 1 and (d / rd.CHECKPOINT).is_file()
    assert not (d / ".checkpoint.pt.x1y2.tmp").exists()


@pytest.mark.slow
def test_resume_without_anything_to_resume_says_how_to_start(tmp_path):
    res = cgflow("run", "--resume", "--out", "nothing", cwd=tmp_path)
    assert res.returncode != 0 and "no checkpoint" in res.stderr and "cgflow run CONFIG --out nothing" in res.stderr
    assert not (tmp_path / "nothing").exists()
    # a directory with user files and no config.yaml is never cleared
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep")
    res = cgflow("run", "--resume", "--out", "mine", cwd=tmp_path)
    assert res.returncode != 0 and (tmp_path / "mine" / "notes.txt").read_text() == "keep"


@pytest.mark.slow
def test_finished_run_extends_through_stopping_keys_to_the_longer_run(tmp_path):
    p, cfg = small_yaml(tmp_path)
    res = cgflow("run", str(p), "--out", "r", "--no-plots", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    d = tmp_path / "r"
    res = cgflow("run", "--resume", "--out", "r", cwd=tmp_path)
    assert res.returncode == 0 and "already finished" in res.stdout and "stopping.max_iterations=N" in res.stdout

    before = (d / rd.METRICS).read_bytes()
    res = cgflow("run", "--resume", "--out", "r", "--set", "ensemble.epochs=5", cwd=tmp_path)
    assert res.returncode != 0
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "ensemble.epochs (saved 30, given 5)" in lines[0] and "stopping" in lines[0]
    assert (d / rd.METRICS).read_bytes() == before

    res = cgflow("run", "--resume", "--out", "r", "--no-plots", "--set", "stopping.max_iterations=2", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert "extended" in res.stdout
    rows = rd.read_metrics_csv(d / rd.METRICS)
    assert [r["iteration"] for r in rows] == [1, 2]
    assert load_config(str(d / rd.CONFIG)).stopping.max_iterations == 2

    # the extension computes exactly what a run asked for 2 iterations computes
    ref = ActiveLearningRun(load_config("mb", SMALL + ["stopping.max_iterations=2"]), tmp_path / "ref")
    ref.run()
    assert no_times(rows) == no_times(rd.read_metrics_csv(tmp_path / "ref" / rd.METRICS))


def test_api_resume_with_other_config_names_the_keys(tmp_path):
    cfg = load_config("mb", SMALL)
    ActiveLearningRun(cfg, tmp_path / "r")  # initialized, checkpoint written
    other = load_config("mb", SMALL + ["sampler.threshold=0.3"])
    with pytest.raises(rd.RunDirectoryError, match=r"sampler\.threshold \(saved 0\.25, given 0\.3\)"):
        ActiveLearningRun(other, tmp_path / "r", resume=True)


@pytest.mark.slow
def test_md_resume_with_fewer_steps_is_an_error_and_more_extends(tmp_path):
    res = cgflow("md", "mb", "--out", "m", "--steps", "200", "--report-every", "100", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    res = cgflow("md", "--resume", "--out", "m", "--steps", "100", cwd=tmp_path)
    assert res.returncode != 0 and "below the 200 steps" in res.stderr
    res = cgflow("md", "--resume", "--out", "m", "--steps", "400", cwd=tmp_path)
    assert res.returncode == 0 and "400 steps" in res.stdout


def test_extension_rules(tmp_path):
    from cgflow.learning.resume import apply_extension, check_extension

    cfg = load_config("mb", SMALL)
    run = ActiveLearningRun(cfg, tmp_path / "r")
    # progress alone changes nothing but the saved config
    assert apply_extension(run, load_config("mb", SMALL + ["progress=true"])) == ""
    assert run.cfg.progress and not run.state.done
    # a run the MC finished stays finished
    from cgflow.learning.stopping import StopReason, mc_exhausted

    run.state.stop(mc_exhausted(0.25, 3000))
    msg = apply_extension(run, load_config("mb", SMALL + ["stopping.max_iterations=5"]))
    assert "another reason" in msg and run.state.done
    # a run its stopping rule finished reopens, unless the new rule is already met
    run.state.rows = [{"iteration": 1, "forward_kld": 0.01}]
    run.state.stop(StopReason("max_iterations", "reached stopping.max_iterations = 1"))
    msg = apply_extension(run, load_config("mb", SMALL + ["stopping.max_iterations=3", "stopping.kld_threshold=0.1"]))
    assert run.state.done and "already met" in msg and "forward KLD" in run.state.stop_reason
    msg = apply_extension(run, load_config("mb", SMALL + ["stopping.max_iterations=3"]))
    assert not run.state.done and "reopened after iteration 1" in msg
    with pytest.raises(Exception, match=r"flow\.hidden"):
        check_extension(tmp_path / "r", cfg, load_config("mb", SMALL + ["flow.hidden=[8]"]))
