"""Peptides from a sequence (cgflow.systems.molecules.peptide_builder, from_sequence, MoleculeConfig.sequence):
tleap builds ACE-(ALA)3-NME; cgflow's energies agree with OpenMM on the same files; CG dihedrals by name and
residue equal mdtraj's; bad input gives clear errors."""

from __future__ import annotations

import importlib.metadata
import json
import math

import mdtraj as md
import numpy as np
import openmm
import openmm.app as app
import openmm.unit as unit
import pytest
import torch
from pydantic import ValidationError

from cgflow.systems.molecules import peptide_builder as pb
from cgflow.systems.molecules.config import MoleculeConfig, build_molecule_system
from cgflow.systems.molecules.molecule_system import from_sequence
from conftest import run_cgflow

SEQ = "ACE ALA ALA ALA NME"
CG6 = ["phi:1", "psi:1", "phi:2", "psi:2", "phi:3", "psi:3"]  # mdtraj residue index: ACE = 0
KT = (unit.MOLAR_GAS_CONSTANT_R * 300.0 * unit.kelvin).value_in_unit(unit.kilojoule_per_mole)


@pytest.fixture(scope="module")
def files(cache):
    return pb.build_peptide(SEQ, "ff14SB", "OBC1")


@pytest.fixture(scope="module")
def ala4(cache):
    return from_sequence(SEQ, CG6, progress=False, md_ps=0.2)


def _direct_openmm(prmtop_path: str, solvent) -> openmm.System:
    return app.AmberPrmtopFile(prmtop_path).createSystem(nonbondedMethod=app.NoCutoff, implicitSolvent=solvent,
                                                         constraints=None)


def _openmm_reduced(system: openmm.System, xs: np.ndarray) -> np.ndarray:
    ctx = openmm.Context(system, openmm.VerletIntegrator(0.001), openmm.Platform.getPlatformByName("Reference"))
    out = []
    for x in xs:
        ctx.setPositions(np.asarray(x, dtype=np.float64))
        out.append(ctx.getState(getEnergy=True).getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole) / KT)
    return np.array(out)


def _configurations(m, n: int = 4) -> np.ndarray:
    """(n, N, 3) nm: the minimized structure, the tleap structure and randomly displaced copies."""
    rng = np.random.default_rng(1)
    base = m.minimized_positions
    xs = [base, m.input_positions] + [base + 0.01 * rng.standard_normal(base.shape) for _ in range(n - 2)]
    return np.stack(xs)


def test_build_writes_a_capped_tetrapeptide_and_caches_it(files, cache):
    prmtop, inpcrd = files
    top = app.AmberPrmtopFile(prmtop).topology
    assert [r.name for r in top.residues()] == ["ACE", "ALA", "ALA", "ALA", "NME"]
    assert top.getNumAtoms() == 42
    assert "mbondi2" in open(prmtop).read()  # radii of OBC1 = Amber igb=2
    assert app.AmberInpcrdFile(inpcrd).getPositions(asNumpy=True).shape == (42, 3)
    assert pb.build_peptide(SEQ, "ff14SB", "OBC1") == files  # cached: same files
    assert str(cache) in prmtop
    assert pb.build_peptide(SEQ, "ff96", "OBC1")[0] != prmtop  # another force field, another entry


@pytest.mark.parametrize("solvent", ["OBC1", "OBC2", "none"])
def test_torch_energy_agrees_with_openmm_on_the_same_files(cache, solvent):
    m = from_sequence(SEQ, ["phi:1", "psi:1"], implicit_solvent=solvent, progress=False)
    prmtop, _ = pb.build_peptide(SEQ, "ff14SB", solvent)
    xs = _configurations(m)
    ref = _openmm_reduced(_direct_openmm(prmtop, None if solvent == "none" else getattr(app, solvent)), xs)
    got = m.reduced_energy(torch.as_tensor(xs)).detach().numpy()
    assert np.all(np.isfinite(ref)) and np.ptp(ref) > 1.0  # distinct configurations
    np.testing.assert_allclose(got, ref, rtol=0, atol=1e-6 * max(1.0, np.abs(ref).max()))


@pytest.mark.slow
def test_openmm_pool_agrees_with_direct_openmm(cache, files):
    with from_sequence(SEQ, ["phi:1", "psi:1"], energy_backend="openmm", n_workers=1, progress=False) as m:
        xs = _configurations(m, 3)
        got = m.reduced_energy(torch.as_tensor(xs)).detach().numpy()
    ref = _openmm_reduced(_direct_openmm(files[0], app.OBC1), xs)
    # the pool runs OpenMM's CPU platform (single-precision nonbonded kernels) against Reference here
    np.testing.assert_allclose(got, ref, rtol=0, atol=2e-3)


