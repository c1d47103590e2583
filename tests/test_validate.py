"""`cgflow validate` (cgflow.validation): the flatness estimator recovers a known residual with a
calibrated bootstrap error bar; MD on Müller-Brown biased by its exact PMF is flat and a damaged PMF
is flagged; the CLI's files, counts, resume and bad inputs."""

import json

import numpy as np
import pytest
import torch

from cgflow.systems.muller_brown import MullerBrownSystem, exact_pmf
from cgflow.validation.biased_md import BiasedMDValidation, LearnedPMF, ValidationSettings
from cgflow.validation.flatness import coarse_index, estimate
from conftest import run_cgflow


# --- the estimator on synthetic histograms ------------------------------------------------------
def _synthetic(r_true, n_fine_per_coarse=4, walkers=40, per_walker=2000, seed=0, ceiling=10.0):
    rng = np.random.default_rng(seed)
    Bc = r_true.size
    fine_pmf = np.repeat(np.linspace(0, 6, Bc), n_fine_per_coarse)  # below the ceiling: w = 1
    edges = [np.linspace(0, 1, Bc + 1)]
    centres = np.linspace(0, 1, Bc * n_fine_per_coarse + 1)[:-1] + 0.5 / (Bc * n_fine_per_coarse)
    idx = coarse_index(centres[:, None], edges)
    p_biased = np.exp(-r_true)
    p_biased /= p_biased.sum()
    counts = rng.multinomial(per_walker, p_biased, size=walkers)
    return estimate(counts, fine_pmf, np.full(fine_pmf.size, 0.05), idx, edges, ceiling, ("s",), seed=seed)


def test_estimator_recovers_a_known_residual_with_a_calibrated_bootstrap():
    r_true = np.where(np.arange(30) < 15, 0.0, 0.7)
    hits, n = 0, 0
    for seed in range(5):
        est = _synthetic(r_true, seed=seed)
        assert est.resolved.all()
        # compare after centring the truth the same way (model-probability weights)
        rt = r_true - np.sum(est.p_model * r_true) / est.p_model.sum()
        hits += int(np.sum(np.abs(est.residual_kT - rt) <= 2 * est.residual_se_kT))
        n += r_true.size
    assert 0.88 <= hits / n <= 0.995  # nominal 0.954 at 2 sigma
    assert est.summary["consistent"] is False  # 0.7 kT step against a 0.05 kT error bar
    assert "too low" in est.summary["verdict"]  # r = F_true - F > 0: the PMF is too low there


def test_estimator_says_consistent_for_a_right_pmf():
    est = _synthetic(np.zeros(30), seed=3)
    assert est.summary["consistent"] is True
    assert est.summary["md_abs_error_kT"] < 2 * est.summary["md_noise_floor_kT"]


def test_bins_above_the_ceiling_are_expected_less_often():
    # two coarse bins, the second 3 kT over the ceiling: a right PMF gives counts in ratio e^-3
    fine = np.array([0.0, 0.0, 13.0, 13.0])
    idx = np.array([0, 0, 1, 1])
    counts = np.tile(np.array([[100000, int(100000 * np.exp(-3.0))]]), (10, 1))
    est = estimate(counts, fine, np.full(4, 0.1), idx, [np.array([0.0, 0.5, 1.0])], 10.0, ("s",))
    assert np.allclose(est.residual_kT, 0.0, atol=1e-3)  # (a missing ceiling term would give 3 kT)


# --- biased MD on Müller-Brown with its exact PMF ----------------------------------------------
def _mb_learned_pmf(system, damage_kT=0.0, error_bar_kT=0.05):
    lo, hi = system.cg_domain[0]
    edges = np.linspace(lo, hi, 201)
    centres = 0.5 * (edges[1:] + edges[:-1])
    f = exact_pmf(tuple(centres.tolist()), system.beta)
    f = f - f.min()
    ramp = lambda s: damage_kT / (1 + np.exp(-(s + 0.5) / 0.05))  # noqa: E731  (raises s > -0.5)
    f_learned = f + ramp(centres)
    f_t = torch.as_tensor(f_learned)
    c_t = torch.as_tensor(centres)
    ys = np.linspace(-3, 5, 2001)

    def mean_kT(s):  # linear interpolation (differentiable), flat continuation outside the domain
        x = s[:, 0].clamp(c_t[0], c_t[-1])
        i = torch.clamp(torch.searchsorted(c_t, x.detach()) - 1, 0, c_t.numel() - 2)
        t = (x - c_t[i]) / (c_t[i + 1] - c_t[i])
        return f_t[i] * (1 - t) + f_t[i + 1] * t

    def sample_fg(s):  # the exact conditional of y given s, by inverse CDF on a grid; x_fg = x + y = s + 2y
        out = []
        rng = np.random.default_rng(0)
        for sv in s[:, 0].numpy():
            w = np.exp(-system.reduced_energy(torch.as_tensor(np.stack([sv + ys, ys], 1))).numpy())
            y = np.interp(rng.random(), np.cumsum(w) / w.sum(), ys)
            out.append(sv + 2 * y)
        return torch.tensor(out)[:, None], torch.ones(s.shape[0], dtype=torch.bool)

    return LearnedPMF(mean_kT=mean_kT, sample_fg=sample_fg,
                      configurations=lambda s, x: system.from_internal(s, x)[0], edges=[edges],
                      fine_pmf_kT=f_learned, fine_error_bar_kT=np.full(200, error_bar_kT), cg_names=system.cg_names,
                      cg_periodic=system.cg_periodic, cg_domain=system.cg_domain), centres, f


