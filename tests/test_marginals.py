"""2-D marginals of CG spaces with d > 2: quasi-MC marginals against exact ones, pairs,
marginal reference files, `cgflow compare` and `cgflow reference` on marginals."""

import json
import sys
from itertools import combinations
from pathlib import Path

import numpy as np
import pytest
import torch

from cgflow.analysis.marginals import (
    MarginalReferencePMF,
    histogram_marginals,
    marginal_accuracy,
    marginal_pmfs,
    marginals_of_reference,
    resolve_pairs,
)
from cgflow.core.system import ReferencePMF
from cgflow.pmf.reference_file import ReferenceFileError, load_reference, save_marginal_reference

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
from torus_system import TorusSystem, exact_pmf_kT  # noqa: E402


@pytest.fixture(scope="module")
def torus4():
    s = TorusSystem(cg_dim=4, n_bins=24)
    return s, s.reference()


def _exact(x):
    return torch.as_tensor(exact_pmf_kT(x.numpy()))


@pytest.mark.slow  # fast lane: over 3 s (a subprocess or a tiny run)
def test_quasi_mc_marginals_of_the_exact_pmf_match_the_exact_marginals(torus4):
    system, ref = torus4
    names = system.cg_names
    coarse = marginal_accuracy(ref, marginal_pmfs(_exact, ref.edges, system.cg_domain, ref.pairs, n_points=256),
                               names)
    fine = marginal_accuracy(ref, marginal_pmfs(_exact, ref.edges, system.cg_domain, ref.pairs, n_points=4096),
                             names)
    # what remains at 4096 points is the bin-centre vs bin-average difference of the 24-bin grid
    assert fine["forward_kld"] < 2e-4
    assert coarse["forward_kld"] < 3e-3
    assert fine["marginal_integration_error_kld"] < coarse["marginal_integration_error_kld"]
    # the stated integration error is of the right order: the actual error minus the grid floor
    actual = coarse["forward_kld"] - fine["forward_kld"]
    assert coarse["marginal_integration_error_kld"] / 10 < actual < 10 * coarse["marginal_integration_error_kld"]
    # a PMF without the FG terms (a flow that ignored its context) is far off
    from torus_system import f0

    wrong = marginal_accuracy(ref, marginal_pmfs(lambda x: f0(x), ref.edges, system.cg_domain, ref.pairs,
                                                 n_points=256), names)
    assert wrong["forward_kld"] > 30 * coarse["forward_kld"]


def test_two_dimensional_space_has_nothing_to_integrate():
    system = TorusSystem(cg_dim=2, n_bins=20)
    ref = system.reference()
    m = marginal_pmfs(_exact, ref.edges, system.cg_domain, [(0, 1)], n_points=64)
    assert m.integration_error_kld == [0.0]
    c = [0.5 * (e[1:] + e[:-1]) for e in ref.edges]
    mesh = np.stack(np.meshgrid(*c, indexing="ij"), -1)
    f = exact_pmf_kT(mesh)
    np.testing.assert_allclose(m.pmf_kT[0], f - f.min(), atol=1e-12)


def test_marginals_of_a_full_reference_sum_out_the_other_axes():
    rng = np.random.default_rng(1)
    p = rng.random((5, 6, 7))
    p /= p.sum()
    edges = [np.linspace(0, 1, n + 1) for n in p.shape]
    m = marginals_of_reference(ReferencePMF(edges, p), [(0, 2), (2, 1)])
    np.testing.assert_allclose(m.prob_of((0, 2)), p.sum(1))
    np.testing.assert_allclose(m.prob_of((2, 1)), p.sum(0).T)
    np.testing.assert_allclose(m.prob_of((1, 2)), p.sum(0))
    with pytest.raises(KeyError):
        m.prob_of((0, 1))


def test_resolve_pairs():
    names = ("phi:2", "psi:2", "phi:3", "psi:3")
    assert resolve_pairs(None, names) == list(combinations(range(4), 2))
    assert resolve_pairs([["phi:2", "psi:2"], [1, 2]], names) == [(0, 1), (1, 2)]
    for bad, needle in (([["phi:2", "chi"]], "unknown coordinate 'chi'"), ([[0, 0]], "twice"),
                        ([[0, 1], [1, 0]], "listed twice"), ([[0, 7]], "outside 0..3"), ([], "empty"),
                        ([[0, 1, 2]], "two coordinates")):
        with pytest.raises(ValueError, match=needle):
            resolve_pairs(bad, names)


def test_marginal_reference_file_round_trip_and_errors(tmp_path, torus4):
    _, ref = torus4
    path = save_marginal_reference(tmp_path / "ref.npz", ref.edges[0], ref.pairs, ref.probs, 4, {"method": "exact"})
    back = load_reference(path, cg_dim=4)
    assert isinstance(back, MarginalReferencePMF) and back.pairs == ref.pairs and back.cg_dim == 4
    for a, b in zip(back.probs, ref.probs):
        np.testing.assert_allclose(a, b, rtol=1e-12)
    with pytest.raises(ReferenceFileError, match="4-dimensional CG space, the run has 6"):
        load_reference(path, cg_dim=6)
    np.savez(tmp_path / "bad.npz", edges=ref.edges[0], marginal_pairs=np.array([[0, 1]]),
             marginal_prob=np.stack(ref.probs[:2]), cg_dim=4)
    with pytest.raises(ReferenceFileError, match="do not match"):
        load_reference(tmp_path / "bad.npz")
    np.savez(tmp_path / "bad2.npz", edges=ref.edges[0], marginal_pairs=np.array([[0, 4]]),
             marginal_prob=np.stack(ref.probs[:1]), cg_dim=4)
    with pytest.raises(ReferenceFileError, match="distinct indices in 0..3"):
        load_reference(tmp_path / "bad2.npz")


