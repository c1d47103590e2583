"""Issue 18.3: non-finite energies (and filter rejections) above a stated fraction of an iteration's draws
are warned about (iteration line, metrics.csv ``warnings``, summary), and per region: the CG points that
lost their labels are named."""

import csv
import re
import sys
from pathlib import Path

import pytest

from cgflow.config import load_config
from cgflow.learning.diagnostics import (
    NONFINITE_DRAW_FRACTION,
    nonfinite_draws_warning,
    region_draws_warning,
)
from cgflow.learning.reporters import ConsoleReporter
from cgflow.learning.run import ActiveLearningRun

sys.path.insert(0, str(Path(__file__).resolve().parent))
from double_well_system import DoubleWellSystem  # noqa: E402

FAST = ["progress=false", "by_example.epochs=2", "by_energy.epochs_first=5", "by_energy.epochs_later=5",
        "by_energy.copies_per_point=20", "by_energy.batch_size=64", "ensemble.epochs=30", "ensemble.n_models=3",
        "sampler.kind=grid_score", "sampler.n_find=2", "sampler.start=null", "acquisition.spread_radius=0.3",
        "acquisition.spread_points=40", "acquisition.n_space_filling_seed_points=16", "stopping.max_iterations=2"]
MARK = "energies evaluated this iteration were not finite"


def test_the_fraction_rule():
    n = 100_000
    assert nonfinite_draws_warning(n, int(1.2 * NONFINITE_DRAW_FRACTION * n), n, 0) is not None
    assert nonfinite_draws_warning(n, int(0.8 * NONFINITE_DRAW_FRACTION * n), n, 0) is None
    assert "rejected by the system's filter" in nonfinite_draws_warning(n, 0, 2 * n, n)
    assert nonfinite_draws_warning(0, 0, 0, 0) is None


def test_region_warning_names_the_points_that_lost_their_labels():
    import numpy as np

    pts = np.array([[0.1], [1.5], [1.7], [-0.3]])
    w = region_draws_warning(pts, ["s"], np.array([False, True, True, False]), np.array([0.0, 1, 1, 0.6]),
                             np.array([20, 20, 20, 20]))
    assert "2 CG point(s) lost their labels" in w and "s=1.5, s=1.7" in w
    assert "1 CG point(s) had more than 50%" in w and "s=-0.3" in w
    assert region_draws_warning(pts, ["s"], np.zeros(4, bool), np.zeros(4), np.full(4, 20)) is None


def _run(tmp_path, capsys, **kw):
    run = ActiveLearningRun(load_config("mb", FAST), tmp_path / "run", system=DoubleWellSystem(**kw),
                            reporters=[ConsoleReporter()])
    run.run()
    out = capsys.readouterr().out
    with open(tmp_path / "run" / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    return run, rows, out


@pytest.mark.parametrize("fraction", [0.01, 0.10])
def test_nan_energies_are_warned_about_every_iteration(tmp_path, capsys, fraction):
    run, rows, out = _run(tmp_path, capsys, nan_fraction=fraction)
    assert len(rows) == 2
    for r in rows:  # metrics.csv: the iteration's own share, close to the injected one
        m = re.search(r"([\d.]+)% of the [\d,]+ " + MARK, r["warnings"])
        assert m, r["warnings"]
        assert float(m.group(1)) / 100 == pytest.approx(fraction, rel=0.35)
    lines = out.splitlines()
    assert sum(1 for x in lines if x.startswith("warning:") and MARK in x) == 2  # after each iteration line
    summary = out[out.index("finished:"):]
    assert MARK in summary and "non-finite" in summary


def test_no_warning_without_nan(tmp_path, capsys):
    _, rows, out = _run(tmp_path, capsys)
    assert all(MARK not in r["warnings"] and "lost their labels" not in r["warnings"] for r in rows)


def test_a_region_without_finite_energies_names_its_points(tmp_path, capsys):
    run, rows, _ = _run(tmp_path, capsys, nan_above=1.2)
    w = rows[0]["warnings"]
    assert "lost their labels" in w, w
    named = [float(v) for v in re.findall(r"s=(-?[\d.]+)", w.split("lost their labels")[1].split("CG point")[0])]
    assert named and all(v > 1.2 for v in named)
    labelled = run.label_set().points[:, 0]
    assert float(labelled.max()) <= 1.2  # indeed no label there
