"""`cgflow export` (the PMF as an OpenMM force / a PLUMED grid) and `cgflow simulate` (CG Langevin dynamics):
the bias energy equals -(F - F_min) in kJ/mol, the grid round-trips through a reader of PLUMED's documented
format, the trajectories sample exp(-beta F), and bad input fails in one line with nothing written."""

import math
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from cgflow.core.geometry import compute_dihedrals
from cgflow.core.units import kT_kJ_per_mol
from cgflow.pmf import export as ex
from cgflow.sampling import cg_langevin as cl
from conftest import run_cgflow

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--set", "by_example.epochs=2", "--set", "by_energy.epochs_first=1", "--set", "ensemble.epochs=10",
        "--set", "stopping.max_iterations=1", "--no-plots", "--device", "cpu"]
PI = math.pi


def pmf_2d(s):
    """An asymmetric periodic 2-D PMF (kT): a transposed or shifted table would not match it."""
    return (1.4 * torch.cos(2 * s[:, 0] - 1.0) + 0.7 * torch.cos(s[:, 1]) + 0.9 * torch.cos(s[:, 0] - s[:, 1] - 0.6)
            + 0.3 * torch.sin(s[:, 1]))


def pmf_nd(s):
    d = s.shape[1]
    out = sum(torch.cos((k + 1) * s[:, k] - 0.3 * k) for k in range(d))
    if d > 1:
        out = out + 0.5 * torch.sin(s[:, 0] - 2 * s[:, d - 1])
    return out


