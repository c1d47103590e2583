"""The CLI-subprocess helpers of conftest.py: the environment they hand to `python -m cgflow.cli`."""

import os

from cgflow.core.threads import THREAD_ENV_VARS
from conftest import cgflow_command, cgflow_env, run_cgflow


def test_env_is_inherited_unless_something_is_asked():
    assert cgflow_env() is None


def test_extra_env_goes_on_top_of_this_process_environment(monkeypatch):
    monkeypatch.setenv("CGFLOW_HELPER_PROBE", "a")
    e = cgflow_env(extra_env={"OMP_NUM_THREADS": "3"})
    assert e["CGFLOW_HELPER_PROBE"] == "a" and e["OMP_NUM_THREADS"] == "3"
    assert cgflow_env({"X": "1"}, extra_env={"Y": "2"}) == {"X": "1", "Y": "2"}


def test_without_thread_vars_drops_them_before_extra_env(monkeypatch):
    for k in THREAD_ENV_VARS:
        monkeypatch.setenv(k, "1")
    e = cgflow_env(without_thread_vars=True)
    assert not set(THREAD_ENV_VARS) & set(e) and e["PATH"] == os.environ["PATH"]
    e = cgflow_env(without_thread_vars=True, extra_env={"OMP_NUM_THREADS": "2"})
    assert e["OMP_NUM_THREADS"] == "2" and not (set(THREAD_ENV_VARS) - {"OMP_NUM_THREADS"}) & set(e)


def test_run_cgflow_runs_the_cli_with_that_environment(tmp_path):
    assert cgflow_command("presets")[1:] == ["-m", "cgflow.cli", "presets"]
    res = run_cgflow("presets", "no-such-preset", cwd=tmp_path, extra_env={"COLUMNS": "200"}, timeout=300)
    assert res.returncode == 2 and "unknown preset 'no-such-preset'" in res.stderr
