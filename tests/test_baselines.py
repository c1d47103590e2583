"""MD, umbrella sampling + MBAR, metadynamics and reference files."""

from __future__ import annotations

import json
import math

import numpy as np
import openmm
import openmm.unit as unit
import pytest
import torch

from cgflow.analysis.metrics import forward_kld, pmf_rmse, probabilities_from_pmf
from cgflow.baselines.md import MDRun, MDSettings, read_cg_trajectory
from cgflow.baselines.metadynamics import MetadynamicsRun, MetadynamicsSettings
from cgflow.baselines.reference import reference_from_exact, reference_from_run
from cgflow.baselines.umbrella import (
    UmbrellaRun,
    UmbrellaSettings,
    mbar_bin_probabilities,
    restraint_kT,
    window_centers,
)
from cgflow.core.run_directory import RunDirectoryError
from cgflow.core.simulation_view import SimulationView
from cgflow.pmf.history import read_history
from cgflow.pmf.reference_file import ReferenceFileError, load_reference, save_reference
from cgflow.systems.muller_brown import MullerBrownSystem, muller_brown_potential
from conftest import run_cgflow


@pytest.fixture(scope="module")
def mb():
    return MullerBrownSystem()


@pytest.fixture(scope="module")
def mb_view(mb):
    return mb.simulation_view()


def _openmm_energy_kJ(system, positions) -> float:
    ctx = openmm.Context(system, openmm.VerletIntegrator(0.001), openmm.Platform.getPlatformByName("Reference"))
    ctx.setPositions(positions)
    return ctx.getState(getEnergy=True).getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole)


# --- simulation views ---------------------------------------------------------------------------
def test_mb_view_openmm_energy_equals_beta_U(mb, mb_view):
    rng = np.random.default_rng(1)
    for _ in range(5):
        p = np.array([[rng.uniform(-1.5, 1.0), rng.uniform(-0.5, 2.0), rng.normal(0, 0.01)]])
        e_kT = _openmm_energy_kJ(mb_view.make_openmm_system(1), p) / mb_view.kT_kJ_per_mol
        u = mb_view.reduced_energy_of_positions(torch.as_tensor(p)[None]).item()
        assert e_kT == pytest.approx(u, abs=1e-9)
        z_term = 0.5 * 1000.0 * p[0, 2] ** 2 / mb_view.kT_kJ_per_mol
        assert u - z_term == pytest.approx(0.1 * muller_brown_potential(p[0, 0], p[0, 1]), abs=1e-9)
    cg = _openmm_energy_kJ(_system_with(mb_view.make_cg_forces()), np.array([[0.3, -0.4, 0.0]]))
    assert cg == pytest.approx(0.7, abs=1e-12)


def _system_with(forces, n=1):
    s = openmm.System()
    for _ in range(n):
        s.addParticle(1.0)
    for f in forces:
        s.addForce(f)
    return s


def test_mb_copies_do_not_interact(mb_view):
    p = np.array([[-0.5, 1.4, 0.0], [0.6, 0.0, 0.0], [0.0, 0.5, 0.0]])
    e3 = _openmm_energy_kJ(mb_view.make_openmm_system(3), p)
    e1 = sum(_openmm_energy_kJ(mb_view.make_openmm_system(1), q[None]) for q in p)
    assert e3 == pytest.approx(e1, rel=1e-12)


@pytest.mark.slow
def test_aldp_view_cg_forces_and_energy():
    from cgflow.systems.molecules.molecule_system import alanine_dipeptide

    ala = alanine_dipeptide(progress=False, use_cache=False)
    v = ala.simulation_view()
    rng = np.random.default_rng(0)
    pos = v.positions + rng.normal(0, 0.01, v.positions.shape)
    s_view = v.cg_of_positions(torch.as_tensor(pos)[None])[0].numpy()
    s_ic, _ = ala.to_internal(torch.as_tensor(pos)[None])
    np.testing.assert_allclose(s_view, s_ic[0].numpy(), atol=1e-10)
    forces = v.make_cg_forces()
    for i, f in enumerate(forces):  # OpenMM's theta has the IUPAC/mdtraj sign
        sysm = _system_with([f], n=v.n_particles)
        assert _openmm_energy_kJ(sysm, pos) == pytest.approx(s_view[i], abs=1e-6)
    e = _openmm_energy_kJ(v.make_openmm_system(1), pos) / v.kT_kJ_per_mol
    assert e == pytest.approx(v.reduced_energy_of_positions(torch.as_tensor(pos)[None]).item(), abs=1e-6)
    with pytest.raises(ValueError, match="torch engine"):
        v.make_openmm_system(2)


