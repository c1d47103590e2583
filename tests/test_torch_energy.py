"""TorchEnergy (batched PyTorch re-implementation of an OpenMM System) against OpenMM itself.

Reference: OpenMM's Reference platform (double precision).  Alanine dipeptide in OBC1 implicit
solvent, built exactly as ``createSystem(nonbondedMethod=NoCutoff, implicitSolvent=OBC1,
constraints=None)``.
"""

from __future__ import annotations

import importlib.resources
import math
import sys
from pathlib import Path

import numpy as np
import openmm
import openmm.app as app
import openmm.unit as unit
import pytest
import torch

try:
    import cgflow  # noqa: F401
except ImportError:  # not installed: run from the source tree
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from cgflow.systems.molecules.energy.torch_energy import (  # noqa: E402
    MOLAR_GAS_CONSTANT_KJ,
    ONE_4PI_EPS0,
    TorchEnergy,
    UnsupportedForceError,
)

KJ = unit.kilojoule_per_mole
KJ_NM = unit.kilojoule_per_mole / unit.nanometer
# float32 tolerances.  Measured on 100 MD frames + 50 noisy (0.02 nm) frames: |dE| <= 2.4e-4 kJ/mol
# on MD frames (|E| ~ 1e2) and <= 2.5e-3 kJ/mol (5e-7 relative) on noisy ones (E ~ 1.5e3-6e3);
# max force error <= 4e-5 of the frame's max |F|.
F32_ENERGY_ABS, F32_ENERGY_REL = 1e-3, 1e-6  # |dE| <= ABS + REL * |E|, kJ/mol
F32_FORCE_REL = 2e-4  # of the frame's max |F|


def _data(name: str) -> str:
    return str(importlib.resources.files("cgflow") / "data" / "alanine-dipeptide" / name)


def _build_system(**kw) -> openmm.System:
    prmtop = app.AmberPrmtopFile(_data("alanine-dipeptide.prmtop"))
    args = dict(nonbondedMethod=app.NoCutoff, implicitSolvent=app.OBC1, constraints=None)
    args.update(kw)
    return prmtop.createSystem(**args)


def _reference_context(system: openmm.System) -> openmm.Context:
    return openmm.Context(system, openmm.VerletIntegrator(0.001), openmm.Platform.getPlatformByName("Reference"))


def _openmm_eval(context: openmm.Context, xs: np.ndarray, groups=None):
    """Energies (B,) kJ/mol and forces (B, N, 3) kJ/mol/nm from OpenMM."""
    es, fs = [], []
    for x in xs:
        context.setPositions(x)
        kw = {} if groups is None else {"groups": groups}
        st = context.getState(getEnergy=True, getForces=True, **kw)
        es.append(st.getPotentialEnergy().value_in_unit(KJ))
        fs.append(st.getForces(asNumpy=True).value_in_unit(KJ_NM))
    return np.array(es), np.array(fs)


@pytest.fixture(scope="module")
def system() -> openmm.System:
    s = _build_system()
    for i, f in enumerate(s.getForces()):
        f.setForceGroup(i)
    return s


@pytest.fixture(scope="module")
def x_pdb() -> np.ndarray:
    pdb = app.PDBFile(_data("alanine-dipeptide.pdb"))
    return np.array(pdb.getPositions(asNumpy=True).value_in_unit(unit.nanometer))


@pytest.fixture(scope="module")
def frames(system, x_pdb) -> np.ndarray:
    """10 MD frames (300 K, Langevin 1/ps, 1 fs, 50 steps apart) + 6 noisy (0.01/0.02 nm) frames."""
    integ = openmm.LangevinMiddleIntegrator(300 * unit.kelvin, 1 / unit.picosecond, 1 * unit.femtosecond)
    integ.setRandomNumberSeed(2024)
    ctx = openmm.Context(system, integ, openmm.Platform.getPlatformByName("Reference"))
    ctx.setPositions(x_pdb)
    ctx.setVelocitiesToTemperature(300 * unit.kelvin, 7)
    md = []
    for _ in range(10):
        integ.step(50)
        md.append(ctx.getState(getPositions=True).getPositions(asNumpy=True).value_in_unit(unit.nanometer))
    md = np.array(md)
    rng = np.random.default_rng(0)
    noisy = np.concatenate([md[:3] + rng.normal(0, 0.01, md[:3].shape), md[3:6] + rng.normal(0, 0.02, md[3:6].shape)])
    return np.concatenate([x_pdb[None], md, noisy])


@pytest.fixture(scope="module")
def reference(system, frames):
    return _openmm_eval(_reference_context(system), frames)


@pytest.fixture(scope="module")
def te64(system) -> TorchEnergy:
    return TorchEnergy(system, temperature_K=300.0)