@pytest.mark.parametrize("damage_kT", [0.0, 1.0])
def test_mb_biased_md_is_flat_for_the_exact_pmf_and_flags_a_damaged_one(tmp_path, damage_kT):
    system = MullerBrownSystem()
    pmf, centres, f = _mb_learned_pmf(system, damage_kT)
    st = ValidationSettings(walkers=64, steps=2000, equilibration_steps=200, record_every=10, bins=24, seed=0)
    result, info = BiasedMDValidation(pmf, system.simulation_view(), tmp_path / "v", st, progress=False).run()
    assert info["evaluations"] == 64 * (1 + 2200)
    r, se, ok = result.residual_kT, result.residual_se_kT, result.resolved
    assert ok.mean() > 0.8
    xc = 0.5 * (result.coarse_edges[0][1:] + result.coarse_edges[0][:-1])
    # the true residual F_true - F_learned on the coarse bins, centred like the estimate
    fine_idx = coarse_index(centres[:, None], result.coarse_edges)
    true_fine = -(damage_kT / (1 + np.exp(-(centres + 0.5) / 0.05)))
    p = np.exp(-f)
    rt = np.bincount(fine_idx, weights=p * true_fine, minlength=r.size) / np.bincount(fine_idx, weights=p,
                                                                                         minlength=r.size)
    rt = rt - np.nansum(np.where(ok, result.p_model * rt, 0)) / result.p_model[ok].sum()
    dev = np.abs(r[ok] - rt[ok])
    assert np.mean(dev <= 3 * se[ok] + 0.05) >= 0.85, (r[ok] - rt[ok], se[ok])
    if damage_kT == 0.0:
        assert info["consistent"], info["verdict"]
        assert info["flatness_cv"] < 0.25
    else:
        assert not info["consistent"], info["verdict"]
        step = np.nanmean(r[ok & (xc > -0.2)]) - np.nanmean(r[ok & (xc < -0.8)])
        assert step == pytest.approx(-1.0, abs=0.25)


def test_validation_resumes_bit_identically(tmp_path, monkeypatch):
    system = MullerBrownSystem()
    pmf = _mb_learned_pmf(system, 0.5)[0]
    st = ValidationSettings(walkers=8, steps=600, equilibration_steps=0, record_every=10, chunk_steps=200, bins=12)
    _, full = BiasedMDValidation(pmf, system.simulation_view(), tmp_path / "a", st, progress=False).run()

    import cgflow.validation.biased_md as bm

    calls = {"n": 0}
    real = bm.atomic_torch_save

    def dying(path, obj):
        real(path, obj)
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(bm, "atomic_torch_save", dying)
    with pytest.raises(KeyboardInterrupt):
        BiasedMDValidation(pmf, system.simulation_view(), tmp_path / "b", st, progress=False).run()
    monkeypatch.setattr(bm, "atomic_torch_save", real)
    _, resumed = BiasedMDValidation(pmf, system.simulation_view(), tmp_path / "b", st, resume=True,
                                    progress=False).run()
    a, b = np.load(tmp_path / "a" / "validate.npz"), np.load(tmp_path / "b" / "validate.npz")
    assert np.array_equal(a["counts_by_chunk"], b["counts_by_chunk"])
    assert full["md_abs_error_kT"] == resumed["md_abs_error_kT"]
    with pytest.raises(ValueError, match="other settings"):
        BiasedMDValidation(pmf, system.simulation_view(), tmp_path / "b", st.model_copy(update={"seed": 5}),
                           resume=True, progress=False)


# --- the command ---------------------------------------------------------------------------------
TINY = ["--set", "by_example.epochs=2", "--set", "by_energy.epochs_first=1", "--set", "ensemble.epochs=10",
        "--set", "stopping.max_iterations=1"]


