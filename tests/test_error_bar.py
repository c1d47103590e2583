"""The run's error bar (cgflow.pmf.error_bar): each part does what its docstring says, it grows
where nothing was labelled, and the calibration figures are right on known answers."""

import numpy as np
import pytest

from cgflow.learning.diagnostics import unlabelled_mass_warning
from cgflow.learning.stopping import Stopping
from cgflow.pmf.error_bar import ErrorBarInputs, actual_error, error_bar_per_bin, predicted_abs_error


def _inputs(label_points, residual2, mean=None, std=None, periodic=False, n=200):
    edges = [np.linspace(-1.0, 1.0, n + 1)]
    grid = (0.5 * (edges[0][1:] + edges[0][:-1]))[:, None]
    mean = np.zeros(n) if mean is None else mean
    std = np.zeros(n) if std is None else std
    return ErrorBarInputs(grid=grid, grid_shape=(n,), edges=edges, mean_kT=mean, std_kT=std,
                          label_points=np.asarray(label_points, float).reshape(-1, 1),
                          label_residual2_kT2=np.asarray(residual2, float), periodic=np.array([periodic]),
                          domain=np.array([[-1.0, 1.0]]))


def test_label_noise_term_is_the_knn_average_variance():
    rng = np.random.default_rng(0)
    pts = rng.uniform(-1, 1, 400)
    eb = error_bar_per_bin(_inputs(pts, np.full(400, 0.25)), k=25)  # residual sd 0.5 kT
    assert np.allclose(eb.label_noise_kT, 0.5 / np.sqrt(25))
    assert np.allclose(eb.error_bar_kT, eb.label_noise_kT)  # no std, no extrapolation inside the data


def test_error_bar_grows_where_no_label_was_placed():
    # labels only in the left half; a PMF with slope 3 kT per unit everywhere
    rng = np.random.default_rng(1)
    pts = rng.uniform(-1, 0, 300)
    grid_x = np.linspace(-1, 1, 201)[:-1] + 0.005
    eb = error_bar_per_bin(_inputs(pts, np.full(300, 0.01), mean=3.0 * grid_x))
    assert eb.slope_kT == pytest.approx(3.0, rel=1e-6)
    right = grid_x > 0.5
    # distance to the nearest label >= x - max(label); extrapolation = slope x (distance - reach)
    floor = 3.0 * (grid_x[right] - pts.max() - eb.reach)
    assert eb.reach < 0.1
    assert np.all(eb.error_bar_kT[right] >= floor - 1e-9)
    assert np.all(eb.error_bar_kT[right] > 1.2)            # ~1.5 kT at x = 0.5, 3 kT at x = 1
    assert np.all(eb.error_bar_kT[grid_x < -0.1] < 0.05)
    assert np.all(np.diff(eb.error_bar_kT[grid_x > 0.1]) > 0)  # grows with the distance


def test_periodic_distance_wraps():
    pts = np.array([-0.99, -0.98, 0.99, 0.98])
    eb = error_bar_per_bin(_inputs(pts, np.zeros(4), periodic=True), k=2)
    assert eb.distance_to_labels.max() < 1.01  # the farthest bin is ~1 away across the wrap, not ~2


def test_actual_error_and_coverage_on_a_known_answer():
    rng = np.random.default_rng(2)
    n = 20000
    f_ref = rng.uniform(0, 3, n)
    p_ref = np.exp(-f_ref) / np.exp(-f_ref).sum()
    sigma = np.full(n, 0.2)
    mean = f_ref + 5.0 + rng.normal(0, 0.2, n)  # calibrated Gaussian errors and an arbitrary offset
    out = actual_error(mean, p_ref, sigma)
    assert out["abs_err_ref_weighted_kT"] == pytest.approx(0.2 * np.sqrt(2 / np.pi), rel=0.03)
    assert out["coverage_1sigma"] == pytest.approx(0.683, abs=0.02)
    assert out["coverage_2sigma"] == pytest.approx(0.954, abs=0.01)
    assert predicted_abs_error(mean, sigma) == pytest.approx(out["abs_err_ref_weighted_kT"], rel=0.03)
    over = actual_error(mean, p_ref, sigma / 4)  # a 4x over-confident bar is caught
    assert over["coverage_1sigma"] < 0.25


def test_unlabelled_mass_warning_fires_only_with_mass_far_from_labels():
    rng = np.random.default_rng(3)
    grid_x = np.linspace(-1, 1, 201)[:-1] + 0.005
    eb = error_bar_per_bin(_inputs(rng.uniform(-1, 0, 300), np.full(300, 0.01), mean=np.zeros(200)))
    w = unlabelled_mass_warning(np.zeros(200), grid_x, eb, ["s"])
    assert w is not None and "no CG point was labelled" in w
    assert unlabelled_mass_warning(np.where(grid_x > 0, 30.0, 0.0), grid_x, eb, ["s"]) is None


class _Cfg:
    kld_threshold = None
    std_target_kT = 0.1
    error_bar_target_kT = 0.05
    region_error_bar_kT = 1.0
    max_iterations = 10


def test_stopping_on_the_error_bar_is_vetoed_by_an_unresolved_low_free_energy_region():
    stop = Stopping(_Cfg())
    assert stop.check(3, {"error_bar_kT": 0.04, "error_bar_max_low_F_kT": 0.5}).kind == "error_bar_target"
    assert stop.check(3, {"error_bar_kT": 0.04, "error_bar_max_low_F_kT": 4.7}) is None
    assert stop.check(3, {"boltzmann_std_kT": 0.01, "error_bar_max_low_F_kT": 4.7}) is None
    assert stop.check(10, {"error_bar_kT": 0.04, "error_bar_max_low_F_kT": 4.7}).kind == "max_iterations"
