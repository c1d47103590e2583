"""Progress bars: drawn only when asked for and when stderr can show them (issue 18, point 5)."""

from __future__ import annotations

import io
import sys

import pytest

from cgflow.core.progress import bars_disabled


class _TTY(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_no_bars_when_stderr_is_not_a_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "stderr", io.StringIO())
    monkeypatch.delitem(sys.modules, "IPython", raising=False)
    assert bars_disabled(True) is True


def test_bars_on_a_terminal_unless_progress_is_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "stderr", _TTY())
    assert bars_disabled(True) is False
    assert bars_disabled(False) is True


def test_ensemble_fit_writes_no_bar_to_a_log(monkeypatch: pytest.MonkeyPatch) -> None:
    """The Python API with progress=True writes no tqdm redraws into a non-terminal stderr; on a tty it does."""
    import numpy as np
    import torch

    from cgflow.core.features import CGFeatures
    from cgflow.pmf.ensemble import FitOptions, PMFEnsemble

    monkeypatch.delitem(sys.modules, "IPython", raising=False)
    s = torch.linspace(-1, 1, 32, dtype=torch.float64)[:, None]
    f = s[:, 0] ** 2
    for stream, expect_bar in ((io.StringIO(), False), (_TTY(), True)):
        monkeypatch.setattr(sys, "stderr", stream)
        ens = PMFEnsemble(CGFeatures((False,)), 2, [4], "tanh")
        ens.fit(s, f, FitOptions(epochs=3, batch_size=16, lr=1e-3, progress=True), rng=np.random.default_rng(0))
        assert ("ensemble" in stream.getvalue()) is expect_bar