@pytest.fixture(scope="module")
def mb_run(tmp_path_factory):
    d = tmp_path_factory.mktemp("validate")
    res = run_cgflow("run", "mb", "--out", "r", "--no-plots", *TINY, cwd=d)
    assert res.returncode == 0, res.stderr
    return d / "r"


@pytest.mark.slow
def test_cli_writes_its_files_counts_evaluations_and_prints_a_verdict(mb_run):
    res = run_cgflow("validate", str(mb_run), "--steps", "400", "--walkers", "8", "--equilibration-steps", "100",
                     "--bins", "12")
    assert res.returncode == 0, res.stderr
    out = mb_run / "validate"
    info = json.loads((out / "validate.json").read_text())
    assert info["evaluations"] == 8 * 501 and f"{8 * 501:,} MD energy evaluations" in res.stdout
    assert (out / "validate.png").is_file() and (out / "validate.npz").is_file()
    assert "consistent with the run's error bar" in res.stdout
    again = run_cgflow("validate", str(mb_run), "--steps", "400")
    assert again.returncode == 2 and "exists and is not empty" in again.stderr


@pytest.mark.parametrize("args, message", [
    (["--ceiling-kT", "0"], "--ceiling-kT"),
    (["--walkers", "1"], "--walkers"),
    (["--resume", "--out", "nowhere"], "holds no interrupted validation"),
])
@pytest.mark.slow  # fast lane: over 3 s (a subprocess or a tiny run)
def test_cli_bad_input_one_line_exit_2_nothing_written(mb_run, tmp_path, args, message):
    res = run_cgflow("validate", str(mb_run), "--out", str(tmp_path / "v"), *[a if a != "nowhere" else str(tmp_path / "v")
                                                                              for a in args])
    assert res.returncode == 2 and message in res.stderr and len(res.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "v").exists()


def test_cli_refuses_a_directory_that_is_no_run(tmp_path):
    res = run_cgflow("validate", str(tmp_path))
    assert res.returncode == 2 and "not a cgflow run directory" in res.stderr


@pytest.mark.slow
def test_the_bias_of_a_run_is_on_the_zero_of_its_pmf_file(mb_run):
    from cgflow.learning.run import ActiveLearningRun
    from cgflow.validation.biased_md import learned_pmf_of_run

    run = ActiveLearningRun(None, mb_run, resume=True)
    pmf = learned_pmf_of_run(run, mb_run / "pmf.npz")
    c = 0.5 * (pmf.edges[0][1:] + pmf.edges[0][:-1])
    with torch.no_grad():
        f = pmf.mean_kT(torch.as_tensor(c[:, None]))
    assert np.allclose(f.numpy(), pmf.fine_pmf_kT, atol=1e-4)  # else the ceiling sits at the wrong height


def test_more_than_three_cg_dimensions_are_refused(tmp_path):
    system = MullerBrownSystem()
    pmf = _mb_learned_pmf(system)[0]
    pmf.cg_names = ("a", "b", "c", "d")
    with pytest.raises(ValueError, match="d <= 3"):
        BiasedMDValidation(pmf, system.simulation_view(), tmp_path / "v", ValidationSettings(), progress=False)
    assert not (tmp_path / "v").exists()


@pytest.mark.slow  # builds a 4-D torus run (~10 s)
def test_cli_refuses_a_system_without_an_md_view(tmp_path):
    import os
    import sys
    from pathlib import Path

    from cgflow.config import load_config
    from cgflow.learning.run import ActiveLearningRun

    examples = Path(__file__).resolve().parents[1] / "examples"
    sys.path.insert(0, str(examples))
    (tmp_path / "torus.yaml").write_text(
        'extends: mb\nsystem: {name: python, factory: "torus_system:make_system", '
        "kwargs: {cg_dim: 2, n_bins: 6, n_starting_chains: 4, mc_steps: 40}}\n"
        "flow: {kind: spline, n_blocks: 1, hidden: [8], n_res_blocks: 1, n_bins: 4, tail_bound: 5.0}\n")
    cfg = load_config(str(tmp_path / "torus.yaml"), ["progress=false", "by_example.epochs=1"], seed=0)
    ActiveLearningRun(cfg, tmp_path / "t2")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(examples), os.environ.get("PYTHONPATH", "")]))
    res = run_cgflow("validate", "t2", cwd=tmp_path, env=env)
    assert res.returncode == 2 and "does not support the MD baselines" in res.stderr, res.stderr
    assert len(res.stderr.strip().splitlines()) == 1 and not (tmp_path / "t2" / "validate").exists()
