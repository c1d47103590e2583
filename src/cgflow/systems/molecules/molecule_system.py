"""A molecule as a :class:`cgflow.core.system.System`: CG torsions, Z-matrix FG coordinates, OpenMM energy.

Coordinates
-----------
The full coordinates are Cartesian positions ``(B, N, 3)`` in nm.  A Z-matrix is built from the
bond graph with the CG torsions (e.g. phi, psi) as torsions of placed atoms
(:func:`~cgflow.systems.molecules.ic.internal_coordinates.zmatrix_from_mdtraj_topology`), and normalized with
the energy-minimized reference structure (:class:`~cgflow.systems.molecules.ic.internal_coordinates.
InternalCoordinateTransform`).  Of the ``3N - 6`` internal coordinates

* ``s`` (``cg_dim``): the CG torsions, plain angles in [-pi, pi), all periodic;
* ``x_fg`` (``fg_dim = 3N - 6 - cg_dim``): all the others in IC-vector order (``ZMatrix.fg_indices``);
  the circular dihedrals among them are raw angles in [-pi, pi) (periodic, ``fg_periodic``),
  bonds, angles and the other dihedrals are normalized (``(value - ref) / std``).

``log_target(s, x_fg) = -u(x)/kT + log|det J|`` with ``x, log|det J| = from_internal(s, x_fg)``, the
reduced energy from the energy backend ("torch": TorchEnergy; "openmm": OpenMM worker pool), both
differentiable.  ``valid`` checks the chirality of the reconstructed structure (no energy).
``starting_data`` is a cached short Langevin MD run (:mod:`cgflow.systems.molecules.starting_data`).

Factories: :func:`alanine_dipeptide`, :func:`from_amber`, :func:`from_pdb_and_forcefield`,
:func:`from_sequence` (a peptide built by tleap, :mod:`cgflow.systems.molecules.peptide_builder`).
"""

from __future__ import annotations

import importlib.resources
import math
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from cgflow.core.system import ReferencePMF, StartingData
from cgflow.pmf.reference_file import load_reference
from cgflow.systems.molecules.energy.backend import close_energy_backend, make_energy_backend
from cgflow.systems.molecules.ic.chirality import ChiralityCheck
from cgflow.systems.molecules.ic.internal_coordinates import (
    InternalCoordinateTransform,
    _as_mdtraj_topology,
    find_dihedral,
    zmatrix_from_mdtraj_topology,
)
from cgflow.systems.molecules.starting_data import md_starting_data, minimize_positions

__all__ = ["MoleculeSystem", "alanine_dipeptide", "from_amber", "from_pdb_and_forcefield", "from_sequence",
           "parse_cg_spec", "package_data_file"]

Tensor = torch.Tensor
_DTYPES = {"float64": torch.float64, "float32": torch.float32}


def package_data_file(*parts: str) -> str:
    """Path of a file shipped in ``cgflow/data``."""
    return str(importlib.resources.files("cgflow").joinpath("data", *parts))


def parse_cg_spec(spec: Any) -> Any:
    """Normalize one CG torsion spec: "phi", "psi:ALA2" / "phi:1" (name:residue, a digit residue is an
    index), "4,6,8,14" (atom indices), (name, residue), or 4 atom indices."""
    if isinstance(spec, str):
        text = spec.strip()
        if "," in text:
            try:
                return tuple(int(v) for v in text.split(","))
            except ValueError:
                raise ValueError(f"CG torsion {spec!r}: atom indices must be integers") from None
        if ":" in text:
            name, res = text.split(":", 1)
            return (name.strip(), int(res) if res.strip().lstrip("-").isdigit() else res.strip())
        return text
    return tuple(spec)


def _check_file(path, what: str) -> str:
    p = Path(path).expanduser()
    if not p.is_file():
        raise FileNotFoundError(f"{what} not found: {p}")
    return str(p)


