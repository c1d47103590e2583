"""Tests for cgflow.systems.molecules.molecule_system (MoleculeSystem), starting data and MoleculeConfig."""

from __future__ import annotations

import math
import time

import mdtraj as md
import numpy as np
import openmm
import openmm.app as app
import openmm.unit as unit
import pytest
import torch
from pydantic import ValidationError

from cgflow.core.system import ReferencePMF, System
from cgflow.systems.molecules import starting_data as sdmod
from cgflow.systems.molecules.config import MoleculeConfig, build_molecule_system
from cgflow.systems.molecules.molecule_system import (
    MoleculeSystem,
    alanine_dipeptide,
    from_amber,
    from_pdb_and_forcefield,
    package_data_file,
)

MD_PS = 0.5


@pytest.fixture(scope="module")
def ala(cache):
    return alanine_dipeptide(md_ps=MD_PS, progress=False)


@pytest.fixture(scope="module")
def ala_openmm(cache):
    with alanine_dipeptide(md_ps=MD_PS, progress=False, energy_backend="openmm", n_workers=2) as m:
        yield m


@pytest.fixture(scope="module")
def frames(ala):
    return ala.starting_data(0).x


def _openmm_reduced_energies(system: openmm.System, xs, temperature_K=300.0) -> np.ndarray:
    ctx = openmm.Context(system, openmm.VerletIntegrator(0.001), openmm.Platform.getPlatformByName("Reference"))
    kT = (unit.MOLAR_GAS_CONSTANT_R * temperature_K * unit.kelvin).value_in_unit(unit.kilojoule_per_mole)
    out = []
    for x in np.asarray(xs):
        ctx.setPositions(x)
        out.append(ctx.getState(getEnergy=True).getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole) / kT)
    return np.array(out)


def test_protocol_and_sizes(ala):
    assert isinstance(ala, System)
    assert ala.name == "alanine-dipeptide" and ala.cg_names == ("phi", "psi")
    assert ala.cg_dim == 2 and ala.fg_dim == 3 * 22 - 6 - 2
    assert ala.cg_periodic == (True, True) and len(ala.fg_periodic) == ala.fg_dim
    assert ala.fg_periodic == tuple(ala.zmatrix.circular_mask[ala.zmatrix.fg_indices])
    assert ala.cg_domain == ((-math.pi, math.pi),) * 2
    assert len(ala.default_mc_start) == 2 and all(-math.pi <= v < math.pi for v in ala.default_mc_start)
    assert ala.reference() is None


def test_roundtrip_and_cg_values(ala, frames):
    assert frames.shape == (50, 22, 3) and frames.dtype == torch.float64
    s, x_fg = ala.to_internal(frames)
    assert s.shape == (50, 2) and x_fg.shape == (50, ala.fg_dim)
    x, log_det = ala.from_internal(s, x_fg)
    assert x.shape == frames.shape and torch.isfinite(log_det).all()
    torch.testing.assert_close(torch.cdist(x, x), torch.cdist(frames, frames), rtol=0, atol=1e-10)
    # the periodic FG coordinates are raw angles in [-pi, pi)
    per = torch.tensor(ala.fg_periodic)
    assert (x_fg[:, per] >= -math.pi).all() and (x_fg[:, per] < math.pi).all()
    # s equals mdtraj's phi / psi (mdtraj computes in float32)
    traj = md.Trajectory(frames.numpy(), ala.topology)
    ref = np.stack([md.compute_phi(traj)[1][:, 0], md.compute_psi(traj)[1][:, 0]], axis=1)
    diff = np.remainder(s.numpy() - ref + np.pi, 2 * np.pi) - np.pi
    assert np.abs(diff).max() < 2e-6
    # the default MC start is the CG value of the minimized structure
    s_min, _ = ala.to_internal(torch.as_tensor(ala.minimized_positions)[None])
    assert tuple(s_min[0].tolist()) == ala.default_mc_start


