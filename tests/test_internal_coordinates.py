"""Tests for cgflow.systems.molecules.ic.internal_coordinates (Z-matrix from a bond graph, exact log-det)."""

from __future__ import annotations

import importlib.resources
import re
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

try:
    import cgflow  # noqa: F401
except ImportError:  # running from a checkout without an installed package
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import mdtraj as md

from cgflow.systems.molecules.ic.internal_coordinates import (
    InternalCoordinateTransform,
    build_zmatrix,
    canonical_frame,
    compute_dihedrals,
    find_dihedral,
    reduced_cartesian,
    wrap_angle,
    zmatrix_from_mdtraj_topology,
)

SHARED = Path("/work/shared/data/alanine-dipeptide")
DT = torch.float64


def _data_file(name: str) -> str:
    try:
        res = importlib.resources.files("cgflow") / "data" / "alanine-dipeptide" / name
        if res.is_file():
            return str(res)
    except Exception:  # pragma: no cover - package data missing
        pass
    path = SHARED / name
    if not path.exists():
        pytest.skip(f"alanine dipeptide data not found ({name})")
    return str(path)


def _random_rotations(n: int, gen: torch.Generator) -> torch.Tensor:
    q, r = torch.linalg.qr(torch.randn(n, 3, 3, generator=gen, dtype=DT))
    q = q * torch.sign(torch.diagonal(r, dim1=-2, dim2=-1)).unsqueeze(-2)
    det = torch.linalg.det(q)
    q[:, :, 0] *= det.unsqueeze(-1)  # proper rotations
    return q


def _pairwise(x: torch.Tensor) -> torch.Tensor:
    return torch.cdist(x, x)


# --------------------------------------------------------------------------------------
# fixtures
# --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ala():
    """(topology, frames (20, 22, 3) float64 nm) from a short OBC1 Langevin MD run."""
    import openmm
    from openmm import app, unit

    prmtop = app.AmberPrmtopFile(_data_file("alanine-dipeptide.prmtop"))
    pdb = app.PDBFile(_data_file("alanine-dipeptide.pdb"))
    system = prmtop.createSystem(nonbondedMethod=app.NoCutoff, implicitSolvent=app.OBC1, constraints=None)
    integ = openmm.LangevinMiddleIntegrator(300 * unit.kelvin, 1 / unit.picosecond, 1 * unit.femtosecond)
    integ.setRandomNumberSeed(1234)
    try:
        platform = openmm.Platform.getPlatformByName("CPU")
        ctx = openmm.Context(system, integ, platform, {"Threads": "1"})
    except Exception:  # pragma: no cover
        ctx = openmm.Context(system, integ, openmm.Platform.getPlatformByName("Reference"))
    ctx.setPositions(pdb.positions)
    openmm.LocalEnergyMinimizer.minimize(ctx, maxIterations=200)
    ctx.setVelocitiesToTemperature(300 * unit.kelvin, 1234)
    integ.step(500)
    frames = []
    for _ in range(20):
        integ.step(100)
        pos = ctx.getState(getPositions=True).getPositions(asNumpy=True).value_in_unit(unit.nanometer)
        frames.append(np.asarray(pos, dtype=np.float64))
    top = md.load_prmtop(_data_file("alanine-dipeptide.prmtop"))
    ref = md.load(_data_file("alanine-dipeptide.pdb")).xyz[0].astype(np.float64)
    return top, torch.tensor(np.stack(frames), dtype=DT), ref


@pytest.fixture(scope="module")
def ala_transform(ala):
    top, _, ref = ala
    zm = zmatrix_from_mdtraj_topology(top, ["phi", "psi"])
    return zm, InternalCoordinateTransform(zm, reference=ref)


def _butane():
    top = md.Topology()
    chain = top.add_chain()
    res = top.add_residue("BUT", chain)
    C, H = md.element.carbon, md.element.hydrogen
    carbons = [top.add_atom(f"C{i + 1}", C, res) for i in range(4)]
    for c0, c1 in zip(carbons[:-1], carbons[1:]):
        top.add_bond(c0, c1)
    nh = {0: 3, 1: 2, 2: 2, 3: 3}
    k = 0
    for ci, count in nh.items():
        for _ in range(count):
            k += 1
            h = top.add_atom(f"H{k}", H, res)
            top.add_bond(carbons[ci], h)
    return top