def cli_env(*extra_paths):
    e = {k: v for k, v in os.environ.items()}
    e["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), *map(str, extra_paths)])
    e.setdefault("OMP_NUM_THREADS", "1")
    return e


# --- OpenMM ----------------------------------------------------------------------------------------------
def _openmm_bias_energy(system, positions, group):
    import openmm

    ctx = openmm.Context(system, openmm.VerletIntegrator(1e-3), openmm.Platform.getPlatformByName("Reference"))
    out = []
    for x in positions:
        ctx.setPositions(x)
        e = ctx.getState(getEnergy=True, groups={group}).getPotentialEnergy()
        out.append(e.value_in_unit(openmm.unit.kilojoule_per_mole))
    return np.array(out)


@pytest.mark.parametrize("d, bins, tol_kJ", [(1, 72, 1e-3), (2, 72, 1e-3), (3, 24, 0.03)])
def test_openmm_bias_energy_equals_capped_pmf_at_random_points(tmp_path, d, bins, tol_kJ):
    import openmm

    fn = pmf_2d if d == 2 else pmf_nd
    tab = ex.tabulate_bias(fn, ((-PI, PI),) * d, (True,) * d, (bins,) * d, temperature_K=310.0, ceiling_kT=50.0)
    quads = [(k, k + 1, k + 2, k + 3) for k in range(d)]
    xml = tmp_path / "bias.xml"
    xml.write_text(openmm.XmlSerializer.serialize(ex.openmm_bias_force(tab, quads)))
    system = openmm.System()
    for _ in range(d + 3):
        system.addParticle(12.0)
    ex.add_pmf_bias(system, xml, force_group=5)
    rng = np.random.default_rng(1)
    x = rng.normal(size=(25, d + 3, 3))  # random points: random dihedrals
    xt = torch.as_tensor(x)
    s = torch.stack([compute_dihedrals(*(xt[:, i] for i in q)) for q in quads], dim=1)
    expected = -(fn(s).numpy() - tab.f_min_kT) * kT_kJ_per_mol(310.0)
    got = _openmm_bias_energy(system, x, 5)
    # interpolation error of a periodic cubic spline on this grid: a few 1e-5 kJ/mol (72 bins), 1e-2 (24 bins, 3-D)
    np.testing.assert_allclose(got, expected, atol=tol_kJ)
    assert np.ptp(expected) > 5.0  # the points span the bias: a constant would not pass


def test_openmm_bias_is_flat_above_the_ceiling_and_follows_remapped_atoms(tmp_path):
    import openmm

    ceiling = 1.5
    tab = ex.tabulate_bias(pmf_2d, ((-PI, PI),) * 2, (True, True), (72, 72), temperature_K=300.0, ceiling_kT=ceiling)
    kT = kT_kJ_per_mol(300.0)
    # on the grid: exactly -min(F - F_min, ceiling)
    np.testing.assert_allclose(tab.values_kJ_per_mol, -np.minimum(tab.pmf_kT, ceiling) * kT, atol=1e-12)
    assert (tab.pmf_kT > ceiling).mean() > 0.2
    xml = tmp_path / "bias.xml"
    xml.write_text(openmm.XmlSerializer.serialize(ex.openmm_bias_force(tab, [(0, 1, 2, 3), (1, 2, 3, 4)])))
    # the user's System numbers the atoms differently: the 5 CG atoms are 6, 4, 2, 0, 8 of 9 particles
    system = openmm.System()
    for _ in range(9):
        system.addParticle(1.0)
    user = [6, 4, 2, 0, 8]
    ex.add_pmf_bias(system, xml, atom_indices=[user[:4], user[1:]], force_group=2)
    rng = np.random.default_rng(2)
    x = rng.normal(size=(60, 9, 3))
    xt = torch.as_tensor(x)
    s = torch.stack([compute_dihedrals(*(xt[:, i] for i in user[:4])), compute_dihedrals(*(xt[:, i] for i in user[1:]))],
                    dim=1)
    f = fn_minus_min = pmf_2d(s).numpy() - tab.f_min_kT
    got = _openmm_bias_energy(system, x, 2)
    far = np.abs(f - ceiling) > 0.3  # away from the kink of the cap (the spline rounds it)
    np.testing.assert_allclose(got[far], -np.minimum(fn_minus_min, ceiling)[far] * kT, atol=2e-2)
    assert (f[far] > ceiling).any() and (f[far] < ceiling).any()
    with pytest.raises(ValueError, match="particles"):
        ex.add_pmf_bias(openmm.System(), xml)
    with pytest.raises(ValueError, match="quadruples"):
        ex.add_pmf_bias(system, xml, atom_indices=[user[:4]])


# --- PLUMED ----------------------------------------------------------------------------------------------
def mixed(s):
    return torch.cos(s[:, 0] - 0.4) + 0.5 * (s[:, 1] - 0.3) ** 2 + 0.2 * s[:, 1] * torch.sin(s[:, 0])


@pytest.mark.parametrize("case", ["periodic-2d", "mixed-2d", "line-1d", "periodic-3d"])
def test_plumed_grid_round_trips_through_a_reader_of_the_documented_format(case):
    if case == "periodic-2d":
        fn, dom, per, bins, names = pmf_2d, ((-PI, PI),) * 2, (True, True), (36, 24), ["phi", "psi"]
    elif case == "mixed-2d":
        fn, dom, per, bins, names = mixed, ((-PI, PI), (-1.0, 2.0)), (True, False), (30, 20), ["t", "d"]
    elif case == "line-1d":
        fn, dom, per, bins, names = (lambda s: (s[:, 0] ** 2 - 1) ** 2), ((-2.5, 1.1),), (False,), (40,), ["cv1"]
    else:
        fn, dom, per, bins, names = pmf_nd, ((-PI, PI),) * 3, (True,) * 3, (30, 6, 5), ["a", "b", "c"]
    tab = ex.tabulate_bias(fn, dom, per, bins, temperature_K=300.0, ceiling_kT=3.0)
    text = ex.plumed_grid_text(tab, names, label="ext")
    g = ex.read_plumed_grid(text)
    d = len(names)
    assert g.fields == [*names, "ext.bias", *(f"der_{n}" for n in names)]
    assert g.names == names and g.function == "ext.bias"
    for j in range(d):
        assert g.periodic[j] == per[j]
        # PLUMED lists nbins points for a periodic CV, nbins + 1 (and says so in nbins_) for a non-periodic one
        assert g.nbins[j] == (bins[j] if per[j] else bins[j] + 1)
        if per[j]:
            assert (g.minimum[j], g.maximum[j]) == ("-pi", "pi")
        np.testing.assert_allclose(g.axes[j], tab.axes[j], atol=1e-9)
    np.testing.assert_allclose(g.values, tab.values_kJ_per_mol, atol=2e-9)
    np.testing.assert_allclose(g.derivatives, tab.gradient_kJ_per_mol, atol=2e-9)
    # layout: the first CV varies fastest; a blank line each time the second-to-last index wraps
    data = [ln for ln in text.splitlines() if not ln.startswith("#")]
    rows = [ln.split() for ln in data if ln.strip()]
    assert rows[0][0] != rows[1][0] and (d == 1 or rows[0][1] == rows[1][1])
    n_blank = sum(1 for ln in data if not ln.strip())
    # (PLUMED prints one before every point whose second-to-last index is 0, i > 0)
    assert n_blank == (0 if d == 1 else int(np.prod(g.nbins)) // g.nbins[d - 2] - 1)
    # the derivative columns are dV/ds of the values (central differences, periodic dims, uncapped points)
    v, kT = tab.values_kJ_per_mol, tab.kT_kJ_per_mol
    h = tab.axes[0][1] - tab.axes[0][0]
    if per[0]:
        fd = (np.roll(v, -1, axis=0) - np.roll(v, 1, axis=0)) / (2 * h)
        smooth = (tab.pmf_kT < 2.5) & (np.roll(tab.pmf_kT, 1, 0) < 2.5) & (np.roll(tab.pmf_kT, -1, 0) < 2.5)
        err = np.abs(fd - g.derivatives[..., 0])[smooth]
        assert smooth.sum() > 10 and err.max() < 0.05 * kT * max(1.0, np.abs(g.derivatives[..., 0]).max() / kT)


def test_plumed_reader_reads_a_hand_written_file_and_rejects_broken_ones():
    # written by hand after PLUMED's EXTERNAL docs and Grid::writeToFile: 2 non-periodic CVs, 3 x 2 points
    text = """#! FIELDS d1 d2 ext.bias der_d1 der_d2
#! SET min_d1 0
#! SET max_d1 2
#! SET nbins_d1 3
#! SET periodic_d1 false
#! SET min_d2 -1
#! SET max_d2 1
#! SET nbins_d2 2
#! SET periodic_d2 false
 0.0 -1.0 1.0 0.1 0.2
 1.0 -1.0 2.0 0.3 0.4
 2.0 -1.0 3.0 0.5 0.6

 0.0 1.0 4.0 0.7 0.8
 1.0 1.0 5.0 0.9 1.0
 2.0 1.0 6.0 1.1 1.2
"""
    g = ex.read_plumed_grid(text)
    np.testing.assert_allclose(g.axes[0], [0, 1, 2])
    np.testing.assert_allclose(g.axes[1], [-1, 1])
    np.testing.assert_allclose(g.values, [[1, 4], [2, 5], [3, 6]])
    np.testing.assert_allclose(g.derivatives[2, 1], [1.1, 1.2])
    with pytest.raises(ValueError, match="missing"):
        ex.read_plumed_grid(text.replace(" 2.0 1.0 6.0 1.1 1.2\n", ""))
    with pytest.raises(ValueError, match="twice"):
        ex.read_plumed_grid(text.replace(" 2.0 1.0 6.0", " 1.0 1.0 6.0"))
    with pytest.raises(ValueError, match="nbins"):
        ex.read_plumed_grid(text.replace("#! SET nbins_d2 2\n", ""))


def test_plumed_input_lines_number_atoms_from_one():
    text = ex.plumed_input_text(["phi", "psi"], "bias.grid", cg_atoms=[(4, 6, 8, 14), (6, 8, 14, 16)], label="ext")
    assert "phi: TORSION ATOMS=5,7,9,15" in text and "psi: TORSION ATOMS=7,9,15,17" in text
    assert "EXTERNAL ARG=phi,psi FILE=bias.grid LABEL=ext" in text


def test_tabulation_refuses_bad_input():
    with pytest.raises(ValueError, match="ceiling"):
        ex.tabulate_bias(pmf_2d, ((-PI, PI),) * 2, (True, True), (8, 8), temperature_K=300.0, ceiling_kT=0.0)
    with pytest.raises(ValueError, match="dimensions"):
        ex.tabulate_bias(pmf_nd, ((-PI, PI),) * 4, (True,) * 4, (4,) * 4, temperature_K=300.0)


# --- CG Langevin -----------------------------------------------------------------------------------------
def torus_f0(s):
    sys.path.insert(0, str(ROOT / "examples"))
    from torus_system import f0

    return f0(s)


def test_langevin_on_a_periodic_2d_pmf_samples_exp_minus_F():
    edges = [np.linspace(-PI, PI, 13)] * 2
    st = cl.LangevinSettings(dt=0.1, friction=1.0, beta=1.0, n_steps=4000, every=10, burn_in=400)
    s0 = torch.zeros(64, 2, dtype=torch.float64)  # all walkers start at one point: equilibrium must come from dynamics
    tr = cl.baoab(torus_f0, s0, st, periodic=(True, True), domain=((-PI, PI),) * 2,
                  generator=torch.Generator().manual_seed(3))
    assert tr.positions.shape == (400, 64, 2) and (np.abs(tr.positions) <= PI).all()
    good = cl.histogram_agreement(tr.positions, cl.binned_pmf(torus_f0, edges, 1.0), edges, 1.0)
    assert good.ok, good
    assert good.n_eff > 2000
    wrong = cl.histogram_agreement(tr.positions, cl.binned_pmf(torus_f0, edges, 1.2), edges, 1.2)
    assert not wrong.ok, wrong  # a beta 20 % off is detected


def test_langevin_with_walls_and_beta_samples_exp_minus_beta_F():
    def double_well(s):
        x = s[:, 0]
        return 2 * (x**2 - 1) ** 2 + 0.5 * x

    domain = ((-1.5, 1.5),)  # F(+-1.5) ~ 3-4 kT: the walls hold real probability
    edges = [np.linspace(-1.5, 1.5, 25)]
    s0 = torch.full((64, 1), -1.0, dtype=torch.float64)
    st = cl.LangevinSettings(dt=0.02, friction=2.0, beta=2.0, n_steps=4000, every=10, burn_in=400)
    tr = cl.baoab(double_well, s0, st, periodic=(False,), domain=domain, generator=torch.Generator().manual_seed(4))
    assert tr.positions.min() >= -1.5 and tr.positions.max() <= 1.5
    good = cl.histogram_agreement(tr.positions, cl.binned_pmf(double_well, edges, 2.0), edges, 2.0)
    assert good.ok, good
    for b in (1.0, 1.6):  # the run's beta (the --beta option ignored) or 20 % off
        bad = cl.histogram_agreement(tr.positions, cl.binned_pmf(double_well, edges, b), edges, b)
        assert not bad.ok, (b, bad)


def test_langevin_settings_refuse_bad_values():
    for kw in ({"dt": 0}, {"friction": -1}, {"beta": 0}, {"every": 0}):
        with pytest.raises(ValueError):
            cl.LangevinSettings(**kw)


# --- the commands ----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def mb_run(tmp_path_factory, cache):
    where = tmp_path_factory.mktemp("mb")
    res = run_cgflow("run", "mb", "--out", "r", *TINY, cwd=where, env=cli_env())
    assert res.returncode == 0, res.stderr
    return where / "r"


def model_pmf(run_dir):
    from cgflow.cli.tools import ensemble_mean
    from cgflow.learning.run import ActiveLearningRun

    run = ActiveLearningRun(None, run_dir, resume=True)
    return run, ensemble_mean(run)


@pytest.mark.slow
def test_simulate_on_muller_brown_samples_the_models_exp_minus_F(mb_run, tmp_path):
    res = run_cgflow("simulate", str(mb_run), "--steps", "3000", "--dt", "0.03", "--burn-in", "300", "--walkers", "32",
                     "--seed", "5", "--out", "t.npz", cwd=tmp_path, env=cli_env())
    assert res.returncode == 0, res.stderr
    z = np.load(tmp_path / "t.npz")
    cg = z["cg"]
    assert cg.shape == (300, 32, 1) and z["time"].shape == (300,)
    lo, hi = -2.5, 1.1
    assert cg.min() >= lo and cg.max() <= hi
    run, f = model_pmf(mb_run)
    edges = [np.linspace(lo, hi, 31)]
    good = cl.histogram_agreement(cg, cl.binned_pmf(f, edges, 1.0), edges, 1.0)
    assert good.ok, good
    bad = cl.histogram_agreement(cg, cl.binned_pmf(f, edges, 1.5), edges, 1.5)
    assert not bad.ok, bad
    # pmf_kT along the trajectory is the model's F there (minus the grid minimum)
    with torch.no_grad():
        f_traj = f(torch.as_tensor(cg[:5].reshape(-1, 1))).numpy().reshape(5, 32)
    np.testing.assert_allclose(z["pmf_kT"][:5] - f_traj, (z["pmf_kT"][:5] - f_traj).mean(), atol=1e-9)


@pytest.mark.slow  # fast lane: over 3 s (a subprocess or a tiny run)
def test_export_plumed_on_muller_brown_writes_the_models_bias(mb_run, tmp_path):
    res = run_cgflow("export", str(mb_run), "--format", "plumed", "--out", "g.dat", "--temperature-K", "300",
                     "--bins", "50", cwd=tmp_path, env=cli_env())
    assert res.returncode == 0, res.stderr
    g = ex.read_plumed_grid((tmp_path / "g.dat").read_text())
    assert g.names == ["cv1"] and g.periodic == [False] and g.nbins == [51]
    assert "EXTERNAL ARG=cv1 FILE=g.dat LABEL=external" in (tmp_path / "g.dat.plumed.dat").read_text()
    _, f = model_pmf(mb_run)
    with torch.no_grad():
        fx = f(torch.as_tensor(g.axes[0][:, None])).numpy()
    expected = -np.minimum(fx - fx.min(), 12.0) * kT_kJ_per_mol(300.0)
    np.testing.assert_allclose(g.values, expected, atol=1e-8)


def _one_line_error(res, *words):
    assert res.returncode == 2, (res.stdout, res.stderr)
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), res.stderr
    for w in words:
        assert w in lines[0], lines[0]


@pytest.mark.slow  # 16 CLI calls, ~4 s each
def test_bad_input_fails_in_one_line_and_writes_nothing(mb_run, tmp_path):
    from cgflow.config import load_config
    from cgflow.learning.run import ActiveLearningRun

    env = cli_env()
    exp = ("export", "--format", "plumed", "--temperature-K", "300")
    _one_line_error(run_cgflow(exp[0], "nope", *exp[1:], "--out", "a.dat", cwd=tmp_path, env=env), "no such run")
    (tmp_path / "empty").mkdir()
    _one_line_error(run_cgflow(exp[0], "empty", *exp[1:], "--out", "a.dat", cwd=tmp_path, env=env), "checkpoint")
    # a run whose checkpoint comes from before its first iteration
    cfg = load_config("mb", ["progress=false", "by_example.epochs=2"], seed=0)
    ActiveLearningRun(cfg, tmp_path / "half")
    _one_line_error(run_cgflow(exp[0], "half", *exp[1:], "--out", "a.dat", cwd=tmp_path, env=env), "no fitted PMF")
    _one_line_error(run_cgflow("simulate", "half", "--steps", "10", "--out", "t.npz", cwd=tmp_path, env=env),
                    "no fitted PMF")
    for c in ("0", "-1"):
        _one_line_error(run_cgflow(exp[0], str(mb_run), *exp[1:], "--ceiling-kT", c, "--out", "a.dat", cwd=tmp_path,
                                   env=env), "--ceiling-kT")
    _one_line_error(run_cgflow("export", str(mb_run), "--format", "openmm", "--out", "a.xml", cwd=tmp_path, env=env),
                    "no CG dihedral atoms")
    _one_line_error(run_cgflow("export", str(mb_run), "--format", "gromacs", "--out", "a.xml", cwd=tmp_path, env=env),
                    "--format")
    _one_line_error(run_cgflow(exp[0], str(mb_run), "--format", "plumed", "--out", "a.dat", cwd=tmp_path, env=env),
                    "--temperature-K")
    _one_line_error(run_cgflow("simulate", str(mb_run), "--steps", "10", "--beta", "0", "--out", "t.npz",
                               cwd=tmp_path, env=env), "--beta")
    _one_line_error(run_cgflow("simulate", str(mb_run), "--steps", "10", "--all-atom", "x.pdb", "--out", "t.npz",
                               cwd=tmp_path, env=env), "topology")
    assert not any((tmp_path / n).exists() for n in ("a.dat", "a.dat.plumed.dat", "a.xml", "t.npz", "x.pdb"))
    # existing outputs are neither overwritten nor partly written
    (tmp_path / "a.dat").write_text("mine")
    _one_line_error(run_cgflow(*exp[:1], str(mb_run), *exp[1:], "--out", "a.dat", cwd=tmp_path, env=env), "exists")
    assert (tmp_path / "a.dat").read_text() == "mine" and not (tmp_path / "a.dat.plumed.dat").exists()
    (tmp_path / "b.dat.plumed.dat").write_text("mine")
    _one_line_error(run_cgflow(*exp[:1], str(mb_run), *exp[1:], "--out", "b.dat", cwd=tmp_path, env=env), "exists")
    assert not (tmp_path / "b.dat").exists() and (tmp_path / "b.dat.plumed.dat").read_text() == "mine"
    (tmp_path / "t.npz").write_text("mine")
    _one_line_error(run_cgflow("simulate", str(mb_run), "--steps", "10", "--out", "t.npz", cwd=tmp_path, env=env),
                    "exists")
    assert (tmp_path / "t.npz").read_text() == "mine"


@pytest.mark.slow  # builds a 4-D torus run (~10 s)
def test_export_refuses_an_unsupported_dimension(tmp_path, cache):
    from cgflow.config import load_config
    from cgflow.learning.run import ActiveLearningRun

    sys.path.insert(0, str(ROOT / "examples"))
    (tmp_path / "torus.yaml").write_text(
        'extends: mb\nsystem: {name: python, factory: "torus_system:make_system", '
        "kwargs: {cg_dim: 4, n_bins: 6, n_starting_chains: 4, mc_steps: 40}}\n"
        "flow: {kind: spline, n_blocks: 1, hidden: [8], n_res_blocks: 1, n_bins: 4, tail_bound: 5.0}\n")
    cfg = load_config(str(tmp_path / "torus.yaml"), ["progress=false", "by_example.epochs=1"], seed=0)
    ActiveLearningRun(cfg, tmp_path / "t4")
    res = run_cgflow("export", "t4", "--format", "plumed", "--out", "a.dat", "--temperature-K", "300", cwd=tmp_path,
                     env=cli_env(ROOT / "examples"))
    _one_line_error(res, "4 dimensions")
    assert not (tmp_path / "a.dat").exists()