def _fake_md_run(run_dir: Path, x: np.ndarray, domain):
    """An MD run directory as `cgflow md` writes it, CG trajectory x (frames, R, d)."""
    (run_dir / "cg_trajectory").mkdir(parents=True)
    n = x.shape[0] // 2
    np.save(run_dir / "cg_trajectory" / "00000.npy", x[:n])
    np.save(run_dir / "cg_trajectory" / "00001.npy", x[n:])
    info = {"method": "md", "n_chunks": 2, "report_every_steps": 10, "n_replicas": x.shape[1], "cg_dim": x.shape[2],
            "cg_domain": domain, "cg_names": [f"s{i + 1}" for i in range(x.shape[2])], "evaluations": 10 * x.size,
            "system": "fake", "steps_done": 10 * x.shape[0], "timestep_fs": 1.0, "temperature_K": 300.0}
    (run_dir / "md.json").write_text(json.dumps(info))


def test_compare_and_reference_on_marginals(tmp_path):
    """Samples of a known 3-D density: the MD curve's mean marginal KLD falls toward 0; `cgflow reference`
    from the run writes a marginal reference with a noise floor; snapshots equal to the exact marginals
    have KLD ~ 0, and snapshots off the reference bins are refused."""
    from cgflow.analysis.compare import kld_curve_from_md, kld_curve_from_snapshots
    from cgflow.baselines.reference import reference_from_run
    from cgflow.pmf.history import PMFSnapshot

    rng = np.random.default_rng(0)
    d, nb = 3, 12
    cov = np.array([[1.0, 0.6, 0.0], [0.6, 1.0, 0.3], [0.0, 0.3, 1.0]]) * 0.5
    x = rng.multivariate_normal(np.zeros(d), cov, size=(4000, 4))
    x = np.clip(x, -2.999, 2.999)
    edges = np.linspace(-3, 3, nb + 1)
    pairs = list(combinations(range(d), 2))
    # the "exact" marginals of the clipped density: a histogram of many more samples
    big = np.clip(rng.multivariate_normal(np.zeros(d), cov, size=2_000_000), -2.999, 2.999)
    ref = MarginalReferencePMF(pairs, [edges] * d, histogram_marginals(big, [edges] * d, pairs), d)
    _fake_md_run(tmp_path / "md", x, [[-3.0, 3.0]] * d)
    curve = kld_curve_from_md(tmp_path / "md", ref, n_points=10)
    assert curve.forward_kld[-1] < 0.02 and curve.forward_kld[-1] < 0.1 * curve.forward_kld[0]
    assert curve.evaluations[-1] == 4000 * 10 * 4

    meta = reference_from_run(tmp_path / "md", tmp_path / "ref.npz", n_bins=nb)
    back = load_reference(tmp_path / "ref.npz")
    assert back.pairs == pairs and 0 < meta["noise_floor_forward_kld"] < 0.05
    np.testing.assert_allclose(back.prob_of((0, 1)), histogram_marginals(x.reshape(-1, d), [edges] * d, [(0, 1)])[0])

    with np.errstate(divide="ignore"):
        exact = np.stack([-np.log(np.maximum(p, 1e-300)) for p in ref.probs])
    snap = PMFSnapshot(edges=[edges] * d, pmf_kT=np.zeros((2,) * d), evaluations=5, label="s",
                       marginal_pairs=pairs, marginal_pmf_kT=exact, marginal_edges=[edges] * d)
    c = kld_curve_from_snapshots([snap], ref, "snap")
    assert c.forward_kld[0] < 1e-6
    # a snapshot with a subset of the pairs is measured on the pairs it has; one with none is refused
    wrong = exact.copy()
    wrong[1] = 0.0  # a flat (0, 2) marginal
    sub = PMFSnapshot(edges=[edges] * d, pmf_kT=np.zeros((2,) * d), evaluations=5, label="sub",
                      marginal_pairs=[(0, 2)], marginal_pmf_kT=wrong[1:2], marginal_edges=[edges] * d)
    c = kld_curve_from_snapshots([sub], ref, "sub")
    assert c.forward_kld[0] == pytest.approx(kld_curve_from_snapshots(
        [PMFSnapshot([edges] * d, np.zeros((2,) * d), 5, "x", marginal_pairs=[(0, 2), (0, 1)],
                     marginal_pmf_kT=wrong[[1, 0]], marginal_edges=[edges] * d)],
        ref, "x").forward_kld[0] * 2, rel=1e-5)
    sub.marginal_pairs = [(5, 6)]
    with pytest.raises(ValueError, match="none of the reference's CG pairs"):
        kld_curve_from_snapshots([sub], ref, "sub")
    snap.marginal_edges = [np.linspace(-2, 2, nb + 1)] * d
    with pytest.raises(ValueError, match="not on the reference bins"):
        kld_curve_from_snapshots([snap], ref, "snap")


@pytest.mark.slow
def test_importance_sampled_marginals_are_unbiased(torus4):
    """The defensive-mixture importance sampling around centres converges to the exact marginals too
    (centres deliberately in one corner of the torus: the uniform part keeps it unbiased)."""
    system, ref = torus4
    centres = np.random.default_rng(0).uniform(-np.pi, -1.0, size=(50, 4))
    m = marginal_pmfs(_exact, ref.edges, system.cg_domain, ref.pairs, n_points=8192, periodic=system.cg_periodic,
                      centres=centres)
    acc = marginal_accuracy(ref, m, system.cg_names)
    assert acc["forward_kld"] < 1e-3 and acc["marginal_integration_error_kld"] < 1e-3