def _generated_geometry(zm, gen, n_frames=4, noise=0.002):
    """Reasonable geometry from typical ICs (C-C 0.153, C-H 0.109 nm, tetrahedral angles,
    staggered), then Cartesian noise, random rotations and translations."""
    tr = InternalCoordinateTransform(zm)
    names = zm.atom_names
    ic = torch.zeros(1, zm.n_ic, dtype=DT)

    def blen(i, j):
        return 0.153 if names[i][0] == "C" and names[j][0] == "C" else 0.109

    a, b, c = zm.reference_atoms
    ic[0, 0], ic[0, 1], ic[0, 2] = blen(a, b), blen(c, b), np.deg2rad(109.5)
    for m, (x, p, _q, _t) in enumerate(zm.placed):
        ic[0, 3 + 3 * m] = blen(x, p)
        ic[0, 4 + 3 * m] = np.deg2rad(109.5)
        ic[0, 5 + 3 * m] = np.deg2rad(120.0) if zm.dihedral_kinds[m] == "sibling" else np.deg2rad(180.0)
    x, _ = tr.from_internal(ic)
    x = x.expand(n_frames, -1, -1)
    x = x + noise * torch.randn(x.shape, generator=gen, dtype=DT)
    rot = _random_rotations(n_frames, gen)
    return x @ rot + torch.randn(n_frames, 1, 3, generator=gen, dtype=DT)


def _check_logdet_autograd(tr, ic, tol=1e-8):
    """Analytic log|det| of from_internal vs slogdet of the autograd Jacobian of
    IC -> reduced canonical-frame Cartesians; and to_internal's log-det vs the Jacobian of
    reduced Cartesians -> IC."""
    refs = tr.zmatrix.reference_atoms
    _, ld = tr.from_internal(ic)
    for i in range(ic.shape[0]):

        def f(z):
            x, _ = tr.from_internal(z.unsqueeze(0))
            return reduced_cartesian(x, refs)[0]

        jac = torch.autograd.functional.jacobian(f, ic[i])
        assert jac.shape == (tr.n_ic, tr.n_ic)
        sign, logabs = torch.linalg.slogdet(jac)
        assert sign != 0
        assert abs(logabs.item() - ld[i].item()) < tol

    # forward direction: reduced canonical Cartesians -> IC
    x0, _ = tr.from_internal(ic[:1])
    red0 = reduced_cartesian(x0, refs)[0]
    a, b, c = refs
    others = torch.tensor([k for k in range(tr.n_atoms) if k not in refs])

    def g(red):
        x = red.new_zeros(1, tr.n_atoms, 3)
        x = x.index_put((torch.tensor([0]), torch.tensor([a]), torch.tensor([0])), red[0:1])
        x = x.index_put((torch.tensor([0]), torch.tensor([c]), torch.tensor([0])), red[1:2])
        x = x.index_put((torch.tensor([0]), torch.tensor([c]), torch.tensor([1])), red[2:3])
        x = x.index_copy(1, others, red[3:].reshape(1, -1, 3))
        return tr.to_internal(x)[0][0]

    jac = torch.autograd.functional.jacobian(g, red0)
    _, logabs = torch.linalg.slogdet(jac)
    _, ld_fwd = tr.to_internal(x0)
    assert abs(logabs.item() - ld_fwd[0].item()) < tol
    assert abs(ld_fwd[0].item() + ld[0].item()) < tol


# --------------------------------------------------------------------------------------
# alanine dipeptide
# --------------------------------------------------------------------------------------