def _assert_close(e, f, e_ref, f_ref, rel: float):
    de = np.abs(e - e_ref)
    assert np.all(de <= rel * np.maximum(1.0, np.abs(e_ref))), (de, e_ref)
    fmax = np.abs(f_ref).reshape(len(f_ref), -1).max(-1)
    df = np.abs(f - f_ref).reshape(len(f_ref), -1).max(-1)
    assert np.all(df <= rel * fmax), (df, fmax)


def test_pdb_energy(te64, system, x_pdb):
    e_ref, _ = _openmm_eval(_reference_context(system), x_pdb[None])
    assert abs(e_ref[0] - (-138.99)) < 0.01
    e = te64.energy_kJ_per_mol(torch.tensor(x_pdb[None])).numpy()
    assert e.shape == (1,)
    assert abs(e[0] - e_ref[0]) <= 1e-5 * max(1.0, abs(e_ref[0]))


def test_energies_and_forces_float64(te64, frames, reference):
    e_ref, f_ref = reference
    assert e_ref.max() > 1000.0  # the noisy frames really are high-energy
    e, f = te64.energy_and_forces_kJ_per_mol(torch.tensor(frames))
    assert e.dtype == torch.float64 and e.shape == (len(frames),) and f.shape == frames.shape
    _assert_close(e.numpy(), f.numpy(), e_ref, f_ref, rel=1e-5)
    # in fact agreement is at round-off level
    assert np.abs(e.numpy() - e_ref).max() < 1e-8


def test_each_force_group_float64(te64, system, frames):
    ctx = _reference_context(system)
    terms = te64.energy_terms(torch.tensor(frames))
    assert set(te64.term_names) == {
        "HarmonicBondForce", "HarmonicAngleForce", "PeriodicTorsionForce", "NonbondedForce", "CustomGBForce"
    }
    for name, index in te64.term_force_indices.items():
        e_ref, f_ref = _openmm_eval(ctx, frames, groups={index})
        e = terms[name].numpy()
        assert np.all(np.abs(e - e_ref) <= 1e-5 * np.maximum(1.0, np.abs(e_ref))), name
        x = torch.tensor(frames, requires_grad=True)
        (g,) = torch.autograd.grad(te64.energy_terms(x)[name].sum(), x)
        df = np.abs(-g.numpy() - f_ref).max()
        assert df <= 1e-5 * np.abs(f_ref).max(), (name, df)


def test_float32_error(system, frames, reference):
    """float32: errors are what single precision gives (stated tolerances above)."""
    e_ref, f_ref = reference
    te32 = TorchEnergy(system, temperature_K=300.0, dtype=torch.float32)
    e, f = te32.energy_and_forces_kJ_per_mol(torch.tensor(frames))
    assert e.dtype == torch.float32 and f.dtype == torch.float32
    de = np.abs(e.double().numpy() - e_ref)
    fmax = np.abs(f_ref).reshape(len(f_ref), -1).max(-1)
    df_rel = np.abs(f.double().numpy() - f_ref).reshape(len(f_ref), -1).max(-1) / fmax
    print(f"float32: max |dE| = {de.max():.2e} kJ/mol, max force error / max|F| = {df_rel.max():.2e}")
    assert np.all(de <= F32_ENERGY_ABS + F32_ENERGY_REL * np.abs(e_ref)), de
    assert df_rel.max() < F32_FORCE_REL


def test_reduced_energy_and_forward(te64, frames):
    x = torch.tensor(frames[:3])
    e = te64.energy_kJ_per_mol(x)
    kT = MOLAR_GAS_CONSTANT_KJ * 300.0
    assert math.isclose(MOLAR_GAS_CONSTANT_KJ, 8.314462618e-3, rel_tol=1e-9)
    assert math.isclose(te64.kT, kT)
    torch.testing.assert_close(te64.reduced_energy(x), e / kT)
    torch.testing.assert_close(te64(x), e)
    # float32 input is computed in the module's dtype (float64)
    assert te64.energy_kJ_per_mol(x.float()).dtype == torch.float64


def test_builtin_gbsaobc_force(frames):
    """createSystem(implicitSolvent=OBC2) makes OpenMM's built-in GBSAOBCForce."""
    s = _build_system(implicitSolvent=app.OBC2)
    assert any(isinstance(f, openmm.GBSAOBCForce) for f in s.getForces())
    e_ref, f_ref = _openmm_eval(_reference_context(s), frames[::3])
    e, f = TorchEnergy(s, 300.0).energy_and_forces_kJ_per_mol(torch.tensor(frames[::3]))
    _assert_close(e.numpy(), f.numpy(), e_ref, f_ref, rel=1e-5)


