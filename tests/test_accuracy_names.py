"""Every accuracy figure says what it averages over.  Checked on the exact
Müller-Brown PMF (quadrature), where the answers are known by construction."""

from pathlib import Path

import numpy as np
import pytest

from cgflow.analysis.compare import kld_curve_from_snapshots
from cgflow.analysis.metrics import LOW_FREE_ENERGY_KT, pmf_errors, pmf_rmse, reference_pmf_kT
from cgflow.config import load_config
from cgflow.learning.reporters import _fmt_row, accuracy_lines
from cgflow.pmf.history import PMFSnapshot
from cgflow.systems import build_system


@pytest.fixture(scope="module")
def mb_ref():
    return build_system(load_config("mb").system).reference()


def test_exact_pmf_shifted_has_zero_error_everywhere(mb_ref):
    f = reference_pmf_kT(mb_ref.prob) + 4.2
    e = pmf_errors(mb_ref.prob, f, np.full_like(f, 0.1))
    assert e["pmf_rmse_weighted_kT"] < 1e-9 and e["pmf_rmse_unweighted_kT"] < 1e-9
    assert e["pmf_max_abs_error_kT"] < 1e-9 and e["coverage"] == pytest.approx(1.0)
    assert e["ensemble_std_mean_kT"] == pytest.approx(0.1)


def test_flattened_barrier_weighted_hides_what_unweighted_shows(mb_ref):
    """Cap the exact MB PMF at 4 kT (a barrier flattened into a plateau): the weighted RMSE barely
    sees it, the unweighted RMSE and the largest error over F_ref < 10 kT do."""
    f_ref = reference_pmf_kT(mb_ref.prob)
    assert f_ref.max() > LOW_FREE_ENERGY_KT  # part of the domain is outside the region
    capped = np.minimum(f_ref, 4.0)
    e = pmf_errors(mb_ref.prob, capped)
    # independent computation over the region, with its own optimal (mean) shift
    region = f_ref < LOW_FREE_ENERGY_KT
    diff = capped[region] - f_ref[region]
    diff = diff - diff.mean()
    assert e["pmf_rmse_unweighted_kT"] == pytest.approx(np.sqrt(np.mean(diff**2)), rel=1e-12)
    assert e["pmf_max_abs_error_kT"] == pytest.approx(np.abs(diff).max(), rel=1e-12)
    assert e["pmf_rmse_weighted_kT"] == pytest.approx(pmf_rmse(mb_ref.prob, capped), rel=1e-12)
    assert e["pmf_max_abs_error_kT"] > 3.0  # the barrier region is off by several kT
    assert e["pmf_rmse_weighted_kT"] < 0.5 * e["pmf_rmse_unweighted_kT"]


