"""The thread default, help text with defaults, full preset descriptions,
no progress bars in logs, precise messages, files readable like any tool's."""

import os
import re
import stat
from pathlib import Path

import numpy as np
import pytest

from cgflow.cli.baselines import _system_key
from cgflow.cli.run import preset_description
from cgflow.config import preset_names, preset_text
from cgflow.core.run_directory import atomic_write_text
from cgflow.core.threads import DEFAULT_THREADS, choose_threads
from conftest import run_cgflow

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--set", "by_example.epochs=2", "--set", "by_energy.epochs_first=1", "--set", "ensemble.epochs=10",
        "--set", "stopping.max_iterations=1"]


def cgflow(*args, cwd, env=None):
    # without the thread variables that scripts/test.sh sets: these tests check the CLI's own default
    return run_cgflow(*args, cwd=cwd, extra_env=env, without_thread_vars=True)


# --- point 1: threads ------------------------------------------------------------------------------
def test_choose_threads_rules():
    assert DEFAULT_THREADS == 1
    assert choose_threads(None, environ={}) == 1
    assert choose_threads(None, environ={"OMP_NUM_THREADS": "2"}) is None  # torch already follows it
    assert choose_threads(3, environ={"OMP_NUM_THREADS": "2"}) == 3
    with pytest.raises(ValueError):
        choose_threads(0, environ={})


@pytest.mark.slow
@pytest.mark.parametrize("args, env, expected", [
    ([], {}, 1),                              # the default
    (["--threads", "2"], {}, 2),              # the flag
    ([], {"OMP_NUM_THREADS": "2"}, 2),        # the environment, when no flag
])
def test_thread_default_is_applied_to_the_run(tmp_path, args, env, expected):
    res = cgflow("run", "mb", "--out", "r", "--no-plots", "--device", "cpu", *TINY, *args, cwd=tmp_path, env=env)
    assert res.returncode == 0, res.stderr
    assert f"torch threads: {expected}" in res.stdout


def test_test_script_and_ci_use_one_thread():
    for script in ("scripts/test.sh", "scripts/quickstart.sh"):
        assert re.search(r"OMP_NUM_THREADS=.*1", (ROOT / script).read_text()), script
    assert "scripts/test.sh" in (ROOT / ".ci/run").read_text()


# --- point 6: polish -------------------------------------------------------------------------------
def test_help_shows_defaults_and_no_bool_metavars(tmp_path):
    env = {"COLUMNS": "200"}
    run_help = cgflow("run", "--help", cwd=tmp_path, env=env).stdout
    assert "[default: runs/NAME-TIMESTAMP]" in run_help
    assert "<bool>" not in run_help and "--resume" in run_help and "KEY=VALUE" in run_help
    md_help = cgflow("md", "--help", cwd=tmp_path, env=env).stdout
    assert "[default: 100" in md_help and "[default: the system's]" in md_help
    assert "[default: 0]" in md_help  # --seed


def test_preset_descriptions_are_whole_sentences(tmp_path):
    for name in preset_names():
        d = preset_description(preset_text(name))
        assert d.endswith("."), (name, d)
    mb = preset_description(preset_text("mb"))
    assert mb.endswith("on 2 CPU cores.")
    listing = cgflow("presets", cwd=tmp_path, env={"COLUMNS": "200"}).stdout
    assert "minute or two on 2 CPU cores." in listing


@pytest.mark.slow
def test_no_progress_bars_when_output_is_not_a_terminal_and_outputs_line_is_true(tmp_path):
    res = cgflow("run", "mb", "--out", "r", "--no-plots", *TINY, cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert "it/s" not in res.stderr and "%|" not in res.stderr + res.stdout
    assert re.search(r"^iteration 1 \| evals", res.stdout, re.M)
    outputs = [ln for ln in res.stdout.splitlines() if ln.startswith("outputs:")][0]
    assert "kld.png" not in outputs and "pmf.png" not in outputs and "metrics.csv" in outputs


@pytest.mark.slow
def test_sample_on_missing_or_unfinished_directory(tmp_path):
    res = cgflow("sample", "nope", "--cg=-1.4,2.6", "--out", "s.pdb", cwd=tmp_path)
    assert res.returncode != 0 and "no such run directory: nope" in res.stderr and "resume" not in res.stderr
    (tmp_path / "half").mkdir()
    res = cgflow("sample", "half", "--cg=-1.4,2.6", "--out", "s.pdb", cwd=tmp_path)
    assert res.returncode != 0 and "no checkpoint.pt" in res.stderr
    assert not (tmp_path / "s.pdb").exists()


@pytest.mark.slow
def test_compare_messages(tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "ref.npz").write_text("not a numpy file")
    res = cgflow("compare", "run", "--reference", "ref.npz", "--out", "cmp", cwd=tmp_path)
    assert res.returncode != 0 and "is not an .npz file" in res.stderr and "pickle" not in res.stderr
    np.savez(tmp_path / "good.npz", edges=np.linspace(0, 1, 3), prob=np.array([0.5, 0.5]))
    (tmp_path / "cmp").mkdir()
    (tmp_path / "cmp" / "old.md").write_text("keep")
    res = cgflow("compare", "run", "--reference", "good.npz", "--out", "cmp", cwd=tmp_path)
    assert res.returncode != 0 and "--overwrite" in res.stderr
    assert (tmp_path / "cmp" / "old.md").read_text() == "keep"


def test_baseline_set_takes_system_keys_without_prefix():
    assert _system_key("cg=[phi]") == "system.cg=[phi]"
    assert _system_key("system.cg=[phi]") == "system.cg=[phi]"
    assert _system_key(" beta=0.2") == "system.beta=0.2"


def test_md_set_accepts_a_bare_system_key(tmp_path):
    res = cgflow("md", "mb", "--out", "m", "--steps", "100", "--set", "beta=0.2", cwd=tmp_path)
    assert res.returncode == 0, res.stderr


def test_run_files_are_created_0644(tmp_path):
    old = os.umask(0o022)
    try:
        atomic_write_text(tmp_path / "a.txt", "x")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "a.txt").stat().st_mode) == 0o644