def test_builtin_obc_buried_atom_term():
    """Built-in GBSAOBCForce's extra term for an atom inside another atom's descreening sphere."""
    s = openmm.System()
    gb = openmm.GBSAOBCForce()
    for q, radius, scale in [(0.5, 0.1, 0.8), (-0.3, 0.3, 1.0), (0.2, 0.15, 0.7)]:
        s.addParticle(1.0)
        gb.addParticle(q, radius, scale)
    s.addForce(gb)
    rng = np.random.default_rng(1)
    x = rng.normal(0, 0.1, (6, 3, 3))
    x[:, 0] = x[:, 1] + rng.normal(0, 0.03, (6, 3))  # particle 0 buried in particle 1
    e_ref, f_ref = _openmm_eval(_reference_context(s), x)
    e, f = TorchEnergy(s, 300.0).energy_and_forces_kJ_per_mol(torch.tensor(x))
    _assert_close(e.numpy(), f.numpy(), e_ref, f_ref, rel=1e-9)


def test_obc1_with_salt_and_dielectrics(frames):
    s = _build_system(implicitSolventKappa=1.0 / unit.nanometer, soluteDielectric=2.0, solventDielectric=80.0)
    e_ref, f_ref = _openmm_eval(_reference_context(s), frames[::4])
    e, f = TorchEnergy(s, 300.0).energy_and_forces_kJ_per_mol(torch.tensor(frames[::4]))
    _assert_close(e.numpy(), f.numpy(), e_ref, f_ref, rel=1e-5)


def test_torsion_phase_and_coulomb_constant():
    """Dihedral sign convention (non-symmetric phases) and the Coulomb constant."""
    s = openmm.System()
    for _ in range(4):
        s.addParticle(1.0)
    t = openmm.PeriodicTorsionForce()
    t.addTorsion(0, 1, 2, 3, 3, 0.7, 5.0)
    t.addTorsion(3, 1, 0, 2, 1, -1.3, 2.0)
    s.addForce(t)
    nb = openmm.NonbondedForce()
    nb.setNonbondedMethod(openmm.NonbondedForce.NoCutoff)
    for q in (1.0, -1.0, 0.0, 0.0):
        nb.addParticle(q, 0.3, 0.0)
    s.addForce(nb)
    x = np.random.default_rng(3).normal(0, 0.3, (5, 4, 3))
    e_ref, f_ref = _openmm_eval(_reference_context(s), x)
    e, f = TorchEnergy(s, 300.0).energy_and_forces_kJ_per_mol(torch.tensor(x))
    _assert_close(e.numpy(), f.numpy(), e_ref, f_ref, rel=1e-10)
    assert math.isclose(ONE_4PI_EPS0, 138.935456, rel_tol=1e-7)


def test_unsupported_force_class():
    s = _build_system()
    s.addForce(openmm.CustomExternalForce("x^2"))
    with pytest.raises(UnsupportedForceError, match="CustomExternalForce"):
        TorchEnergy(s, 300.0)
    assert issubclass(UnsupportedForceError, ValueError)


def test_unsupported_cutoff():
    s = _build_system(nonbondedMethod=app.CutoffNonPeriodic, nonbondedCutoff=1.0 * unit.nanometer)
    with pytest.raises(UnsupportedForceError, match="NonbondedForce.*CutoffNonPeriodic"):
        TorchEnergy(s, 300.0)


@pytest.mark.filterwarnings("ignore:Non-optimal GB parameters")
def test_unsupported_options():
    s = _build_system()
    nb = next(f for f in s.getForces() if isinstance(f, openmm.NonbondedForce))
    nb.addGlobalParameter("lambda", 0.0)
    nb.addParticleParameterOffset("lambda", 0, 0.1, 0.0, 0.0)
    with pytest.raises(UnsupportedForceError, match="NonbondedForce: global parameters"):
        TorchEnergy(s, 300.0)
    s = _build_system(implicitSolvent=app.HCT)  # CustomGBForce with a Born radius we don't know
    with pytest.raises(UnsupportedForceError, match="CustomGBForce"):
        TorchEnergy(s, 300.0)


def test_nan_and_inf_positions(te64, frames):
    x = torch.tensor(frames[:3])
    x[1, 5, 0] = float("nan")
    x[2, 0, 1] = float("inf")
    e = te64.energy_kJ_per_mol(x)
    assert torch.isfinite(e[0]) and torch.isnan(e[1]) and not torch.isfinite(e[2])
    e2, f2 = te64.energy_and_forces_kJ_per_mol(x)
    assert torch.isnan(e2[1]) and torch.isfinite(f2[0]).all()


def test_fullgraph_traceable(te64, frames):
    """No data-dependent control flow: dynamo captures the energy as one graph."""
    f = torch.compile(te64.energy_kJ_per_mol, backend="eager", fullgraph=True)
    x = torch.tensor(frames[:4])
    torch.testing.assert_close(f(x), te64.energy_kJ_per_mol(x))


def test_cpu_chunking_gives_the_same_energies(system, frames):
    te = TorchEnergy(system, temperature_K=300.0)
    x = torch.as_tensor(frames)
    whole = te.energy_kJ_per_mol(x)
    te.cpu_chunk_size = 7
    assert x.shape[0] > 7
    assert torch.allclose(te.energy_kJ_per_mol(x), whole, rtol=0, atol=1e-9)
