"""Configuration of a molecular system (``system.name: molecule``) and its builder.

Exactly one source of the molecule:

* ``preset: alanine-dipeptide`` (package data; Amber ff96 + OBC1);
* ``prmtop`` + ``pdb`` (coordinates: .pdb or .inpcrd/.rst7; OBC1 implicit solvent, no cutoff);
* ``pdb`` + ``forcefield`` (OpenMM force-field XMLs, e.g. ``[amber14-all.xml, implicit/obc1.xml]``);
* ``sequence`` (Amber residue names, e.g. "ACE ALA ALA ALA NME", built by AmberTools' tleap, extra
  ``cgflow[peptides]``) with optional ``forcefield`` as a name ("ff14SB" default, "ff19SB", "ff99SBildn",
  "ff99SB", "ff96").

``implicit_solvent`` ("OBC1" default, "OBC2" or "none") applies to ``sequence`` and ``prmtop`` (OpenMM's
OBC1 = Amber igb=2, OBC2 = igb=5); the preset is OBC1 and ``pdb`` + ``forcefield`` takes it from the XMLs.

``cg`` entries: a dihedral name ("phi", "psi", "omega", "chi1" ...), "name:residue" (e.g.
"psi:ALA2" with the residue's name and number as in the file, or "phi:1" with the mdtraj residue index,
counted from 0: in ACE-ALA-ALA-ALA-NME, ACE is 0 and "phi:1".."psi:3" are the alanines) or "i,j,k,l" (atom
indices).
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

__all__ = ["MoleculeConfig", "build_molecule_system"]


class ExecutionConfig(BaseModel):
    """Where the "dask" energy backend evaluates energies (:mod:`cgflow.systems.molecules.energy.dask_pool`).

    scheduler: "local" (a LocalCluster on this machine, ``n_workers`` single-thread processes, default one
    per core) or the address of a running dask scheduler ("tcp://host:8786"; then ``n_workers``: wait for
    that many workers); max_chunk: configurations per task; timeout_s: how long to wait for the scheduler
    (and the workers)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    scheduler: str = Field(default="local", description='"local" (a LocalCluster on this machine) or the address of a '
                           'running dask scheduler ("tcp://host:8786")')
    n_workers: Annotated[int, Field(gt=0)] | None = Field(default=None, description="local: single-thread worker "
                                                          "processes (count; null: one per core); an address: wait "
                                                          "for this many workers")
    max_chunk: Annotated[int, Field(gt=0)] = Field(default=1024, description="configurations per dask task (count)")
    timeout_s: Annotated[float, Field(gt=0)] = Field(default=30.0, description="how long to wait for the scheduler "
                                                     "and the workers (s)")

    @field_validator("scheduler")
    @classmethod
    def _address(cls, v: str) -> str:
        from cgflow.distributed.cluster import check_scheduler_address

        return check_scheduler_address(v)


class MoleculeConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    name: Literal["molecule"] = Field(default="molecule", description="the system: a molecule in internal "
                                      "coordinates, CG coordinates = torsions")
    preset: Literal["alanine-dipeptide"] | None = Field(default=None, description="a shipped molecule (package data; "
                                                        "Amber ff96 + OBC1); null: prmtop, pdb or sequence")
    prmtop: str | None = Field(default=None, description="Amber topology file (path; with pdb for the coordinates)")
    pdb: str | None = Field(default=None, description="coordinates (path: .pdb, or .inpcrd/.rst7 with prmtop)")
    forcefield: list[str] | str | None = Field(default=None, description="pdb route: a list of OpenMM XMLs; sequence "
                                               "route: a force-field name (default ff14SB)")
    sequence: str | None = Field(default=None, description='Amber residue names, e.g. "ACE ALA NME", built by tleap '
                                 "(extra cgflow[peptides])")
    implicit_solvent: Literal["OBC1", "OBC2", "none"] | None = Field(
        default=None, description="sequence / prmtop: implicit solvent model (null: OBC1)")
    cg: Annotated[list[str], Field(min_length=1)] = Field(default=["phi", "psi"], description="CG torsions: names "
                                                          '("phi", "psi", "chi1" ...), "name:residue" or "i,j,k,l" '
                                                          "atom indices (values in radians)")
    temperature_K: Annotated[float, Field(gt=0)] = Field(default=300.0, description="temperature (K); kT = R T")
    energy_backend: Literal["torch", "openmm", "dask"] = Field(
        default="torch", description="torch (differentiable energy in torch), openmm (OpenMM worker pool) or dask (a "
        "dask cluster, see execution)")
    execution: ExecutionConfig | None = Field(default=None, description="the dask backend's cluster; giving it "
                                              "without energy_backend selects energy_backend dask")
    dtype: Literal["float64", "float32"] = Field(default="float64", description="dtype of the torch energy; internal "
                                                 "coordinates and log densities stay float64")
    n_workers: Annotated[int, Field(gt=0)] | None = Field(default=None, description="worker processes of the openmm "
                                                          "backend (count; null: all usable cores)")
    md_ps: Annotated[float, Field(gt=0)] = Field(default=50.0, description="length of the starting-data MD (ps)")
    md_frame_every_steps: Annotated[int, Field(gt=0)] = Field(
        default=10, description="keep every this many MD steps as a starting-data frame (count; 1 fs steps)")
    reference: str | None = Field(default=None, description="reference PMF file (path to .npz, see "
                                  "cgflow.pmf.reference_file); null: the shipped one where it applies (preset "
                                  "alanine-dipeptide with cg [phi, psi] at 300 K)")

    @model_validator(mode="before")
    @classmethod
    def _execution_selects_dask(cls, data):
        if isinstance(data, dict) and data.get("execution") is not None and "energy_backend" not in data:
            data = {**data, "energy_backend": "dask"}
        return data

    @model_validator(mode="after")
    def _execution_needs_dask(self):
        if self.execution is not None and self.energy_backend != "dask":
            raise ValueError(f"execution applies to energy_backend dask, not {self.energy_backend!r}")
        return self

    @model_validator(mode="after")
    def _one_source(self):
        if isinstance(self.forcefield, str) and self.sequence is None:
            raise ValueError("forcefield as a name (e.g. 'ff14SB') needs sequence; with pdb give a list of "
                             "OpenMM XML files")
        if self.implicit_solvent is not None and self.sequence is None and self.prmtop is None:
            raise ValueError("implicit_solvent applies to sequence or prmtop only (preset: OBC1; pdb + forcefield: "
                             "from the XMLs)")
        if self.preset is not None:
            given = [k for k in ("prmtop", "pdb", "forcefield", "sequence") if getattr(self, k) is not None]
            if given:
                raise ValueError(f"preset {self.preset!r} cannot be combined with {', '.join(given)}")
        elif self.sequence is not None:
            given = [k for k in ("prmtop", "pdb") if getattr(self, k) is not None]
            if given:
                raise ValueError(f"sequence cannot be combined with {', '.join(given)}")
            if isinstance(self.forcefield, list):
                raise ValueError("with sequence, forcefield is a name (e.g. 'ff14SB'), not a list of XML files")
            from cgflow.systems.molecules.peptide_builder import FORCEFIELDS, PeptideBuildError, parse_sequence

            if self.forcefield is not None and self.forcefield not in FORCEFIELDS:
                raise ValueError(f"unknown peptide forcefield {self.forcefield!r}; known: {', '.join(FORCEFIELDS)}")
            try:
                parse_sequence(self.sequence)
            except PeptideBuildError as exc:
                raise ValueError(str(exc)) from None
        elif self.prmtop is not None:
            if self.pdb is None:
                raise ValueError("prmtop needs pdb (the coordinates: .pdb or .inpcrd)")
            if self.forcefield is not None:
                raise ValueError("give either prmtop or forcefield, not both")
        elif self.forcefield is not None:
            if self.pdb is None:
                raise ValueError("forcefield needs pdb")
            if not self.forcefield:
                raise ValueError("forcefield is empty")
        else:
            raise ValueError("give preset, prmtop + pdb, pdb + forcefield, or sequence")
        return self


def default_reference_path(cfg: MoleculeConfig) -> str | None:
    """The shipped reference PMF for this molecule and CG space, or None.

    Alanine dipeptide (the package's preset) with ``cg: [phi, psi]`` at 300 K has an independent
    umbrella-sampling + MBAR reference (``data/alanine-dipeptide/reference-pmf.npz``, see REFERENCE.md
    beside it; noise floor ~7e-4 nats forward KLD)."""
    from cgflow.systems.molecules.molecule_system import package_data_file

    if cfg.preset == "alanine-dipeptide" and list(cfg.cg) == ["phi", "psi"] and abs(cfg.temperature_K - 300.0) < 1e-9:
        return package_data_file("alanine-dipeptide", "reference-pmf.npz")
    return None


def build_molecule_system(cfg: MoleculeConfig, device="cpu"):
    """The :class:`~cgflow.systems.molecules.molecule_system.MoleculeSystem` described by ``cfg``."""
    from cgflow.systems.molecules import molecule_system as ms

    reference = cfg.reference if cfg.reference is not None else default_reference_path(cfg)
    kw = dict(temperature_K=cfg.temperature_K, energy_backend=cfg.energy_backend, dtype=cfg.dtype,
              device=device, n_workers=cfg.n_workers, md_ps=cfg.md_ps,
              md_frame_every_steps=cfg.md_frame_every_steps, reference_path=reference)
    if cfg.energy_backend == "dask":
        ex = cfg.execution or ExecutionConfig()
        kw.update(n_workers=ex.n_workers if ex.n_workers is not None else cfg.n_workers,
                  energy_options={"scheduler": ex.scheduler, "max_chunk": ex.max_chunk, "timeout_s": ex.timeout_s})
    cg = list(cfg.cg)
    if cfg.preset == "alanine-dipeptide":
        return ms.alanine_dipeptide(cg=cg, **kw)
    if cfg.sequence is not None:
        return ms.from_sequence(cfg.sequence, cg, forcefield=cfg.forcefield or "ff14SB",
                                implicit_solvent=cfg.implicit_solvent or "OBC1", **kw)
    if cfg.prmtop is not None:
        solvent = cfg.implicit_solvent or "OBC1"
        return ms.from_amber(cfg.prmtop, cfg.pdb, cg, implicit_solvent=None if solvent == "none" else solvent, **kw)
    return ms.from_pdb_and_forcefield(cfg.pdb, cfg.forcefield, cg, **kw)