def test_log_target_matches_openmm_torch_backend(ala, frames):
    s, x_fg = ala.to_internal(frames[:20])
    _, log_det = ala.from_internal(s, x_fg)
    x_fg = x_fg.clone().requires_grad_(True)
    lt = ala.log_target(s, x_fg)
    expected = -_openmm_reduced_energies(ala.openmm_system, frames[:20]) + log_det.numpy()
    np.testing.assert_allclose(lt.detach().numpy(), expected, rtol=0, atol=1e-5)
    (g,) = torch.autograd.grad(lt.sum(), x_fg)
    assert torch.isfinite(g).all() and g.abs().max() > 0


@pytest.mark.slow
def test_log_target_matches_openmm_openmm_backend(ala, ala_openmm, frames):
    s, x_fg = ala_openmm.to_internal(frames[:20])
    _, log_det = ala_openmm.from_internal(s, x_fg)
    x_fg_o = x_fg.clone().requires_grad_(True)
    lt = ala_openmm.log_target(s, x_fg_o)
    expected = -_openmm_reduced_energies(ala_openmm.openmm_system, frames[:20]) + log_det.numpy()
    np.testing.assert_allclose(lt.detach().numpy(), expected, rtol=0, atol=2e-4)  # CPU platform: mixed precision
    (g,) = torch.autograd.grad(lt.sum(), x_fg_o)
    assert torch.isfinite(g).all()
    # same gradient as the torch backend (to the CPU platform's force precision)
    x_fg_t = x_fg.clone().requires_grad_(True)
    (g_t,) = torch.autograd.grad(ala.log_target(s, x_fg_t).sum(), x_fg_t)
    assert (g - g_t).abs().max() < 1e-4 * g_t.abs().max()


def test_valid_is_chirality(ala, frames):
    s, x_fg = ala.to_internal(frames[:10])
    assert ala.valid(s, x_fg).all()
    s_m, x_fg_m = ala.to_internal(-frames[:10])  # mirror images
    assert not ala.valid(s_m, x_fg_m).any()
    x_fg_bad = x_fg.clone()
    x_fg_bad[3, 0] = float("nan")
    assert ala.valid(s, x_fg_bad).tolist() == [i != 3 for i in range(10)]