def test_cg_dihedrals_by_residue_equal_mdtraj(ala4, files):
    assert ala4.cg_dim == 6 and list(ala4.cg_names) == CG6
    rng = np.random.default_rng(2)
    xs = np.stack([ala4.minimized_positions] + [ala4.minimized_positions + 0.03 * rng.standard_normal((42, 3))
                                                for _ in range(5)])
    s, _ = ala4.to_internal(torch.as_tensor(xs))
    traj = md.Trajectory(xs, md.Topology.from_openmm(app.AmberPrmtopFile(files[0]).topology))
    _, phi = md.compute_phi(traj)
    _, psi = md.compute_psi(traj)
    want = np.stack([phi[:, 0], psi[:, 0], phi[:, 1], psi[:, 1], phi[:, 2], psi[:, 2]], axis=1)
    diff = np.angle(np.exp(1j * (s.numpy() - want)))  # wrapped difference, keeps the sign
    assert np.abs(diff).max() < 1e-5
    assert np.abs(want).max() > 2.0  # angles far from 0: a sign error would show
    # the same residues by name + number as in the file (1-based: ALA2 is the first alanine)
    m = from_sequence(SEQ, ["phi:ALA2", "psi:ALA4"], progress=False)
    assert m.cg_atoms == [ala4.cg_atoms[0], ala4.cg_atoms[5]]


def test_ambiguous_dihedral_without_residue_is_an_error(cache):
    with pytest.raises(ValueError, match="found 3 phi dihedrals"):
        from_sequence(SEQ, ["phi"], progress=False)


def test_config_builds_the_molecule(cache):
    cfg = MoleculeConfig(sequence=SEQ, cg=["phi:2", "psi:2"], md_ps=0.2)
    m = build_molecule_system(cfg)
    assert m.name == "ACE-ALA-ALA-ALA-NME" and m.cg_dim == 2 and m.n_atoms == 42
    ref = _openmm_reduced(_direct_openmm(pb.build_peptide(SEQ)[0], app.OBC1), m.minimized_positions[None])
    assert float(m.reduced_energy(torch.as_tensor(m.minimized_positions)[None])) == pytest.approx(ref[0], abs=1e-6)
    assert math.isfinite(ref[0])


@pytest.mark.parametrize("kw, msg", [
    (dict(sequence=SEQ, forcefield=["amber14-all.xml"]), "forcefield is a name"),
    (dict(sequence=SEQ, forcefield="ff42"), "unknown peptide forcefield 'ff42'"),
    (dict(sequence=SEQ, pdb="x.pdb"), "sequence cannot be combined with pdb"),
    (dict(preset="alanine-dipeptide", sequence=SEQ), "cannot be combined with sequence"),
    (dict(pdb="x.pdb", forcefield="ff14SB"), "needs sequence"),
    (dict(preset="alanine-dipeptide", implicit_solvent="OBC2"), "implicit_solvent applies to"),
    (dict(sequence="ACE AL;A NME"), "invalid residue name"),
    (dict(sequence=SEQ, implicit_solvent="GBn2"), "implicit_solvent"),
])
def test_config_errors(kw, msg):
    with pytest.raises(ValidationError, match=msg):
        MoleculeConfig(**kw)


def test_unknown_residue_shows_tleap_error(cache):
    with pytest.raises(pb.PeptideBuildError, match="Illegal UNIT named: XYZ"):
        pb.build_peptide("ACE XYZ NME")


def test_unknown_forcefield_and_solvent(cache):
    with pytest.raises(pb.PeptideBuildError, match="unknown peptide force field"):
        pb.build_peptide(SEQ, "ff42")
    with pytest.raises(pb.PeptideBuildError, match="unknown implicit solvent"):
        pb.build_peptide(SEQ, "ff14SB", "GBn2")


def test_missing_ambertools_is_a_clear_error(cache, monkeypatch):
    def missing(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "version", missing)
    with pytest.raises(pb.PeptideBuildError, match=r"pip install 'cgflow\[peptides\]'"):
        pb.build_peptide("ACE ALA NME", "ff99SB")  # not in the cache: needs tleap


def _cgflow(*args, cwd, env):
    return run_cgflow(*args, cwd=cwd, extra_env=env, timeout=300)


@pytest.mark.slow
def test_cli_md_baseline_on_the_ala4_preset(cache, tmp_path):
    env = {"CGFLOW_CACHE_DIR": str(cache), "OMP_NUM_THREADS": "1"}
    r = _cgflow("md", "ala4", "--out", "md", "--steps", "200", "--report-every", "50", cwd=tmp_path, env=env)
    assert r.returncode == 0, r.stderr
    info = json.loads((tmp_path / "md" / "md.json").read_text())
    assert info["evaluations"] == 201 and info["cg_names"] == CG6
    traj = np.concatenate([np.load(p) for p in sorted((tmp_path / "md" / "cg_trajectory").glob("*.npy"))])
    assert traj.shape == (4, 1, 6) and np.all(np.abs(traj) <= math.pi)
    r = _cgflow("md", "ala4", "--set", "sequence=ACE XYZ NME", "--out", "bad", "--steps", "10", cwd=tmp_path, env=env)
    assert r.returncode != 0 and "Illegal UNIT named: XYZ" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and not (tmp_path / "bad").exists()