def test_zmatrix_structure(ala, ala_transform):
    top, _, _ = ala
    zm, tr = ala_transform
    n = top.n_atoms
    assert n == 22 and zm.n_ic == tr.n_ic == 3 * n - 6 == 60
    names = [a.name for a in top.atoms]
    assert [names[i] for i in zm.reference_atoms] in (["N", "CA", "C"], ["C", "CA", "N"])
    # every atom exactly once; references placed before use; rows sorted by generation
    seen = set(zm.reference_atoms)
    bonded = {frozenset(p) for p in ((b[0].index, b[1].index) for b in top.bonds)}
    for (x, p, q, t), _g in zip(zm.placed, zm.generations):
        assert x not in seen and {p, q, t} <= seen
        assert frozenset((x, p)) in bonded and frozenset((p, q)) in bonded
        seen.add(x)
    assert seen == set(range(n))
    assert zm.generations == sorted(zm.generations)
    assert len(set(zm.generations)) < n - 3  # grouped into generations
    # heavy atoms are the bond/angle references of hydrogens
    heavy = [a.element.symbol != "H" for a in top.atoms]
    for x, p, q, _t in zm.placed:
        assert heavy[p] and heavy[q]
    # index helpers
    assert len(zm.bond_indices) == n - 1 and len(zm.angle_indices) == n - 2
    assert len(zm.dihedral_indices) == n - 3
    allidx = np.sort(np.concatenate([zm.bond_indices, zm.angle_indices, zm.dihedral_indices]))
    assert np.array_equal(allidx, np.arange(zm.n_ic))
    assert not zm.circular_mask[zm.bond_indices].any() and not zm.circular_mask[zm.angle_indices].any()
    # phi and psi are circular torsions, found either orientation
    phi = find_dihedral(top, "phi")
    psi = find_dihedral(top, "psi", residue="ALA")
    assert [names[i] for i in phi] == ["C", "N", "CA", "C"]
    assert [names[i] for i in psi] == ["N", "CA", "C", "N"]
    i_phi, i_psi = zm.torsion_index(*phi), zm.torsion_index(*psi)
    assert i_phi == zm.torsion_index(*phi[::-1])
    assert list(zm.torsion_indices) == [i_phi, i_psi]
    assert zm.circular_mask[i_phi] and zm.circular_mask[i_psi]
    assert bool(tr.circular_mask[i_phi]) and bool(tr.circular_mask[i_psi])
    assert i_phi not in zm.fg_indices and len(zm.fg_indices) == 58
    # methyl hydrogens: one primary (circular) torsion, the two others relative to it
    for m, (x, p, q, t) in enumerate(zm.placed):
        if zm.dihedral_kinds[m] == "sibling":
            assert frozenset((t, p)) in bonded and not zm.circular_mask[5 + 3 * m]
    circ_h = [x for m, (x, *_r) in enumerate(zm.placed) if not heavy[x] and zm.circular_mask[5 + 3 * m]]
    assert len(circ_h) == 3  # one per methyl group (ACE, ALA CB, NME)


def test_round_trips(ala, ala_transform):
    _, x, _ = ala
    zm, tr = ala_transform
    gen = torch.Generator().manual_seed(0)
    xr = x @ _random_rotations(x.shape[0], gen) + torch.randn(x.shape[0], 1, 3, generator=gen, dtype=DT)
    ic, ld_fwd = tr.to_internal(xr)
    assert ic.shape == (20, 60) and ic.dtype == DT and ld_fwd.shape == (20,)
    y, ld_inv = tr.from_internal(ic)
    assert y.shape == x.shape
    assert (y - canonical_frame(xr, zm.reference_atoms)).abs().max() < 1e-10
    assert (_pairwise(y) - _pairwise(x)).abs().max() < 1e-10
    assert (ld_fwd + ld_inv).abs().max() < 1e-10
    ic2, _ = tr.to_internal(y)
    assert (ic2 - ic).abs().max() < 1e-10
    # canonical frame: b at origin, a on +x, c in the xy plane with c_y > 0
    a, b, c = zm.reference_atoms
    assert y[:, b].abs().max() < 1e-15
    assert y[:, a, 1:].abs().max() < 1e-15 and (y[:, a, 0] > 0).all()
    assert y[:, c, 2].abs().max() < 1e-15 and (y[:, c, 1] > 0).all()
    # IC -> Cartesian -> IC for perturbed ICs (the flow's outputs)
    ic_p = ic + 0.3 * torch.randn(ic.shape, generator=gen, dtype=DT)
    ic_p = torch.where(tr.circular_mask, wrap_angle(ic_p), ic_p)  # circular ones come back wrapped
    y_p, _ = tr.from_internal(ic_p)
    ic_p2, _ = tr.to_internal(y_p)
    assert (ic_p2 - ic_p).abs().max() < 1e-10


def test_logdet_matches_autograd(ala, ala_transform):
    _, x, _ = ala
    _, tr = ala_transform
    ic, _ = tr.to_internal(x[:3])
    _check_logdet_autograd(tr, ic)
    # also without normalization
    tr_raw = InternalCoordinateTransform(tr.zmatrix)
    ic_raw, _ = tr_raw.to_internal(x[:2])
    _check_logdet_autograd(tr_raw, ic_raw)
    # normalization constant
    ld_n = tr.from_internal(ic[:1])[1]
    ld_r = tr_raw.from_internal(tr_raw.to_internal(x[:1])[0])[1]
    assert abs((ld_n - ld_r).item() - torch.log(tr.std).sum().item()) < 1e-10