def test_starting_data_cached_and_reproducible(ala, cache, monkeypatch):
    calls = []
    real = sdmod._run_md
    monkeypatch.setattr(sdmod, "_run_md", lambda *a, **k: calls.append(1) or real(*a, **k))
    d1 = ala.starting_data(7)
    assert len(calls) == 1 and d1.n_energy_evaluations == int(MD_PS * 1000)
    assert d1.x.shape == (int(MD_PS * 1000) // 10, 22, 3)
    t0 = time.perf_counter()
    d2 = ala.starting_data(7)
    assert len(calls) == 1 and time.perf_counter() - t0 < 1.0  # from the cache
    assert torch.equal(d1.x, d2.x) and d2.n_energy_evaluations == d1.n_energy_evaluations
    assert "cached" in d2.description
    assert not list(cache.glob("*.tmp"))
    # the same seed without the cache reproduces the run; another seed does not
    again = sdmod.md_starting_data(ala.openmm_system, ala.input_positions, md_ps=MD_PS, seed=7, use_cache=False,
                                   progress=False)
    assert len(calls) == 2 and np.array_equal(again.positions, d1.x.numpy())
    other = ala.starting_data(8)
    assert len(calls) == 3 and not torch.equal(other.x, d1.x)


def test_bad_specs_and_files(cache):
    with pytest.raises(ValueError, match="chi1"):
        alanine_dipeptide(cg=["phi", "chi1"], progress=False)
    with pytest.raises(ValueError, match="'tau'"):
        alanine_dipeptide(cg=["tau"], progress=False)
    with pytest.raises(ValueError, match=r"\(0, 1, 2, 3\)"):  # not a chain of bonded atoms
        alanine_dipeptide(cg=[(0, 1, 2, 3)], progress=False)
    with pytest.raises(FileNotFoundError, match="nope.prmtop"):
        from_amber("nope.prmtop", package_data_file("alanine-dipeptide", "alanine-dipeptide.pdb"))
    with pytest.raises(FileNotFoundError, match="missing.pdb"):
        from_pdb_and_forcefield("missing.pdb", ["amber14-all.xml"])


def test_cg_by_atom_indices_and_residue(ala, cache):
    phi = tuple(ala.cg_atoms[0])
    m = alanine_dipeptide(cg=[phi, "psi:ALA2"], progress=False, md_ps=MD_PS)
    assert m.cg_atoms == ala.cg_atoms and m.cg_names[1] == "psi:ALA2"
    assert m.default_mc_start == ala.default_mc_start


def test_reference_file(ala, tmp_path):
    edges = np.linspace(-np.pi, np.pi, 101)
    prob = np.random.default_rng(0).random((100, 100))
    np.savez(tmp_path / "ref.npz", edges=edges, prob=prob / prob.sum())
    m = MoleculeSystem(ala.topology, ala.openmm_system, ala.input_positions, reference_path=tmp_path / "ref.npz",
                       progress=False)
    ref = m.reference()
    assert isinstance(ref, ReferencePMF) and len(ref.edges) == 2 and ref.prob.shape == (100, 100)
    np.testing.assert_array_equal(ref.edges[0], edges)


def _glycine_dipeptide_pdb(path) -> None:
    """ACE-GLY-NME from the alanine dipeptide pdb: delete CB/HB*/HA, rename, add the H atoms."""
    pdb = app.PDBFile(package_data_file("alanine-dipeptide", "alanine-dipeptide.pdb"))
    ff = app.ForceField("amber14-all.xml", "implicit/obc1.xml")
    mod = app.Modeller(pdb.topology, pdb.positions)
    ala_res = list(mod.topology.residues())[1]
    mod.delete([a for a in ala_res.atoms() if a.name in ("CB", "HA") or "HB" in a.name])
    list(mod.topology.residues())[1].name = "GLY"
    mod.addHydrogens(ff)
    with open(path, "w") as fh:
        app.PDBFile.writeFile(mod.topology, mod.positions, fh)


def test_second_molecule_from_pdb_and_forcefield(tmp_path, cache):
    pdb = tmp_path / "gly.pdb"
    _glycine_dipeptide_pdb(pdb)
    m = from_pdb_and_forcefield(pdb, ["amber14-all.xml", "implicit/obc1.xml"], ["phi", "psi"], md_ps=0.2,
                                progress=False)
    assert m.n_atoms == 19 and m.fg_dim == 3 * 19 - 8 and m.chirality.n_centers == 0
    data = m.starting_data(0)
    s, x_fg = m.to_internal(data.x)
    x, log_det = m.from_internal(s, x_fg)
    torch.testing.assert_close(torch.cdist(x, x), torch.cdist(data.x, data.x), rtol=0, atol=1e-10)
    expected = -_openmm_reduced_energies(m.openmm_system, data.x) + log_det.numpy()
    np.testing.assert_allclose(m.log_target(s, x_fg).numpy(), expected, rtol=0, atol=1e-5)
    assert m.valid(s, x_fg).all()


def test_config(cache):
    with pytest.raises(ValidationError, match="give preset"):
        MoleculeConfig()
    with pytest.raises(ValidationError, match="cannot be combined"):
        MoleculeConfig(preset="alanine-dipeptide", prmtop="x.prmtop")
    with pytest.raises(ValidationError, match="extra"):
        MoleculeConfig(preset="alanine-dipeptide", cutoff=1.0)
    with pytest.raises(ValidationError):
        MoleculeConfig(preset="alanine-dipeptide", energy_backend="gromacs")
    MoleculeConfig(prmtop="a.prmtop", pdb="a.pdb")
    MoleculeConfig(pdb="a.pdb", forcefield=["amber14-all.xml", "implicit/obc1.xml"])
    cfg = MoleculeConfig(preset="alanine-dipeptide", cg=["phi", "psi"], md_ps=MD_PS, dtype="float32")
    m = build_molecule_system(cfg, "cpu")
    assert isinstance(m, MoleculeSystem) and m.cg_names == ("phi", "psi") and m.energy.dtype == torch.float32
    cfg2 = MoleculeConfig(prmtop=package_data_file("alanine-dipeptide", "alanine-dipeptide.prmtop"),
                          pdb=package_data_file("alanine-dipeptide", "alanine-dipeptide.pdb"), cg=["psi"])
    m2 = build_molecule_system(cfg2, "cpu")
    assert m2.cg_dim == 1 and m2.fg_dim == 3 * 22 - 7