class MoleculeSystem:
    """A molecule with CG torsions as a System (see the module docstring).

    Args:
        topology: mdtraj or OpenMM topology (bonds and elements are used).
        system: the ``openmm.System`` defining the energy.
        positions: a reference structure (N, 3) nm; minimized with OpenMM for the IC normalization
            and ``default_mc_start``; its chirality is the one ``valid`` accepts.
        cg: CG torsion specs (names "phi"/"psi"/..., "name:residue", (name, residue) or 4 atom
            indices); see :func:`parse_cg_spec`.
        name: the system's name.
        temperature_K: temperature.
        energy_backend: "torch" (TorchEnergy) or "openmm" (OpenMM worker pool).
        dtype: float dtype of the torch energy ("float64", "float32" or a torch dtype); internal
            coordinates and returned log densities are always float64.
        device: where the IC transform and the torch energy run; outputs follow the input's device.
        n_workers: worker processes of the "openmm" backend (default: all usable cores).
        energy_options: further keyword arguments of the energy backend (e.g. ``scheduler`` of "dask").
        md_ps, md_frame_every_steps, md_timestep_fs, md_friction_per_ps: starting-data MD settings.
        reference_path: optional .npz with ``edges`` (n_bins+1,) and ``prob`` (n_bins,)*cg_dim.
        minimize: minimize the reference structure (True) or use it as is.
        progress: show a progress bar during the starting MD.
        use_cache: cache the starting MD on disk.
    """

    def __init__(self, topology: Any, system, positions, cg: Sequence[Any] = ("phi", "psi"), *,
                 name: str = "molecule", temperature_K: float = 300.0, energy_backend: str = "torch",
                 dtype: str | torch.dtype = "float64", device: str | torch.device = "cpu",
                 n_workers: int | None = None, md_ps: float = 50.0, md_frame_every_steps: int = 10,
                 md_timestep_fs: float = 1.0, md_friction_per_ps: float = 1.0,
                 reference_path: str | Path | None = None, minimize: bool = True, progress: bool = True,
                 use_cache: bool = True, energy_options: dict | None = None):
        top = _as_mdtraj_topology(topology)
        n = top.n_atoms
        if system.getNumParticles() != n:
            raise ValueError(f"the openmm.System has {system.getNumParticles()} particles, the topology {n} atoms")
        pos = np.asarray(positions, dtype=np.float64).reshape(-1, 3)
        if pos.shape != (n, 3):
            raise ValueError(f"positions have shape {pos.shape}, expected ({n}, 3)")
        if isinstance(dtype, str):
            if dtype not in _DTYPES:
                raise ValueError(f"dtype must be one of {sorted(_DTYPES)}, got {dtype!r}")
            dtype = _DTYPES[dtype]
        if not list(cg):
            raise ValueError("at least one CG torsion is needed")

        self.name = name
        self.topology = top
        self.openmm_system = system
        self.temperature_K = float(temperature_K)
        self.device = torch.device(device)
        self.n_atoms = n
        self.full_shape = (n, 3)
        self.md_settings = dict(md_ps=float(md_ps), frame_every_steps=int(md_frame_every_steps),
                                timestep_fs=float(md_timestep_fs), friction_per_ps=float(md_friction_per_ps))
        self.progress = progress
        self.use_cache = use_cache
        self.reference_path = None if reference_path is None else Path(reference_path).expanduser()
        if self.reference_path is not None and not self.reference_path.is_file():
            raise FileNotFoundError(f"reference PMF file not found: {self.reference_path}")

        # --- CG torsions and Z-matrix ---
        self.cg_atoms, names = [], []
        for raw in cg:
            spec = parse_cg_spec(raw)
            atoms, label = self._resolve_torsion(top, spec, raw)
            self.cg_atoms.append(atoms)
            names.append(label)
        if len(set(tuple(sorted(a)) for a in self.cg_atoms)) != len(self.cg_atoms):
            raise ValueError(f"CG torsions {list(cg)!r} contain the same dihedral twice")
        try:
            self.zmatrix = zmatrix_from_mdtraj_topology(top, self.cg_atoms)
        except ValueError as exc:
            raise ValueError(f"cannot build internal coordinates with CG torsions {list(cg)!r}: {exc}") from None

        # --- reference structure ---
        self.input_positions = pos
        self.minimized_positions = minimize_positions(system, pos) if minimize else pos.copy()
        self.ic = InternalCoordinateTransform(self.zmatrix, reference=self.minimized_positions).to(self.device)
        self._cg_idx = torch.as_tensor(self.zmatrix.torsion_indices, device=self.device)
        self._fg_idx = torch.as_tensor(self.zmatrix.fg_indices, device=self.device)
        perm = np.argsort(np.concatenate([self.zmatrix.torsion_indices, self.zmatrix.fg_indices]))
        self._perm = torch.as_tensor(perm, device=self.device)  # cat([s, x_fg])[:, perm] = ic

        self.cg_dim = len(self.cg_atoms)
        self.fg_dim = self.zmatrix.n_ic - self.cg_dim
        self.cg_periodic = (True,) * self.cg_dim
        self.fg_periodic = tuple(bool(b) for b in self.zmatrix.circular_mask[self.zmatrix.fg_indices])
        self.cg_domain = ((-math.pi, math.pi),) * self.cg_dim
        self.cg_names = tuple(names)
        s0, _ = self.to_internal(torch.as_tensor(self.minimized_positions)[None])
        self.default_mc_start = tuple(float(v) for v in s0[0])

        self.chirality = ChiralityCheck(top, pos)

        # --- energy ---
        self.energy_backend_name = energy_backend
        try:
            self.energy = make_energy_backend(energy_backend, system, self.temperature_K, dtype=dtype,
                                              device=self.device, n_workers=n_workers, **(energy_options or {}))
        except ValueError as exc:
            from cgflow.systems.molecules.energy.torch_energy import UnsupportedForceError

            if isinstance(exc, UnsupportedForceError):
                raise UnsupportedForceError(f"energy_backend='torch' cannot evaluate this force field ({exc}); "
                                            f"use energy_backend='openmm'") from None
            raise

    # --- helpers ------------------------------------------------------------------------------
    @staticmethod
    def _resolve_torsion(top, spec, raw) -> tuple[tuple[int, int, int, int], str]:
        def label_of(atoms):
            return "dihedral(" + " - ".join(str(top.atom(i)) for i in atoms) + ")"

        try:
            if isinstance(spec, str):
                return find_dihedral(top, spec), spec
            if len(spec) == 2 and isinstance(spec[0], str):
                return find_dihedral(top, spec[0], spec[1]), f"{spec[0]}:{spec[1]}"
            if len(spec) == 4:
                atoms = tuple(int(i) for i in spec)
                if not all(0 <= i < top.n_atoms for i in atoms) or len(set(atoms)) != 4:
                    raise ValueError(f"need 4 distinct atom indices in [0, {top.n_atoms})")
                return atoms, label_of(atoms)
        except ValueError as exc:
            raise ValueError(f"CG torsion {raw!r} not found in the topology: {exc}") from None
        raise ValueError(f"CG torsion {raw!r}: expected a name, (name, residue) or 4 atom indices")

    def _ic_of(self, s: Tensor, x_fg: Tensor) -> Tensor:
        s = s.to(device=self.device, dtype=torch.float64)
        x_fg = x_fg.to(device=self.device, dtype=torch.float64)
        return torch.cat([s, x_fg], dim=1)[:, self._perm]

    # --- System protocol ----------------------------------------------------------------------
    def to_internal(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """x (B, N, 3) nm -> (s (B, cg_dim), x_fg (B, fg_dim)), float64, on x's device."""
        out_device = x.device
        x = x.to(device=self.device, dtype=torch.float64).reshape(-1, self.n_atoms, 3)
        ic, _ = self.ic.to_internal(x)
        return ic[:, self._cg_idx].to(out_device), ic[:, self._fg_idx].to(out_device)

    def from_internal(self, s: Tensor, x_fg: Tensor) -> tuple[Tensor, Tensor]:
        """(s, x_fg) -> (x (B, N, 3) nm in the canonical frame, log|det J_{T^-1}| (B,)), on s's device."""
        out_device = s.device
        x, log_det = self.ic.from_internal(self._ic_of(s, x_fg))
        return x.to(out_device), log_det.to(out_device)

    def reduced_energy(self, x: Tensor) -> Tensor:
        """u(x) = E/kT (B,) float64 from the energy backend (differentiable)."""
        return self.energy.reduced_energy(x).to(torch.float64)

    def log_target(self, s: Tensor, x_fg: Tensor) -> Tensor:
        """-u(x) + log|det J| (B,) float64 on s's device; differentiable in s and x_fg."""
        out_device = s.device
        x, log_det = self.ic.from_internal(self._ic_of(s, x_fg))
        return (log_det - self.reduced_energy(x)).to(out_device)

    def valid(self, s: Tensor, x_fg: Tensor) -> Tensor:
        """(B,) bool: the reconstructed structure is finite and has the reference chirality."""
        with torch.no_grad():
            x, _ = self.ic.from_internal(self._ic_of(s, x_fg))
            ok = self.chirality.chirality_ok(x) & torch.isfinite(x).all(dim=2).all(dim=1)
        return ok.to(s.device)

    def starting_data(self, seed: int) -> StartingData:
        md = md_starting_data(self.openmm_system, self.input_positions, temperature_K=self.temperature_K,
                              seed=seed, minimize=True, use_cache=self.use_cache, progress=self.progress,
                              description=f"starting MD ({self.name})", **self.md_settings)
        st = self.md_settings
        desc = (f"{md.positions.shape[0]} frames of Langevin MD ({st['md_ps']:g} ps, {st['timestep_fs']:g} fs, "
                f"friction {st['friction_per_ps']:g}/ps, {self.temperature_K:g} K, a frame every "
                f"{st['frame_every_steps']} steps, seed {seed}) from the minimized structure"
                f"{' (cached)' if md.from_cache else ''}")
        return StartingData(x=torch.as_tensor(md.positions, dtype=torch.float64), n_energy_evaluations=md.n_steps,
                            description=desc)

    def reference(self) -> ReferencePMF | None:
        if self.reference_path is None:
            return None
        return load_reference(self.reference_path, self.cg_dim)

    # --- MD baselines -------------------------------------------------------------------------
    def simulation_view(self):
        """The molecule as particles for the MD / umbrella / metadynamics baselines."""
        import openmm
        import openmm.unit as unit

        from cgflow.core.simulation_view import SimulationView
        from cgflow.systems.molecules.ic.internal_coordinates import compute_dihedrals

        xml = openmm.XmlSerializer.serialize(self.openmm_system)

        def make_system(n_copies: int):
            if n_copies != 1:
                raise ValueError("a molecule cannot be copied into one OpenMM System (implicit solvent couples "
                                 "all atoms); run replicas with the torch engine")
            return openmm.XmlSerializer.deserialize(xml)

        def make_topology(n_copies: int):
            make_system(n_copies)
            return self.topology.to_openmm()

        def make_cg_forces():
            forces = []
            for atoms in self.cg_atoms:
                f = openmm.CustomTorsionForce("theta")
                f.addTorsion(*[int(i) for i in atoms], [])
                forces.append(f)
            return forces

        idx = torch.as_tensor(np.array(self.cg_atoms, dtype=np.int64))  # (cg_dim, 4)

        def cg_of_positions(x):
            x = x.reshape(x.shape[0], self.n_atoms, 3)
            return torch.stack([compute_dihedrals(*(x[:, int(i)] for i in row)) for row in idx], dim=1)

        masses = np.array([self.openmm_system.getParticleMass(i).value_in_unit(unit.dalton)
                           for i in range(self.n_atoms)])
        return SimulationView(
            name=self.name, make_openmm_system=make_system, make_openmm_topology=make_topology,
            positions=self.minimized_positions.copy(), masses_amu=masses, temperature_K=self.temperature_K,
            timestep_fs=self.md_settings["timestep_fs"], make_cg_forces=make_cg_forces,
            cg_of_positions=cg_of_positions, reduced_energy_of_positions=self.reduced_energy,
            cg_dim=self.cg_dim, cg_periodic=self.cg_periodic, cg_domain=self.cg_domain, cg_names=self.cg_names)

    # --- life cycle ---------------------------------------------------------------------------
    def close(self) -> None:
        """Release the energy backend's worker processes (if any)."""
        close_energy_backend(self.energy)

    def __enter__(self) -> MoleculeSystem:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return (f"MoleculeSystem(name={self.name!r}, n_atoms={self.n_atoms}, cg={self.cg_names}, "
                f"fg_dim={self.fg_dim} ({sum(self.fg_periodic)} periodic), backend={self.energy_backend_name!r}, "
                f"chiral centres={self.chirality.names})")


# --------------------------------------------------------------------------------------------
# factories
# --------------------------------------------------------------------------------------------


def from_amber(prmtop_path, coords_path, cg: Sequence[Any] = ("phi", "psi"), *, implicit_solvent: str | None = "OBC1",
               **kw) -> MoleculeSystem:
    """A MoleculeSystem from an Amber prmtop and coordinates (.pdb, or .inpcrd/.rst7/.crd).

    The System is ``createSystem(nonbondedMethod=NoCutoff, implicitSolvent=<implicit_solvent>,
    constraints=None)``; ``implicit_solvent`` is None or an ``openmm.app`` name ("OBC1", "OBC2", ...).
    """
    import openmm.app as app
    import openmm.unit as unit

    prmtop_path = _check_file(prmtop_path, "prmtop file")
    coords_path = _check_file(coords_path, "coordinate file")
    solvent = None
    if implicit_solvent is not None:
        if not hasattr(app, implicit_solvent):
            raise ValueError(f"unknown implicit solvent {implicit_solvent!r} (e.g. 'OBC1', 'OBC2', 'HCT', 'GBn2')")
        solvent = getattr(app, implicit_solvent)
    prmtop = app.AmberPrmtopFile(prmtop_path)
    system = prmtop.createSystem(nonbondedMethod=app.NoCutoff, implicitSolvent=solvent, constraints=None)
    if coords_path.lower().endswith(".pdb"):
        pos = app.PDBFile(coords_path).getPositions(asNumpy=True)
    else:
        pos = app.AmberInpcrdFile(coords_path).getPositions(asNumpy=True)
    pos = np.asarray(pos.value_in_unit(unit.nanometer), dtype=np.float64)
    if pos.shape[0] != system.getNumParticles():
        raise ValueError(f"{coords_path} has {pos.shape[0]} atoms, {prmtop_path} {system.getNumParticles()}")
    kw.setdefault("name", Path(prmtop_path).stem)
    return MoleculeSystem(prmtop.topology, system, pos, cg, **kw)


def from_pdb_and_forcefield(pdb_path, forcefield_xmls: Sequence[str], cg: Sequence[Any] = ("phi", "psi"),
                            **kw) -> MoleculeSystem:
    """A MoleculeSystem from a PDB file (with hydrogens) and OpenMM force-field XML files.

    The System is ``ForceField(*forcefield_xmls).createSystem(topology, nonbondedMethod=NoCutoff,
    constraints=None)``; implicit solvent comes from the XML (e.g. ``"implicit/obc1.xml"``).
    """
    import openmm.app as app
    import openmm.unit as unit

    pdb_path = _check_file(pdb_path, "PDB file")
    xmls = [str(x) for x in forcefield_xmls]
    if not xmls:
        raise ValueError("forcefield_xmls is empty (e.g. ['amber14-all.xml', 'implicit/obc1.xml'])")
    try:
        ff = app.ForceField(*xmls)
    except Exception as exc:  # noqa: BLE001 - one-line message
        raise ValueError(f"cannot load force field {xmls}: {str(exc).splitlines()[0] if str(exc) else exc!r}") from None
    pdb = app.PDBFile(pdb_path)
    try:
        system = ff.createSystem(pdb.topology, nonbondedMethod=app.NoCutoff, constraints=None)
    except Exception as exc:  # noqa: BLE001
        raise ValueError(f"force field {xmls} cannot parametrize {pdb_path}: "
                         f"{str(exc).splitlines()[0] if str(exc) else exc!r}") from None
    pos = np.asarray(pdb.getPositions(asNumpy=True).value_in_unit(unit.nanometer), dtype=np.float64)
    kw.setdefault("name", Path(pdb_path).stem)
    return MoleculeSystem(pdb.topology, system, pos, cg, **kw)


def from_sequence(sequence: str, cg: Sequence[Any] = ("phi", "psi"), *, forcefield: str = "ff14SB",
                  implicit_solvent: str = "OBC1", **kw) -> MoleculeSystem:
    """A peptide from its Amber residue names, e.g. ``"ACE ALA ALA ALA NME"``, built with AmberTools' tleap
    (:func:`cgflow.systems.molecules.peptide_builder.build_peptide`, needs ``pip install 'cgflow[peptides]'``; the
    files are cached) and loaded by :func:`from_amber` (no cutoff, no constraints).

    ``forcefield``: "ff14SB", "ff19SB", "ff99SBildn", "ff99SB" or "ff96"; ``implicit_solvent``: "OBC1"
    (Amber igb=2), "OBC2" (igb=5) or "none" (vacuum), with mbondi2 radii.  CG names by residue use the
    mdtraj residue index, ACE = 0: ``"phi:1"`` is the phi of the first residue after ACE.
    """
    from cgflow.systems.molecules.peptide_builder import build_peptide, parse_sequence

    prmtop, inpcrd = build_peptide(sequence, forcefield, implicit_solvent)
    kw.setdefault("name", "-".join(parse_sequence(sequence)))
    return from_amber(prmtop, inpcrd, cg, implicit_solvent=None if implicit_solvent == "none" else implicit_solvent,
                      **kw)


def alanine_dipeptide(**kw) -> MoleculeSystem:
    """Alanine dipeptide (ACE-ALA-NME, Amber ff96, OBC1, no cutoff, no constraints), CG = (phi, psi)."""
    kw.setdefault("cg", ("phi", "psi"))
    kw.setdefault("name", "alanine-dipeptide")
    cg = kw.pop("cg")
    return from_amber(package_data_file("alanine-dipeptide", "alanine-dipeptide.prmtop"),
                      package_data_file("alanine-dipeptide", "alanine-dipeptide.pdb"), cg, **kw)
