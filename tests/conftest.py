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


def run_cgflow(*args, cwd=None, env=None, timeout=600) -> subprocess.CompletedProcess:
    """`python -m cgflow.cli ARGS` in a subprocess (text output captured), as a user types it.
    Imported by the CLI tests (``from conftest import run_cgflow``)."""
    return subprocess.run([sys.executable, "-m", "cgflow.cli", *args], capture_output=True, text=True, cwd=cwd,
                          timeout=timeout, env=env)
