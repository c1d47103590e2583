"""Tests for cgflow.systems.molecules.ic.chirality (chiral centres from the bond graph, batched check)."""

from __future__ import annotations

import mdtraj as md
import numpy as np
import openmm.app as app
import pytest
import torch

from cgflow.systems.molecules.ic.chirality import ChiralityCheck, find_chiral_centers, signed_volumes
from cgflow.systems.molecules.molecule_system import package_data_file
from cgflow.systems.molecules.starting_data import md_starting_data


@pytest.fixture(scope="module")
def ala():
    return md.load(package_data_file("alanine-dipeptide", "alanine-dipeptide.pdb"))


@pytest.fixture(scope="module")
def md_frames(ala, tmp_path_factory):
    mp = pytest.MonkeyPatch()
    mp.setenv("CGFLOW_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))
    prmtop = app.AmberPrmtopFile(package_data_file("alanine-dipeptide", "alanine-dipeptide.prmtop"))
    system = prmtop.createSystem(nonbondedMethod=app.NoCutoff, implicitSolvent=app.OBC1, constraints=None)
    try:
        data = md_starting_data(system, ala.xyz[0].astype(np.float64), md_ps=0.5, seed=3, progress=False)
    finally:
        mp.undo()
    return torch.as_tensor(data.positions)


def test_ca_is_the_only_centre_of_alanine_dipeptide(ala):
    check = ChiralityCheck(ala.topology, ala.xyz[0])
    assert check.n_centers == 1 and check.names == ["ALA2-CA"]
    ca = ala.topology.select("name CA")[0]
    (c, nb), = check.centers
    assert c == ca and len(nb) == 4 and list(nb) == sorted(nb)


def test_mirror_image_rejected_md_frames_accepted(ala, md_frames):
    check = ChiralityCheck(ala.topology, ala.xyz[0])
    assert check.chirality_ok(md_frames).all()
    mirror = md_frames.clone()
    mirror[..., 0] = -mirror[..., 0]
    assert not check.chirality_ok(mirror).any()
    # proper rotations and translations keep it; NaN is rejected
    rot = torch.tensor([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]], dtype=torch.float64)
    assert check.chirality_ok(md_frames @ rot.T + 3.0).all()
    bad = md_frames[:4].clone()
    bad[2, 8, 0] = float("nan")
    assert check.chirality_ok(bad).tolist() == [True, True, False, True]
    # the signed volume has the reference sign everywhere in the MD
    vol = signed_volumes(md_frames, check._idx)
    assert (torch.sign(vol) == check.reference_signs).all()


def test_graph_rules():
    # C0 with H, F, Cl, Br: chiral
    assert [c for c, _ in find_chiral_centers([(0, 1), (0, 2), (0, 3), (0, 4)], ["C", "H", "F", "Cl", "Br"])] == [0]
    # C0 with H, H, F, Cl: not chiral
    assert find_chiral_centers([(0, 1), (0, 2), (0, 3), (0, 4)], ["C", "H", "H", "F", "Cl"]) == []
    # 3-methylhexane C3: H, methyl, ethyl, propyl differ only beyond the first atom
    elements = ["C"] * 7 + ["H"]
    bonds = [(0, 1), (1, 2), (2, 3), (3, 4), (4, 5), (2, 6), (2, 7)]  # heavy skeleton + the H on C2
    centres = find_chiral_centers(bonds, elements)
    assert [c for c, _ in centres] == [2]
    # ethyl vs propyl differ at depth 2 only: with depth 1 they look the same
    assert find_chiral_centers(bonds, elements, max_depth=1) == []
