"""Well-tempered metadynamics: the direct (CustomCompoundBondForce) bias equals OpenMM's, snapshots carry
the MD wall-clock, `cgflow metad aldp` uses the tuned defaults, the benchmark's curve reader."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import openmm
import openmm.app as app
import openmm.unit as unit
import pytest
from typer.testing import CliRunner

from cgflow.baselines.metadynamics import (
    GENERIC_DEFAULTS,
    MetadynamicsRun,
    MetadynamicsSettings,
    WellTemperedBias,
    default_settings,
)
from cgflow.pmf.history import read_history

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def aldp_view():
    from cgflow.systems.molecules.molecule_system import alanine_dipeptide

    return alanine_dipeptide(progress=False).simulation_view()


def _bias(view, **kw):
    system = view.make_openmm_system(1)
    variables = [app.BiasVariable(f, -np.pi, np.pi, 0.35, periodic=True, gridWidth=61) for f in view.make_cg_forces()]
    m = WellTemperedBias(system, variables, view.temperature_K, 6.0, 1.2, 100, **kw)
    ctx = openmm.Context(system, openmm.VerletIntegrator(0.001), openmm.Platform.getPlatformByName("Reference"))
    return m, ctx, system, variables


def test_direct_bias_equals_openmm_customcv_bias(aldp_view):
    """Same Gaussians -> same grid as OpenMM's Metadynamics, and the CustomCompoundBondForce gives the
    same bias energy and forces as the CustomCVForce at random configurations."""
    direct, c_direct, _, _ = _bias(aldp_view)
    cv, c_cv, _, _ = _bias(aldp_view, allow_direct=False)
    assert direct.direct and direct.kind == "compound" and not cv.direct
    sys_om = aldp_view.make_openmm_system(1)
    om = app.Metadynamics(sys_om, [app.BiasVariable(f, -np.pi, np.pi, 0.35, periodic=True, gridWidth=61)
                                   for f in aldp_view.make_cg_forces()], 300 * unit.kelvin, 6.0, 1.2, 100)
    c_om = openmm.Context(sys_om, openmm.VerletIntegrator(0.001), openmm.Platform.getPlatformByName("Reference"))
    rng = np.random.default_rng(0)
    for _ in range(20):
        s, h = rng.uniform(-np.pi, np.pi, 2), rng.uniform(0.2, 1.5)
        direct.add_gaussian(s, h)
        cv.add_gaussian(s, h)
        om._addGaussian(s, h * unit.kilojoule_per_mole, c_om)
    np.testing.assert_allclose(direct.getFreeEnergy()._value, om.getFreeEnergy()._value, atol=1e-12)
    direct._table_to_context(c_direct)
    cv._table_to_context(c_cv)
    for _ in range(4):
        x = aldp_view.positions + rng.normal(0, 0.04, aldp_view.positions.shape)
        out = []
        for m, c in ((direct, c_direct), (cv, c_cv)):
            c.setPositions(x)
            st = c.getState(getEnergy=True, getForces=True, groups={m.force_group})
            out.append((st.getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole),
                        st.getForces(asNumpy=True).value_in_unit(unit.kilojoule_per_mole / unit.nanometer)))
        assert out[0][0] == pytest.approx(out[1][0], abs=1e-9) and abs(out[0][0]) > 1e-6
        np.testing.assert_allclose(out[0][1], out[1][1], atol=1e-8)
        np.testing.assert_allclose(direct.collective_variables(c_direct), cv.collective_variables(c_cv), atol=1e-12)
        np.testing.assert_allclose(direct.collective_variables(c_direct), aldp_view.cg_numpy(x[None])[0], atol=1e-9)


def test_well_tempered_height_and_deposit_count(aldp_view):
    m, ctx, _, _ = _bias(aldp_view)
    ctx.setPositions(aldp_view.positions)
    m.deposit(ctx)
    first = m._total_bias.copy()  # the first hill has the full height (at the CV, off the grid points)
    assert 1.0 < first.max() <= 1.2
    v = m.bias_energy_kJ(ctx)
    assert v > 0.5
    m.deposit(ctx)  # the second, at the same CV, is scaled by exp(-V / (k dT)), dT = (gamma - 1) T
    np.testing.assert_allclose(m._total_bias - first, first * np.exp(-v / (0.00831446261815324 * 300 * 5)),
                               atol=1e-12)
    assert m.n_deposits == 2


def test_metad_run_snapshots_carry_increasing_wall_times(tmp_path, aldp_view):
    st = MetadynamicsSettings(n_steps=1500, deposit_every_steps=100, snapshot_every_steps=500, seed=3,
                              **{k: v for k, v in default_settings("alanine-dipeptide").items()
                                 if k != "deposit_every_steps"})
    info = MetadynamicsRun(aldp_view, tmp_path / "m", st, progress=False).run()
    hist = read_history(tmp_path / "m")
    assert [h.evaluations for h in hist] == [501, 1001, 1501]
    w = np.array([h.wall_time_s for h in hist])
    assert np.all(np.isfinite(w)) and w[0] > 0 and np.all(np.diff(w) > 0)
    assert w[-1] == pytest.approx(info["wall_time_s"])
    saved = json.loads((tmp_path / "m" / "metad.json").read_text())
    assert saved["bias_force"].startswith("CustomCompoundBondForce") and saved["n_deposits"] == 15
    assert saved["setup_time_s"] > 0 and saved["snapshot_time_s"] >= 0 and saved["steps_per_s"] > 0
    assert saved["finished"] and saved["steps_done"] == 1500 and saved["evaluations"] == 1501
    # the benchmark's curve reader (benchmarks/metad_aldp.py) against the shipped reference
    spec = importlib.util.spec_from_file_location("metad_aldp", ROOT / "benchmarks" / "metad_aldp.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules["metad_aldp"] = mod
    spec.loader.exec_module(mod)
    c = mod.kld_curves(tmp_path / "m", mod.REFERENCE)
    assert list(c["evaluations"]) == [501, 1001, 1501] and list(c["step"]) == [500, 1000, 1500]
    np.testing.assert_allclose(c["wall_time_s"], w)
    assert np.all(np.isfinite(c["forward_kld"])) and np.all(c["forward_kld"] > 0)
    csv = mod.write_curves_csv([tmp_path / "m"], tmp_path / "curves.csv")
    lines = csv.read_text().splitlines()
    assert lines[0] == "seed,step,evaluations,wall_time_s,forward_kld" and lines[1].startswith("3,500,501,")


def test_cli_metad_aldp_uses_tuned_defaults(tmp_path):
    from cgflow.cli import app as cli_app

    r = CliRunner().invoke(cli_app, ["metad", "aldp", "--out", str(tmp_path / "a"), "--steps", "1000",
                                     "--snapshot-every", "500"])
    assert r.exit_code == 0, r.output
    st = json.loads((tmp_path / "a" / "metad.json").read_text())["settings"]
    tuned = default_settings("alanine-dipeptide")
    assert {k: st[k] for k in tuned} == pytest.approx(tuned)
    assert tuned != GENERIC_DEFAULTS
    r = CliRunner().invoke(cli_app, ["metad", "aldp", "--out", str(tmp_path / "b"), "--steps", "1000",
                                     "--snapshot-every", "500", "--bias-factor", "9", "--deposit-every", "250"])
    assert r.exit_code == 0, r.output
    st = json.loads((tmp_path / "b" / "metad.json").read_text())["settings"]
    assert st["bias_factor"] == 9 and st["deposit_every_steps"] == 250
    assert st["height_kT"] == pytest.approx(tuned["height_kT"]) and st["timestep_fs"] == 2.0
    assert default_settings("muller-brown") == GENERIC_DEFAULTS


def test_cpu_core_pins_the_run_and_restores_affinity(tmp_path, aldp_view, monkeypatch):
    import os

    before = os.sched_getaffinity(0)
    core = min(before)
    seen = []
    orig = MetadynamicsRun._run

    def spy(self, cpu_core):
        seen.append(os.sched_getaffinity(0))
        return orig(self, cpu_core)

    monkeypatch.setattr(MetadynamicsRun, "_run", spy)
    st = MetadynamicsSettings(n_steps=200, deposit_every_steps=100, snapshot_every_steps=200)
    info = MetadynamicsRun(aldp_view, tmp_path / "m", st, progress=False).run(cpu_core=core)
    assert seen == [{core}] and info["cpu_core"] == core
    assert os.sched_getaffinity(0) == before