def test_dihedrals_match_mdtraj(ala, ala_transform):
    top, x, _ = ala
    zm, tr = ala_transform
    x32 = x.to(torch.float32).to(DT)  # exactly what mdtraj stores (float32)
    traj = md.Trajectory(x32.numpy(), top)
    ic, _ = tr.to_internal(x32)
    _, phi = md.compute_phi(traj)
    _, psi = md.compute_psi(traj)
    got = ic[:, zm.torsion_indices].numpy()
    # mdtraj computes and returns float32: agreement to float32 precision
    d = np.angle(np.exp(1j * (got - np.concatenate([phi, psi], axis=1))))
    assert np.abs(d).max() < 2e-6
    assert (got >= -np.pi).all() and (got < np.pi).all()
    # every dihedral in the IC vector (raw) vs mdtraj.compute_dihedrals on the same atoms
    tr_raw = InternalCoordinateTransform(zm)
    raw, _ = tr_raw.to_internal(x32)
    rows = np.array(zm.placed)
    ref = md.compute_dihedrals(traj, rows)
    d = np.angle(np.exp(1j * (raw[:, zm.dihedral_indices].numpy() - ref)))
    assert np.abs(d).max() < 2e-5
    # and to 1e-10 against the same (IUPAC) formula evaluated in float64
    xn = x32.numpy()
    b1 = xn[:, rows[:, 1]] - xn[:, rows[:, 0]]
    b2 = xn[:, rows[:, 2]] - xn[:, rows[:, 1]]
    b3 = xn[:, rows[:, 3]] - xn[:, rows[:, 2]]
    c1 = np.cross(b2, b3)
    ref64 = np.arctan2((b1 * c1).sum(-1) * np.linalg.norm(b2, axis=-1), (np.cross(b1, b2) * c1).sum(-1))
    d = np.angle(np.exp(1j * (raw[:, zm.dihedral_indices].numpy() - ref64)))
    assert np.abs(d).max() < 1e-10
    # reversed orientation gives the same value
    xt = x32
    r = torch.as_tensor(rows)
    fw = compute_dihedrals(xt[:, r[:, 0]], xt[:, r[:, 1]], xt[:, r[:, 2]], xt[:, r[:, 3]])
    bw = compute_dihedrals(xt[:, r[:, 3]], xt[:, r[:, 2]], xt[:, r[:, 1]], xt[:, r[:, 0]])
    assert (fw - bw).abs().max() < 1e-12


def test_gradients_finite(ala, ala_transform):
    _, x, _ = ala
    _, tr = ala_transform
    ic, _ = tr.to_internal(x[:5])
    ic = ic.detach().requires_grad_(True)
    y, ld = tr.from_internal(ic)
    iu = torch.triu_indices(22, 22, 1)
    d = _pairwise(y)[:, iu[0], iu[1]]
    energy = (1e-3 / d**6).sum() + y.pow(2).sum() - ld.sum()
    (grad,) = torch.autograd.grad(energy, ic)
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0
    xg = x[:5].clone().requires_grad_(True)
    ic2, ld2 = tr.to_internal(xg)
    (g2,) = torch.autograd.grad(ic2.pow(2).sum() + ld2.sum(), xg)
    assert torch.isfinite(g2).all()


def test_impossible_torsion_raises(ala):
    top, _, _ = ala
    # ACE H1 - ALA CA - ALA CB - ALA HB1: the first pair is not bonded
    with pytest.raises(ValueError, match=r"\(0, 8, 10, 11\).*ACE.*H1.*not a chain of bonded atoms"):
        zmatrix_from_mdtraj_topology(top, [(0, 8, 10, 11)])
    with pytest.raises(ValueError, match=r"\(1, 4, 6, 1\)"):
        zmatrix_from_mdtraj_topology(top, [(1, 4, 6, 1)])
    # ethane: 9 bonded H-C-C-H torsions but only 5 dihedrals in a Z-matrix of 8 atoms
    bonds = [(0, 1), (0, 2), (0, 3), (0, 4), (1, 5), (1, 6), (1, 7)]
    all_hcch = [(h, 0, 1, k) for h in (2, 3, 4) for k in (5, 6, 7)]
    with pytest.raises(ValueError, match=r"torsion \(\d, 0, 1, \d\)"):
        build_zmatrix(bonds, 8, all_hcch)
    zm = build_zmatrix(bonds, 8, all_hcch[:3])  # three of them are fine
    assert all(zm.circular_mask[zm.torsion_index(*t)] for t in all_hcch[:3])
    with pytest.raises(ValueError, match="not connected"):
        build_zmatrix([(0, 1), (1, 2), (3, 4)], 5)
    with pytest.raises(ValueError):
        find_dihedral(top, "phi", residue="NME")


