"""`cgflow opes` (OPES / OPES-explore through openmm-opes): the FES of the 1-D Müller-Brown coordinate
against its exact PMF, bit-exact resume, one-line errors for bad input with nothing written."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from cgflow.analysis.metrics import forward_kld, probabilities_from_pmf
from cgflow.baselines.opes import OPES_JSON, OpesRun, OpesSettings, default_settings
from cgflow.cli import app as cli_app
from cgflow.pmf.history import read_history
from cgflow.systems.muller_brown import MullerBrownSystem


@pytest.fixture(scope="module")
def mb():
    return MullerBrownSystem()


def _errors(pmf_kT: np.ndarray, ref_prob: np.ndarray, below_kT: float = 8.0) -> tuple[float, float, float]:
    """Forward KLD, and RMSE / largest error (kT, best constant shift) where F_ref < below_kT."""
    r = -np.log(ref_prob)
    r -= r.min()
    m = r < below_kT
    d = pmf_kT - r
    d = d - d[m].mean()
    return forward_kld(ref_prob, probabilities_from_pmf(pmf_kT)), float(np.sqrt(np.mean(d[m] ** 2))), \
        float(np.abs(d[m]).max())


def _check_fes(mb, run_dir, kld_tol: float, rmse_tol: float, max_tol: float, gamma: float) -> None:
    ref = mb.reference()
    hist = read_history(run_dir)
    kld, rmse, worst = _errors(hist[-1].pmf_kT, ref.prob)
    assert kld < kld_tol and rmse < rmse_tol and worst < max_tol, (kld, rmse, worst)
    # the tolerances tell a right bias from a wrong one: the FES of the biased (well-tempered, F / gamma)
    # ensemble, i.e. a run whose samples were not reweighted, fails every one of them
    k_b, r_b, w_b = _errors(hist[-1].pmf_kT / gamma, ref.prob)
    assert k_b > kld_tol and r_b > rmse_tol and w_b > max_tol, (k_b, r_b, w_b)
    assert _errors(hist[0].pmf_kT, ref.prob)[0] > kld  # it converges


@pytest.mark.slow  # fast lane: over 3 s (a subprocess or a tiny run)
def test_opes_fes_matches_exact_mb_pmf(tmp_path, mb):
    view = mb.simulation_view()
    st = OpesSettings(n_steps=100_000, barrier_kJ_per_mol=25.0, sigma=0.05, pace_steps=100,
                      snapshot_every_steps=20_000)
    run = OpesRun(view, tmp_path / "o", st, progress=False)
    info = run.run()
    hist = read_history(tmp_path / "o")
    assert [h.evaluations for h in hist] == [20_000 * k + 1 for k in range(1, 6)]
    walls = [h.wall_time_s for h in hist]
    assert all(np.isfinite(walls)) and walls == sorted(walls)
    saved = json.loads((tmp_path / "o" / OPES_JSON).read_text())
    assert saved["method"] == "opes" and saved["finished"] and saved["evaluations"] == 100_001 == info["evaluations"]
    gamma = 25.0 / view.kT_kJ_per_mol
    assert saved["bias_factor"] == pytest.approx(gamma)
    # measured (2026-12, this seed): KLD 0.012, RMSE 0.59 kT, largest error 1.4 kT (statistical noise of 1e5 steps)
    _check_fes(mb, tmp_path / "o", kld_tol=0.03, rmse_tol=0.9, max_tol=2.2, gamma=gamma)


@pytest.mark.slow
def test_opes_explore_corrected_fes_matches_exact_mb_pmf(tmp_path, mb):
    view = mb.simulation_view()
    # OPES-explore converges more slowly than OPES: at 1e5 steps its KLD spans 0.006-0.071 over seeds 0-3 (seed 0
    # scores 0.071 here with OpenMM 8.6.1, though it passed CI on 2026-12-04: seed luck); at 3e5 steps 0.002-0.013, RMSE 0.17-0.30 kT,
    # largest error 0.42-0.79 kT, while the unreweighted (biased) FES scores 1.7 / 2.0 / 5.0 on every seed
    st = OpesSettings(n_steps=300_000, barrier_kJ_per_mol=25.0, sigma=0.05, pace_steps=100, explore=True,
                      corrected_fes=True, snapshot_every_steps=60_000)
    OpesRun(view, tmp_path / "e", st, progress=False).run()
    assert json.loads((tmp_path / "e" / OPES_JSON).read_text())["method"] == "opes-explore"
    _check_fes(mb, tmp_path / "e", kld_tol=0.03, rmse_tol=0.9, max_tol=2.2, gamma=25.0 / view.kT_kJ_per_mol)


def _invoke(*args):
    return CliRunner().invoke(cli_app, ["opes", *map(str, args)])


@pytest.mark.parametrize("extra", [[], ["--explore", "--adaptive-sigma", "--corrected-fes"]],
                         ids=["opes", "explore-adaptive-corrected"])
def test_opes_resume_is_bit_exact(tmp_path, extra):
    common = ["--pace", 100, "--snapshot-every", 4000, "--barrier-kJ", 25, "--sigma", 0.05, "--seed", 3, *extra]
    full, half = tmp_path / "full", tmp_path / "not" / "yet" / "half"  # missing parents of --out are made
    r = _invoke("mb", "--out", full, "--steps", 16_000, *common)
    assert r.exit_code == 0, r.output
    r = _invoke("mb", "--out", half, "--steps", 8000, *common)
    assert r.exit_code == 0, r.output
    assert json.loads((half / OPES_JSON).read_text())["steps_done"] == 8000
    r = _invoke("--resume", "--out", half, "--steps", 16_000)
    assert r.exit_code == 0, r.output
    a, b = read_history(full), read_history(half)
    assert len(a) == len(b) == 4
    for x, y in zip(a, b):
        assert x.evaluations == y.evaluations and x.label == y.label
        assert np.array_equal(x.pmf_kT, y.pmf_kT), (x.label, np.nanmax(np.abs(x.pmf_kT - y.pmf_kT)))
    info_a, info_b = (json.loads((d / OPES_JSON).read_text()) for d in (full, half))
    assert info_a["n_kernels"] == info_b["n_kernels"] and info_b["n_resumes"] == 1 and info_b["finished"]
    # a shorter --steps on resume is refused
    r = _invoke("--resume", "--out", half, "--steps", 8000)
    assert r.exit_code == 2 and "below" in r.stderr


def _assert_one_line_error(r, *words):
    assert r.exit_code == 2, r.output
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), r.stderr
    for w in words:
        assert w in lines[0], lines[0]


@pytest.mark.parametrize("args,words", [
    (["--steps", 0], ["--steps", "> 0"]),
    (["--steps", -5], ["--steps"]),
    (["--steps", 1000, "--bias-factor", 1.0], ["--bias-factor", "> 1"]),
    (["--steps", 1000, "--bias-factor", 0.5], ["--bias-factor"]),
    (["--steps", 1000, "--barrier-kJ", 0], ["--barrier-kJ"]),
    (["--steps", 1000, "--barrier-kJ", 1.0, "--snapshot-every", 1000, "--pace", 100], ["bias factor"]),
    (["--steps", 1234], ["snapshot_every_steps"]),
])
def test_opes_bad_input_one_line_nothing_written(tmp_path, args, words):
    out = tmp_path / "run"
    _assert_one_line_error(_invoke("mb", "--out", out, *args), *words)
    assert not out.exists()


def test_opes_existing_out_needs_resume(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "something.txt").write_text("keep")
    _assert_one_line_error(_invoke("mb", "--out", out, "--steps", 1000), "already exists")
    assert [p.name for p in out.iterdir()] == ["something.txt"]
    _assert_one_line_error(_invoke("--resume", "--out", out), "cannot resume")
    assert [p.name for p in out.iterdir()] == ["something.txt"]


def test_opes_four_cg_dimensions_refused(tmp_path, cache):
    out = tmp_path / "run"
    r = _invoke("aldp", "--out", out, "--steps", 1000, "--set", 'cg=[phi,psi,"1,4,6,8","8,14,16,18"]')
    _assert_one_line_error(r, "1 to 3 CG dimensions", "has 4")
    assert not out.exists()


def test_opes_aldp_defaults_are_the_tuning_scans_winner():
    d = default_settings("alanine-dipeptide")
    assert d == {"barrier_kJ_per_mol": 40.0, "pace_steps": 250, "sigma": 0.15, "timestep_fs": 2.0,
                 "corrected_fes": True}
    st = OpesSettings(n_steps=50_000, **d)
    assert st.bias_factor is None and not st.adaptive_sigma and st.friction_per_ps == 1.0