# --- MD -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("engine", ["openmm", "torch"])
def test_md_counts_steps_and_resume_is_exact(tmp_path, mb_view, engine):
    calls = {"n": 0}
    inner = mb_view.reduced_energy_of_positions

    def counting(x):
        calls["n"] += x.shape[0]
        return inner(x)

    view = SimulationView(**{**mb_view.__dict__, "reduced_energy_of_positions": counting})
    st = MDSettings(n_steps=600, engine=engine, n_replicas=4, report_every_steps=20, frames_per_chunk=10)
    full = MDRun(view, tmp_path / "full", st, progress=False).run()
    cg_full, info = read_cg_trajectory(tmp_path / "full")
    assert info["steps_done"] == 600 and cg_full.shape == (30, 4, 1)
    assert info["evaluations"] == 4 + 600 * 4
    if engine == "torch":
        assert calls["n"] == info["evaluations"]  # every energy evaluation is counted, and only those
    else:
        ctx = MDRun(view, tmp_path / "probe", st.model_copy(update={"n_steps": 20}), progress=False)
        ctx.run()
        assert ctx._engine["context"].getStepCount() == 20

    half = MDRun(view, tmp_path / "half", st.model_copy(update={"n_steps": 400}), progress=False).run()
    assert half["steps_done"] == 400
    # a chunk written after the last checkpoint (a killed run) is dropped on resume
    np.save(tmp_path / "half" / "cg_trajectory" / "000099.npy", np.zeros((10, 4, 1)))
    resumed = MDRun(view, tmp_path / "half", st, resume=True, progress=False).run()
    cg_res, _ = read_cg_trajectory(tmp_path / "half")
    assert resumed["steps_done"] == 600 and resumed["evaluations"] == info["evaluations"]
    np.testing.assert_array_equal(cg_res, cg_full)


def test_md_refuses_existing_directory(tmp_path, mb_view):
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "keep.txt").write_text("keep")
    with pytest.raises(RunDirectoryError, match="not empty"):
        MDRun(mb_view, tmp_path / "x", MDSettings(n_steps=100), progress=False)
    assert (tmp_path / "x" / "keep.txt").read_text() == "keep"


def test_md_samples_the_boltzmann_distribution_in_a_well(tmp_path, mb_view):
    """Within basin A (no crossings at this length) the s = x - y distribution of MD matches the
    exact conditional density exp(-F(s)) restricted to the basin."""
    from cgflow.systems.muller_brown import exact_pmf

    st = MDSettings(n_steps=20000, engine="openmm", n_replicas=64, report_every_steps=50)
    MDRun(mb_view, tmp_path / "md", st, progress=False).run()
    cg, _ = read_cg_trajectory(tmp_path / "md")
    s = cg[20:].ravel()
    edges = np.linspace(-2.25, -1.75, 11)
    h, _ = np.histogram(s, edges)
    centers = 0.5 * (edges[1:] + edges[:-1])
    p = np.exp(-exact_pmf(tuple(centers.tolist()), 0.1))
    p /= p.sum()
    assert (s > -1.3).sum() == 0
    assert forward_kld(p, h / h.sum()) < 5e-3


# --- umbrella + MBAR ----------------------------------------------------------------------------
def test_mbar_reweighting_recovers_a_known_density():
    """Samples drawn exactly from harmonically biased Gaussians: MBAR must give back the unbiased
    Gaussian.  F(s) = s^2 / (2 sigma0^2); window k adds 0.5 kappa (s - c_k)^2, so its samples are
    normal with precision 1/sigma0^2 + kappa and mean kappa c_k / (1/sigma0^2 + kappa)."""
    rng = np.random.default_rng(3)
    sigma0, n_per = 0.7, 4000
    centers, spacing = window_centers([(-3.0, 3.0)], (False,), 15)
    spring = 2.0 / spacing**2
    prec = 1 / sigma0**2 + spring
    s = np.concatenate([rng.normal(spring[0] * c[0] / prec[0], 1 / np.sqrt(prec[0]), n_per) for c in centers])
    window = np.repeat(np.arange(len(centers)), n_per)
    edges = np.linspace(-3, 3, 61)
    prob = mbar_bin_probabilities(s[:, None], window, centers, spring, (False,), [edges])
    from scipy.stats import norm

    exact = np.diff(norm.cdf(edges, scale=sigma0))
    exact /= exact.sum()
    assert forward_kld(exact, np.maximum(prob, 1e-12)) < 2e-3
    # the plain pooled histogram is far off: the test can tell reweighting from no reweighting
    h, _ = np.histogram(s, edges)
    assert forward_kld(exact, np.maximum(h / h.sum(), 1e-12)) > 0.1