def test_find_dihedral_errors_list_what_the_topology_has(ala):
    """Issue 18.5: a dihedral alanine dipeptide lacks (chi1) or a residue it lacks (psi:7) is refused with the
    dihedrals that exist (phi:1, psi:1), not with the names mdtraj knows in general."""
    top = ala[0]
    for name, residue in (("chi", None), ("chi1", None), ("omega", None)):
        with pytest.raises(ValueError) as err:
            find_dihedral(top, name, residue)
        msg = str(err.value)
        assert re.search(r"phi:1 \(ALA\d\), psi:1 \(ALA\d\)$", msg) and "chi2" not in msg and "chi5" not in msg
    with pytest.raises(ValueError, match=r"psi exists here as psi:1 \(ALA\d\)$"):
        find_dihedral(top, "psi", 7)


def test_ala_cuda_if_available(ala, ala_transform):
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    _, x, _ = ala
    _, tr = ala_transform
    tr_c = InternalCoordinateTransform(tr.zmatrix, reference=x[0].numpy()).to("cuda")
    ic, ld = tr_c.to_internal(x.to("cuda"))
    y, ld2 = tr_c.from_internal(ic)
    assert y.device.type == "cuda" and (ld + ld2).abs().max() < 1e-10
    assert (_pairwise(y).cpu() - _pairwise(x)).abs().max() < 1e-10


# --------------------------------------------------------------------------------------
# other molecules
# --------------------------------------------------------------------------------------


def test_butane():
    top = _butane()
    assert top.n_atoms == 14
    zm = zmatrix_from_mdtraj_topology(top, [(0, 1, 2, 3)])
    assert zm.n_ic == 36
    assert set(zm.reference_atoms) <= {0, 1, 2, 3}  # carbons
    i_t = zm.torsion_index(0, 1, 2, 3)
    assert zm.circular_mask[i_t]
    gen = torch.Generator().manual_seed(1)
    x = _generated_geometry(zm, gen)
    tr = InternalCoordinateTransform(zm, reference=x[0])
    ic, ld = tr.to_internal(x)
    y, ld2 = tr.from_internal(ic)
    assert (_pairwise(y) - _pairwise(x)).abs().max() < 1e-10
    assert (ld + ld2).abs().max() < 1e-10
    assert (tr.to_internal(y)[0] - ic).abs().max() < 1e-10
    traj = md.Trajectory(x.to(torch.float32).numpy(), top)
    ic32, _ = tr.to_internal(x.to(torch.float32).to(DT))
    d = np.angle(np.exp(1j * (ic32[:, i_t].numpy() - md.compute_dihedrals(traj, [[0, 1, 2, 3]])[:, 0])))
    assert np.abs(d).max() < 2e-6
    _check_logdet_autograd(tr, ic[:2])
    # without requested torsions the chain is central and heavy
    zm2 = zmatrix_from_mdtraj_topology(top)
    assert set(zm2.reference_atoms) <= {0, 1, 2, 3} and zm2.reference_atoms[1] in (1, 2)


def test_ring_molecule_random_coordinates():
    """A 6-ring with substituents (ring closure bonds are simply not ICs)."""
    ring = [(i, (i + 1) % 6) for i in range(6)]
    subs = [(i, 6 + i) for i in range(6)] + [(6, 12), (6, 13), (6, 14)]
    n = 15
    heavy = [True] * 7 + [False] * 5 + [False] * 3
    zm = build_zmatrix(ring + subs, n, torsions=[(5, 0, 1, 2), (12, 6, 0, 1)], heavy=heavy)
    assert zm.n_ic == 3 * n - 6
    assert zm.circular_mask[zm.torsion_index(5, 0, 1, 2)] and zm.circular_mask[zm.torsion_index(1, 0, 6, 12)]
    gen = torch.Generator().manual_seed(2)
    x = 0.3 * torch.randn(3, n, 3, generator=gen, dtype=DT)
    tr = InternalCoordinateTransform(zm)
    ic, ld = tr.to_internal(x)
    y, ld2 = tr.from_internal(ic)
    assert (_pairwise(y) - _pairwise(x)).abs().max() < 1e-10
    assert (ld + ld2).abs().max() < 1e-10
    _check_logdet_autograd(tr, ic[:1])
