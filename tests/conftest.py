import os
import subprocess
import sys

import numpy as np
import pytest
import torch


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    np.random.seed(0)


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """A fresh cgflow cache directory ($CGFLOW_CACHE_DIR) for the tests of one module."""
    mp = pytest.MonkeyPatch()
    path = tmp_path_factory.mktemp("cgflow-cache")
    mp.setenv("CGFLOW_CACHE_DIR", str(path))
    yield path
    mp.undo()


def cgflow_command(*args) -> list[str]:
    """The argv of `python -m cgflow.cli ARGS` with this interpreter (for run_cgflow, or a Popen of one's own)."""
    return [sys.executable, "-m", "cgflow.cli", *args]


def cgflow_env(env=None, *, extra_env=None, without_thread_vars=False) -> dict | None:
    """The environment of a CLI subprocess: ``env`` (default: this process's), without the thread variables
    (OMP_NUM_THREADS ..., which scripts/test.sh sets) if asked, then ``extra_env`` on top.  None (inherit)
    when nothing is asked."""
    if env is None and extra_env is None and not without_thread_vars:
        return None
    from cgflow.core.threads import THREAD_ENV_VARS

    e = dict(os.environ if env is None else env)
    if without_thread_vars:
        e = {k: v for k, v in e.items() if k not in THREAD_ENV_VARS}
    e.update(extra_env or {})
    return e


def run_cgflow(*args, cwd=None, env=None, extra_env=None, without_thread_vars=False,
               timeout=600) -> subprocess.CompletedProcess:
    """`python -m cgflow.cli ARGS` in a subprocess (text output captured), as a user types it.

    ``env``: the whole environment (default: inherited); ``extra_env``: variables set on top of it (e.g.
    ``{"OMP_NUM_THREADS": "1"}``); ``without_thread_vars``: drop the thread variables first (to test the
    CLI's own thread default).  Imported by the CLI tests (``from conftest import run_cgflow``)."""
    return subprocess.run(cgflow_command(*args), capture_output=True, text=True, cwd=cwd, timeout=timeout,
                          env=cgflow_env(env, extra_env=extra_env, without_thread_vars=without_thread_vars))