def test_periodic_restraint_uses_minimum_image():
    c = np.array([math.pi - 0.1])
    assert restraint_kT(np.array([-math.pi + 0.1]), c, np.array([2.0]), (True,)) == pytest.approx(0.5 * 2 * 0.04)
    t = restraint_kT(torch.tensor([[-math.pi + 0.1]]), torch.tensor(c), torch.tensor([2.0]), (True,))
    assert t.item() == pytest.approx(0.04)
    centers, spacing = window_centers([(-math.pi, math.pi)] * 2, (True, True), 4)
    assert centers.shape == (16, 2) and np.allclose(spacing, math.pi / 2)


@pytest.mark.slow
def test_umbrella_mbar_recovers_exact_mb_pmf(tmp_path, mb, mb_view):
    """Tolerance: PMF RMSE < 0.3 kT over the populated bins and forward KLD < 0.03 with 30
    windows x 11k steps (the estimate's own noise at this budget is ~0.15 kT / 0.01)."""
    st = UmbrellaSettings(windows_per_dim=30, equilibration_steps=1000, production_steps=10000,
                          sample_every_steps=20, n_snapshots=1)
    info = UmbrellaRun(mb_view, tmp_path / "u", st, progress=False).run()
    assert info["evaluations"] == 30 + 30 * 11000
    snap = read_history(tmp_path / "u")[-1]
    ref = mb.reference()
    assert snap.evaluations == info["evaluations"]
    kld = forward_kld(ref.prob, probabilities_from_pmf(np.where(np.isfinite(snap.pmf_kT), snap.pmf_kT, 50.0)))
    rmse = pmf_rmse(ref.prob, snap.pmf_kT)
    assert kld < 0.03 and rmse < 0.3, (kld, rmse)
    # the two halves give a finite noise floor, recorded in the reference file
    meta = reference_from_run(tmp_path / "u", tmp_path / "u_ref.npz")
    r = load_reference(tmp_path / "u_ref.npz", 1)
    assert r.meta["method"] == "umbrella+mbar" and 0 < meta["noise_floor_forward_kld"] < 0.2
    assert forward_kld(ref.prob, np.maximum(r.prob, 1e-12)) < 0.03


# --- metadynamics -------------------------------------------------------------------------------
@pytest.mark.slow
def test_metadynamics_converges_on_mb(tmp_path, mb, mb_view):
    st = MetadynamicsSettings(n_steps=250_000, bias_factor=10, deposit_every_steps=100, snapshot_every_steps=50_000)
    info = MetadynamicsRun(mb_view, tmp_path / "m", st, progress=False).run()
    hist = read_history(tmp_path / "m")
    assert [h.evaluations for h in hist] == [50_000 * k + 1 for k in range(1, 6)]
    assert info["evaluations"] == 250_001
    ref = mb.reference()
    kld = forward_kld(ref.prob, probabilities_from_pmf(hist[-1].pmf_kT))
    assert kld < 0.02, kld  # the first snapshot (still filling basin A) is far worse
    assert forward_kld(ref.prob, probabilities_from_pmf(hist[0].pmf_kT)) > kld


def test_metadynamics_bias_grid_orientation(tmp_path):
    """Two CG variables on different ranges: one Gaussian deposited at (x, y) = (0.5, -1.0) must
    show up as the free-energy minimum at that (x, y) bin, not transposed."""
    import openmm.app as app

    def forces():
        fx, fy = openmm.CustomExternalForce("x"), openmm.CustomExternalForce("y")
        fx.addParticle(0, [])
        fy.addParticle(0, [])
        return [fx, fy]

    def system(n):
        s = openmm.System()
        s.addParticle(1.0)
        f = openmm.CustomExternalForce("0")
        f.addParticle(0, [])
        s.addForce(f)
        return s

    view = SimulationView(name="toy", make_openmm_system=system, make_openmm_topology=None,
                          positions=np.zeros((1, 3)), masses_amu=np.ones(1), temperature_K=300.0, timestep_fs=1.0,
                          make_cg_forces=forces, cg_of_positions=None, reduced_energy_of_positions=None, cg_dim=2,
                          cg_periodic=(False, False), cg_domain=((0.0, 1.0), (-2.0, 0.0)), cg_names=("x", "y"))
    st = MetadynamicsSettings(n_steps=10, deposit_every_steps=10, snapshot_every_steps=10, n_bins=20,
                              margin_fraction=0.0, grid_points=41, width_fraction=0.05)
    run = MetadynamicsRun(view, tmp_path / "m", st, progress=False)
    sysm = system(1)
    meta = app.Metadynamics(sysm, run._variables(), 300 * unit.kelvin, 5.0, 1.0, 10)
    ctx = openmm.Context(sysm, openmm.VerletIntegrator(0.001), openmm.Platform.getPlatformByName("Reference"))
    meta._addGaussian([0.5, -1.5], 1.0 * unit.kilojoule_per_mole, ctx)
    f = run.free_energy_on_bins(meta)
    assert f.shape == (20, 20)
    i, j = np.unravel_index(np.argmin(f), f.shape)
    assert abs(run.edges[0][i] + 0.025 - 0.5) <= 0.05 and abs(run.edges[1][j] + 0.05 - (-1.5)) <= 0.1