def test_std_at_max_error_and_overconfidence_is_visible(mb_ref):
    f_ref = reference_pmf_kT(mb_ref.prob)
    model = f_ref.copy()
    region = np.flatnonzero(f_ref < LOW_FREE_ENERGY_KT)
    j = region[len(region) // 2]
    model[j] += 2.0
    std = np.full_like(model, 0.05)
    std[j] = 0.07
    e = pmf_errors(mb_ref.prob, model, std)
    assert e["ensemble_std_at_max_error_kT"] == pytest.approx(0.07)
    assert e["pmf_max_abs_error_kT"] == pytest.approx(2.0 * (1 - 1 / len(region)), rel=1e-9)


def test_coverage_counts_unvisited_bins(mb_ref):
    """A model without a PMF in half of the bins (MD before it crossed): coverage is the reference
    mass of the other half, and the errors run over the covered bins only."""
    f_ref = reference_pmf_kT(mb_ref.prob)
    model = f_ref.copy()
    half = np.arange(model.size) >= model.size // 2
    model[half] = np.inf
    e = pmf_errors(mb_ref.prob, model)
    assert e["coverage"] == pytest.approx(mb_ref.prob[~half].sum() / mb_ref.prob.sum())
    assert 0 < e["coverage"] < 1
    assert e["pmf_rmse_unweighted_kT"] < 1e-9


def test_compare_reports_coverage_beside_the_rmse(mb_ref):
    f_ref = reference_pmf_kT(mb_ref.prob)
    model = f_ref.copy()
    model[model.size // 2:] = np.inf
    curve = kld_curve_from_snapshots([PMFSnapshot(mb_ref.edges, model, 10, "half")], mb_ref, "x")
    assert curve.coverage[0] < 1 and curve.pmf_rmse_weighted_kT[0] < 1e-9
    assert curve.pmf_rmse_unweighted_kT[0] < 1e-9 and curve.pmf_max_abs_error_kT[0] < 1e-9


def test_snapshot_with_same_bin_count_but_other_edges_says_edges_differ(mb_ref):
    edges = [mb_ref.edges[0] + 0.01]
    with pytest.raises(ValueError, match="different bin edges"):
        kld_curve_from_snapshots([PMFSnapshot(edges, reference_pmf_kT(mb_ref.prob), 10, "s")], mb_ref, "x")


def test_console_and_summary_name_each_figure():
    row = {"iteration": 3, "evals_total": 1000, "n_points_total": 50, "wall_time_s": 1.0, "forward_kld": 1e-3,
           "pmf_rmse_weighted_kT": 0.03, "pmf_rmse_unweighted_kT": 0.09, "pmf_max_abs_error_kT": 0.25,
           "ensemble_std_mean_kT": 0.05, "ensemble_std_at_max_error_kT": 0.04}
    line = _fmt_row(row)
    assert "ref-weighted 0.030" in line and "unweighted 0.090" in line and "max err 0.25" in line and "std" in line
    text = "\n".join(accuracy_lines(row))
    assert "weighted by the reference probability [pmf_rmse_weighted_kT] = 0.030 kT" in text
    assert "F_ref < 10 kT" in text and "largest [pmf_max_abs_error_kT] = 0.250 kT" in text
    assert "at the largest error [ensemble_std_at_max_error_kT] = 0.040 kT" in text


def test_run_metrics_have_the_named_columns(tmp_path):
    from cgflow.learning.run import ActiveLearningRun

    cfg = load_config("mb", ["progress=false", "by_example.epochs=5", "by_energy.epochs_first=2",
                             "ensemble.epochs=30", "stopping.max_iterations=1"])
    run = ActiveLearningRun(cfg, tmp_path / "r")
    row = run.step()
    for k in ("forward_kld", "pmf_rmse_weighted_kT", "pmf_rmse_unweighted_kT", "pmf_max_abs_error_kT",
              "ensemble_std_mean_kT", "ensemble_std_at_max_error_kT", "warnings"):
        assert k in row, k
    assert row["pmf_max_abs_error_kT"] >= row["pmf_rmse_unweighted_kT"] > 0
    from cgflow.analysis.plotting import plot_run

    assert [p.name for p in plot_run(tmp_path / "r")] == ["pmf.png", "kld.png"]
    # issue 18.4: every figure of the summary names its metrics.csv column, with the value recorded there,
    # and docs/method.md explains each of those columns
    import csv
    import re

    from cgflow.learning.reporters import error_bar_lines

    with open(tmp_path / "r" / "metrics.csv") as f:
        saved = list(csv.DictReader(f))[-1]
    text = "\n".join(accuracy_lines(row) + error_bar_lines(row))
    named = re.findall(r"\[(\w+)\] = (-?[\d.e+-]+)", text)
    assert {"forward_kld", "pmf_rmse_weighted_kT", "error_bar_kT", "abs_err_ref_weighted_kT"} <= {n for n, _ in named}
    method = (Path(__file__).resolve().parents[1] / "docs" / "method.md").read_text()
    for name, value in named:
        assert name in saved, name
        assert float(value) == pytest.approx(float(saved[name]), rel=5e-3, abs=6e-3), name
        assert f"`{name}`" in method, f"docs/method.md does not explain {name}"
    # the model-weighted figure and the reference-weighted one say which weights they use
    assert "weighted by the model's probability [error_bar_kT]" in text
    assert "weighted by the reference probability [abs_err_ref_weighted_kT]" in text
