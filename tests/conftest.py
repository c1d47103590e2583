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