# --- reference files ----------------------------------------------------------------------------
def test_reference_file_round_trip_and_errors(tmp_path, mb):
    meta = reference_from_exact(mb, tmp_path / "ref.npz")
    r = load_reference(tmp_path / "ref.npz", 1)
    np.testing.assert_allclose(r.prob, mb.reference().prob)
    assert r.meta["method"] == "exact" and meta["noise_floor_forward_kld"] == 0.0
    with np.load(tmp_path / "ref.npz") as z:
        assert set(z.files) == {"edges", "prob", "pmf_kT", "meta"}
        assert z["pmf_kT"].min() == 0.0
    with pytest.raises(ReferenceFileError, match="not found"):
        load_reference(tmp_path / "nope.npz")
    with pytest.raises(ReferenceFileError, match="2 CG dimension"):
        load_reference(tmp_path / "ref.npz", 2)
    np.savez(tmp_path / "bad.npz", edges=np.linspace(0, 1, 11), prob=np.ones(10))
    with pytest.raises(ReferenceFileError, match="sum to 1"):
        load_reference(tmp_path / "bad.npz")
    save_reference(tmp_path / "two.npz", np.linspace(-np.pi, np.pi, 5), np.ones((4, 4)), {"method": "test"})
    assert load_reference(tmp_path / "two.npz", 2).prob.sum() == pytest.approx(1.0)


def test_reference_from_md_run_has_noise_floor(tmp_path, mb_view):
    MDRun(mb_view, tmp_path / "md", MDSettings(n_steps=4000, n_replicas=16, report_every_steps=20),
          progress=False).run()
    meta = reference_from_run(tmp_path / "md", tmp_path / "ref.npz", discard_steps=400)
    r = load_reference(tmp_path / "ref.npz", 1)
    assert meta["method"] == "md" and meta["noise_floor_forward_kld"] > 0
    assert "first 20 frames dropped" in meta["description"]
    cg, _ = read_cg_trajectory(tmp_path / "md")
    h, _ = np.histogram(cg[20:].ravel(), r.edges[0])
    np.testing.assert_allclose(r.prob, h / h.sum())


# --- CLI ----------------------------------------------------------------------------------------
def cgflow(*args, cwd=None):
    return run_cgflow(*args, cwd=cwd)


@pytest.mark.slow
def test_cli_md_resume_reference_compare(tmp_path):
    r = cgflow("md", "mb", "--out", "md", "--steps", "2000", "--replicas", "8", "--report-every", "50", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    info = json.loads((tmp_path / "md" / "md.json").read_text())
    assert info["evaluations"] == 8 + 2000 * 8
    r = cgflow("md", "mb", "--out", "md", "--steps", "100", cwd=tmp_path)
    assert r.returncode != 0 and "--resume" in r.stderr
    r = cgflow("md", "--resume", "--out", "md", "--steps", "3000", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert json.loads((tmp_path / "md" / "md.json").read_text())["steps_done"] == 3000
    r = cgflow("reference", "--exact", "mb", "--out", "ref.npz", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    r = cgflow("reference", "--out", "x.npz", cwd=tmp_path)
    assert r.returncode != 0 and "exactly one" in r.stderr
    r = cgflow("compare", "md", "--reference", "ref.npz", "--out", "cmp", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "cmp" / "comparison.png").stat().st_size > 1000
    r = cgflow("compare", "md", "--reference", "missing.npz", "--out", "cmp2", cwd=tmp_path)
    assert r.returncode != 0 and len(r.stderr.strip().splitlines()) == 1 and "not found" in r.stderr
