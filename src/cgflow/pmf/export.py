"""The learned PMF as a static bias for other MD tools: tabulation on a grid, PLUMED grid files, OpenMM forces.

The bias.  F(s) (kT) is tabulated on a regular grid over the CG domain; with F_min its minimum on that
grid, the bias (``sign="bias"``) is

    V(s) = -min(F(s) - F_min, ceiling)   (kT; times R T for kJ/mol)

so V cancels the PMF below the ceiling and is flat where F - F_min exceeds it (no bias pushes into
regions the PMF puts high, where it is least known).  ``sign="pmf"`` gives +min(F - F_min, ceiling): the
PMF itself, e.g. as a CG potential.  Derivatives are those of the capped function (0 where capped).

Grids.  A periodic dimension of ``n`` bins has the n points lo + i (hi - lo) / n (hi = lo is the same
point, listed once, as PLUMED writes it); a non-periodic one of ``n`` bins the n + 1 points lo + i (hi -
lo) / n, both ends included (PLUMED writes ``nbins`` = n + 1 in its header then).  OpenMM's periodic
tabulated functions take the end point too (equal to the first): :func:`openmm_values` appends it.

No CLI code here (``cgflow export`` is in :mod:`cgflow.cli.tools`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np
import torch

from cgflow.core.units import kT_kJ_per_mol

MAX_EXPORT_DIM = 3
"""OpenMM has tabulated functions of 1, 2 and 3 variables; a PLUMED grid of bins^d points beyond d = 3 is
too large to be useful (72^4 = 2.7e7 points), so both formats stop at 3."""

PLUMED_FORMAT = "%14.9f"  # the number format of PLUMED's Grid::writeToFile


@dataclass
class TabulatedBias:
    """A bias tabulated on a regular grid.

    Attributes:
        axes: per CG dimension the grid points (see the module docstring).
        periodic, domain: per dimension, as in the System protocol.
        pmf_kT: F - F_min on the grid, shape (n_1, ..., n_d), indexed [i_1, ..., i_d].
        values_kJ_per_mol: the bias V on the grid, same shape.
        gradient_kJ_per_mol: dV/ds, shape (n_1, ..., n_d, d) (kJ/mol per CG unit: per radian for angles).
        temperature_K: the temperature of the kT -> kJ/mol conversion.
        ceiling_kT, sign: as given.
        f_min_kT: F_min (the ensemble's own offset, kT).
    """

    axes: list[np.ndarray]
    periodic: tuple[bool, ...]
    domain: tuple[tuple[float, float], ...]
    pmf_kT: np.ndarray
    values_kJ_per_mol: np.ndarray
    gradient_kJ_per_mol: np.ndarray
    temperature_K: float
    ceiling_kT: float
    sign: str
    f_min_kT: float
    meta: dict = field(default_factory=dict)

    @property
    def dim(self) -> int:
        return len(self.axes)

    @property
    def kT_kJ_per_mol(self) -> float:
        return kT_kJ_per_mol(self.temperature_K)


def grid_axes(domain: Sequence[tuple[float, float]], periodic: Sequence[bool], bins: Sequence[int]) -> list[np.ndarray]:
    """Grid points per dimension: n points for a periodic dimension of n bins, n + 1 for a non-periodic one."""
    out = []
    for (lo, hi), per, n in zip(domain, periodic, bins):
        if n < 2:
            raise ValueError(f"need at least 2 bins per dimension, got {n}")
        if not hi > lo:
            raise ValueError(f"empty CG domain ({lo}, {hi})")
        k = np.arange(n if per else n + 1, dtype=np.float64)
        out.append(lo + k * (hi - lo) / n)
    return out


def capped_bias(pmf_kT: np.ndarray, grad_kT: np.ndarray, ceiling_kT: float, sign: str) -> tuple[np.ndarray, np.ndarray]:
    """(V, dV/ds) in kT from F - F_min (...) and dF/ds (..., d): V = -+min(F - F_min, ceiling)."""
    if not ceiling_kT > 0:
        raise ValueError(f"the ceiling must be > 0 kT, got {ceiling_kT}")
    if sign not in ("bias", "pmf"):
        raise ValueError(f"sign must be 'bias' or 'pmf', got {sign!r}")
    factor = -1.0 if sign == "bias" else 1.0
    below = pmf_kT < ceiling_kT
    v = factor * np.minimum(pmf_kT, ceiling_kT)
    g = factor * np.where(below[..., None], grad_kT, 0.0)
    return v, g


def tabulate_bias(pmf: Callable[[torch.Tensor], torch.Tensor], domain: Sequence[tuple[float, float]],
                  periodic: Sequence[bool], bins: Sequence[int], *, temperature_K: float, ceiling_kT: float = 12.0,
                  sign: str = "bias", batch_size: int = 32768, device: str | torch.device = "cpu") -> TabulatedBias:
    """Tabulate ``pmf`` (s (B, d) float64 tensor -> F (B,) kT, differentiable) as a capped bias.

    Gradients come from autograd.  Raises ValueError for d > MAX_EXPORT_DIM, a ceiling <= 0, a temperature
    <= 0 or an unknown sign."""
    d = len(domain)
    if not 1 <= d <= MAX_EXPORT_DIM:
        raise ValueError(f"a tabulated bias supports 1 to {MAX_EXPORT_DIM} CG dimensions, this PMF has {d}")
    if not temperature_K > 0:
        raise ValueError(f"the temperature must be > 0 K, got {temperature_K}")
    capped_bias(np.zeros(1), np.zeros((1, d)), ceiling_kT, sign)  # validates ceiling and sign first
    axes = grid_axes(domain, periodic, bins)
    mesh = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1).reshape(-1, d)
    f_parts, g_parts = [], []
    for start in range(0, mesh.shape[0], batch_size):
        s = torch.as_tensor(mesh[start:start + batch_size], dtype=torch.float64, device=device).requires_grad_(True)
        f = pmf(s)
        (g,) = torch.autograd.grad(f.sum(), s)
        f_parts.append(f.detach().cpu().numpy())
        g_parts.append(g.detach().cpu().numpy())
    shape = tuple(len(a) for a in axes)
    f_all = np.concatenate(f_parts).astype(np.float64)
    if not np.isfinite(f_all).all():
        raise ValueError("the PMF is not finite everywhere on the grid")
    f_min = float(f_all.min())
    pmf_kT = (f_all - f_min).reshape(shape)
    grad = np.concatenate(g_parts).astype(np.float64).reshape(*shape, d)
    v_kT, g_kT = capped_bias(pmf_kT, grad, ceiling_kT, sign)
    kT = kT_kJ_per_mol(temperature_K)
    return TabulatedBias(axes=axes, periodic=tuple(bool(p) for p in periodic),
                         domain=tuple((float(a), float(b)) for a, b in domain), pmf_kT=pmf_kT,
                         values_kJ_per_mol=v_kT * kT, gradient_kJ_per_mol=g_kT * kT, temperature_K=float(temperature_K),
                         ceiling_kT=float(ceiling_kT), sign=sign, f_min_kT=f_min)


# --- PLUMED -------------------------------------------------------------------------------------------
def _plumed_bound(x: float, periodic: bool, lower: bool) -> str:
    """PLUMED compares a periodic grid's min/max strings with the CV's domain ("-pi", "pi" for TORSION)."""
    if periodic and math.isclose(abs(x), math.pi, rel_tol=0, abs_tol=1e-12):
        return "-pi" if lower else "pi"
    return repr(float(x))


def plumed_grid_text(tab: TabulatedBias, names: Sequence[str], label: str = "external") -> str:
    """The grid file of PLUMED's ``EXTERNAL`` (function column ``LABEL.bias``), as PLUMED's Grid writes it:
    the ``#! FIELDS`` / ``#! SET min_ max_ nbins_ periodic_`` header, then one line per point, the first CV
    varying fastest, a blank line each time the second-to-last index wraps to 0 (d > 1)."""
    if len(names) != tab.dim:
        raise ValueError(f"{len(names)} CV names for a {tab.dim}-D grid")
    fields = [*names, f"{label}.bias", *(f"der_{n}" for n in names)]
    lines = ["#! FIELDS " + " ".join(fields)]
    for n, a, per, (lo, hi) in zip(names, tab.axes, tab.periodic, tab.domain):
        lines += [f"#! SET min_{n} {_plumed_bound(lo, per, True)}", f"#! SET max_{n} {_plumed_bound(hi, per, False)}",
                  f"#! SET nbins_{n} {len(a)}", f"#! SET periodic_{n} {'true' if per else 'false'}"]
    shape = tab.values_kJ_per_mol.shape
    d = tab.dim
    total = int(np.prod(shape))
    # column-major (first index fastest), as PLUMED's GridBase::getIndices
    idx = np.stack(np.unravel_index(np.arange(total), shape, order="F"), axis=1)
    fmt = " " + PLUMED_FORMAT
    vals = tab.values_kJ_per_mol.reshape(-1, order="F")
    ders = tab.gradient_kJ_per_mol.reshape(-1, d, order="F")
    for k in range(total):
        if k > 0 and d > 1 and idx[k, d - 2] == 0:
            lines.append("")
        row = [tab.axes[j][idx[k, j]] for j in range(d)] + [vals[k]] + list(ders[k])
        lines.append("".join(fmt % x for x in row))
    return "\n".join(lines) + "\n"


@dataclass
class PlumedGrid:
    """A PLUMED grid file, read (see :func:`read_plumed_grid`)."""

    fields: list[str]
    names: list[str]
    function: str
    minimum: list[str]
    maximum: list[str]
    nbins: list[int]
    periodic: list[bool]
    axes: list[np.ndarray]
    values: np.ndarray        # (n_1, ..., n_d)
    derivatives: np.ndarray | None  # (n_1, ..., n_d, d)


def _parse_bound(text: str) -> float:
    t = text.strip().lower()
    sign = -1.0 if t.startswith("-") else 1.0
    t = t.lstrip("+-")
    if t == "pi":
        return sign * math.pi
    return sign * float(t)


def read_plumed_grid(text: str) -> PlumedGrid:
    """Read a grid file written to PLUMED's documented format (the EXTERNAL / Grid::writeToFile layout).

    The header ``#! FIELDS x_1 .. x_d F der_x_1 .. der_x_d`` (the derivative columns optional) and
    ``#! SET min_x / max_x / nbins_x / periodic_x``.  A periodic CV of ``nbins`` lists nbins points from min
    (max excluded), a non-periodic one nbins points from min to max, both included.  Each data line sets one
    point, located by its coordinates (as PLUMED does, floor((x - min) / dx + 1/2)); blank lines are ignored;
    every point must be set exactly once.  Raises ValueError for anything else."""
    fields: list[str] | None = None
    sets: dict[str, str] = {}
    rows = []
    for line in text.splitlines():
        s = line.strip()
        if not s:
            continue
        if s.startswith("#!"):
            parts = s[2:].split()
            if parts and parts[0] == "FIELDS":
                fields = parts[1:]
            elif parts and parts[0] == "SET" and len(parts) == 3:
                sets[parts[1]] = parts[2]
            continue
        if s.startswith("#"):
            continue
        rows.append([float(x) for x in s.split()])
    if fields is None:
        raise ValueError("no '#! FIELDS' line")
    names = []
    for f in fields:
        if f"min_{f}" in sets:
            names.append(f)
        else:
            break
    d = len(names)
    if d == 0 or len(fields) <= d:
        raise ValueError("the FIELDS line names no CV with a '#! SET min_' line, or no function column")
    function = fields[d]
    der_names = fields[d + 1:]
    if der_names and der_names != [f"der_{n}" for n in names]:
        raise ValueError(f"derivative columns {der_names} do not match the CVs {names}")
    try:
        minimum = [sets[f"min_{n}"] for n in names]
        maximum = [sets[f"max_{n}"] for n in names]
        nbins = [int(sets[f"nbins_{n}"]) for n in names]
        periodic_text = [sets[f"periodic_{n}"] for n in names]
    except KeyError as err:
        raise ValueError(f"missing '#! SET {err.args[0]}' line") from None
    if any(p not in ("true", "false") for p in periodic_text):
        raise ValueError(f"periodic_ must be true or false, got {periodic_text}")
    periodic = [p == "true" for p in periodic_text]
    axes, dx = [], []
    for lo_t, hi_t, n, per in zip(minimum, maximum, nbins, periodic):
        lo, hi = _parse_bound(lo_t), _parse_bound(hi_t)
        step = (hi - lo) / (n if per else n - 1)
        dx.append(step)
        axes.append(lo + step * np.arange(n))
    shape = tuple(nbins)
    values = np.full(shape, np.nan)
    ders = np.full((*shape, d), np.nan) if der_names else None
    width = len(fields)
    for r in rows:
        if len(r) != width:
            raise ValueError(f"a data line has {len(r)} columns, the FIELDS line {width}")
        index = []
        for j in range(d):
            i = int(math.floor((r[j] - axes[j][0]) / dx[j] + 0.5))
            if periodic[j]:
                i %= nbins[j]
            if not 0 <= i < nbins[j]:
                raise ValueError(f"{names[j]} = {r[j]} lies outside the grid")
            index.append(i)
        t = tuple(index)
        if not np.isnan(values[t]):
            raise ValueError(f"grid point {t} is set twice")
        values[t] = r[d]
        if ders is not None:
            ders[t] = r[d + 1:]
    if np.isnan(values).any():
        raise ValueError(f"{int(np.isnan(values).sum())} grid points are missing")
    return PlumedGrid(fields=fields, names=names, function=function, minimum=minimum, maximum=maximum, nbins=nbins,
                      periodic=periodic, axes=axes, values=values, derivatives=ders)


def plumed_input_text(names: Sequence[str], grid_file: str, *, cg_atoms: Sequence[Sequence[int]] | None = None,
                      label: str = "external", comment: str = "") -> str:
    """PLUMED input lines that use the grid: one TORSION per CV (1-based atom numbers, PLUMED's) when the
    atoms are known, else a placeholder comment per CV for the user to define; then EXTERNAL."""
    lines = [f"# {comment}"] if comment else []
    if cg_atoms is not None:
        if len(cg_atoms) != len(names):
            raise ValueError(f"{len(cg_atoms)} atom quadruples for {len(names)} CVs")
        for n, atoms in zip(names, cg_atoms):
            lines.append(f"{n}: TORSION ATOMS={','.join(str(int(a) + 1) for a in atoms)}")
    else:
        for n in names:
            lines.append(f"# {n}: ...   define this CV yourself (the system has no CG atoms); it must match the "
                         f"grid's domain and periodicity")
    lines.append(f"EXTERNAL ARG={','.join(names)} FILE={grid_file} LABEL={label}")
    return "\n".join(lines) + "\n"


# --- OpenMM -------------------------------------------------------------------------------------------
TABULATED_FUNCTION = "cgflow_pmf"


def openmm_values(tab: TabulatedBias) -> tuple[list[int], list[float], list[tuple[float, float]]]:
    """(sizes, values, ranges) of OpenMM's Continuous{1,2,3}DFunction: periodic dimensions get their end
    point (equal to the first), values flattened with the first index fastest (values[i + nx j + nx ny k])."""
    if not all(tab.periodic):
        raise ValueError("OpenMM export needs periodic CG coordinates (dihedrals)")
    v = tab.values_kJ_per_mol
    for axis in range(tab.dim):
        v = np.concatenate([v, np.take(v, [0], axis=axis)], axis=axis)
    return list(v.shape), [float(x) for x in v.reshape(-1, order="F")], list(tab.domain)


def openmm_bias_force(tab: TabulatedBias, cg_atoms: Sequence[Sequence[int]], force_group: int | None = None):
    """A CustomCVForce whose energy (kJ/mol) is the periodic tabulated bias of the CG dihedrals, each CV a
    CustomTorsionForce ``theta`` on one atom quadruple (0-based indices)."""
    import openmm

    if len(cg_atoms) != tab.dim:
        raise ValueError(f"{len(cg_atoms)} atom quadruples for a {tab.dim}-D bias")
    sizes, values, ranges = openmm_values(tab)
    cvs = [f"cv{i}" for i in range(tab.dim)]
    force = openmm.CustomCVForce(f"{TABULATED_FUNCTION}({', '.join(cvs)})")
    for name, atoms in zip(cvs, cg_atoms):
        if len(atoms) != 4:
            raise ValueError(f"a dihedral needs 4 atoms, got {list(atoms)}")
        t = openmm.CustomTorsionForce("theta")
        t.addTorsion(*[int(a) for a in atoms], [])
        force.addCollectiveVariable(name, t)
    flat = [x for r in ranges for x in r]
    if tab.dim == 1:
        fn: Any = openmm.Continuous1DFunction(values, flat[0], flat[1], True)
    elif tab.dim == 2:
        fn = openmm.Continuous2DFunction(sizes[0], sizes[1], values, *flat, True)
    else:
        fn = openmm.Continuous3DFunction(sizes[0], sizes[1], sizes[2], values, *flat, True)
    force.addTabulatedFunction(TABULATED_FUNCTION, fn)
    force.setName("cgflow PMF bias")
    if force_group is not None:
        force.setForceGroup(int(force_group))
    return force


def add_pmf_bias(system, xml_path, atom_indices: Sequence[Sequence[int]] | None = None,
                 force_group: int | None = None) -> int:
    """Add the bias serialized by ``cgflow export --format openmm`` to an ``openmm.System``.

    Args:
        system: the user's openmm.System (e.g. the molecule in explicit solvent).
        xml_path: the exported XML file.
        atom_indices: one 0-based atom quadruple per CG dihedral, where the user's atom numbering differs from
            the run's (None: the run's own quadruples, stored in the file).
        force_group: the force group of the bias (None: the file's, 0 unless changed).
    Returns:
        the index of the added force.  Raises ValueError for a file that is not a cgflow bias, quadruples
        of the wrong number or size, or atoms the System does not have."""
    from pathlib import Path

    import openmm

    force = openmm.XmlSerializer.deserialize(Path(xml_path).read_text())
    if not isinstance(force, openmm.CustomCVForce) or force.getNumTabulatedFunctions() != 1 \
            or force.getTabulatedFunctionName(0) != TABULATED_FUNCTION:
        raise ValueError(f"{xml_path} is not a cgflow PMF bias (cgflow export --format openmm)")
    n_cv = force.getNumCollectiveVariables()
    if atom_indices is not None:
        if len(atom_indices) != n_cv:
            raise ValueError(f"atom_indices has {len(atom_indices)} quadruples, the bias has {n_cv} CG dihedrals")
        for i, atoms in enumerate(atom_indices):
            if len(atoms) != 4:
                raise ValueError(f"a dihedral needs 4 atoms, got {list(atoms)}")
            cv = force.getCollectiveVariable(i)
            cv.setTorsionParameters(0, *[int(a) for a in atoms], [])
    n = system.getNumParticles()
    for i in range(n_cv):
        atoms = force.getCollectiveVariable(i).getTorsionParameters(0)[:4]
        if max(atoms) >= n or min(atoms) < 0:
            raise ValueError(f"CG dihedral {i} uses atoms {list(atoms)}, the System has {n} particles")
    if force_group is not None:
        force.setForceGroup(int(force_group))
    return int(system.addForce(force))
