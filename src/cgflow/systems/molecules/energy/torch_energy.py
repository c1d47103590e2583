"""Batched, differentiable PyTorch re-implementation of an ``openmm.System``'s potential energy.

:class:`TorchEnergy` reads every parameter from the forces of an OpenMM ``System`` and evaluates
the potential energy of a batch of configurations with plain tensor operations, so that energies
and forces (by autograd) of thousands of configurations come from a handful of kernel launches.

Supported (exactly what ``AmberPrmtopFile(prmtop).createSystem(nonbondedMethod=NoCutoff,
implicitSolvent=OBC1 or OBC2, constraints=None)`` produces for a small molecule):

* ``HarmonicBondForce``      E = 1/2 k (r - r0)^2
* ``HarmonicAngleForce``     E = 1/2 k (theta - theta0)^2
* ``PeriodicTorsionForce``   E = k (1 + cos(n phi - phi0))
* ``NonbondedForce`` with ``NoCutoff``: Coulomb ``ONE_4PI_EPS0 q_i q_j / r`` plus Lennard-Jones
  ``4 eps ((sigma/r)^12 - (sigma/r)^6)`` with Lorentz-Berthelot combining; exclusions and exceptions
  (each exception carries its own chargeProd, sigma and epsilon, 1-4 scaling included).
* ``CustomGBForce`` as built by ``openmm.app.internal.customgbforces.GBSAOBC1Force`` (Amber
  ``igb=2``) or ``GBSAOBC2Force`` (``igb=5``), without cutoff, with or without Debye screening
  (kappa) and the ACE surface-area term.  The energy expressions are parsed and recognised; the
  numbers in them (Coulomb constant, dielectrics, kappa, dielectric offset, OBC alpha/beta/gamma,
  surface tension and probe radius) are read from the expressions, or from the force's global
  parameters, never typed in here.
* ``GBSAOBCForce`` (OpenMM's built-in OBC2 model, used by ``createSystem(implicitSolvent=OBC2)``
  without salt).  Its C++ reference implementation's fixed constants (dielectric offset 0.009 nm,
  probe radius 0.14 nm, alpha/beta/gamma = 1.0/0.8/4.85) are not exposed by the API and are given
  below; dielectrics, surface-area energy and per-particle parameters are read from the force.
* ``CMMotionRemover``: ignored (no energy).

Anything else (other force classes, cutoffs, PME, switching functions, parameter offsets, global
parameters of the NonbondedForce, unrecognised CustomGBForce expressions, virtual sites, periodic
boxes ...) raises :class:`UnsupportedForceError` naming the force class and the option.

Units: positions in nm, energies in kJ/mol, forces in kJ/mol/nm.  Shapes: ``B`` configurations
of ``N`` particles, positions ``(B, N, 3)``.

The call-time code has no Python loops over atoms, no data-dependent control flow and no boolean
mask indexing: all index tensors are precomputed buffers with fixed shapes, so that the energy can
be ``torch.compile``'d and captured in CUDA graphs.
"""

from __future__ import annotations

import math
import re

import openmm
import openmm.unit as unit
import torch
from torch import nn

from cgflow.core.geometry import compute_dihedrals
from cgflow.core.units import MOLAR_GAS_CONSTANT_KJ_PER_MOL_K

Tensor = torch.Tensor

__all__ = ["TorchEnergy", "UnsupportedForceError", "ONE_4PI_EPS0", "MOLAR_GAS_CONSTANT_KJ"]

# 1/(4 pi eps0) in kJ mol^-1 nm e^-2, computed exactly as OpenMM's C++ code does
# (openmm/reference/SimTKOpenMMRealType.h, CODATA 2018): 138.93545764438198.
_E_CHARGE = 1.602176634e-19
_AVOGADRO = 6.02214076e23
_EPSILON0 = 1e-6 * 8.8541878128e-12 / (_E_CHARGE * _E_CHARGE * _AVOGADRO)
ONE_4PI_EPS0: float = 1.0 / (4.0 * math.pi * _EPSILON0)

MOLAR_GAS_CONSTANT_KJ = MOLAR_GAS_CONSTANT_KJ_PER_MOL_K  # kJ/mol/K (cgflow.core.units)

# Fixed constants of OpenMM's built-in GBSAOBCForce (ReferenceObc / ObcParameters, OBC type II);
# not accessible through the Python API.
_BUILTIN_OBC_DIELECTRIC_OFFSET = 0.009  # nm
_BUILTIN_OBC_PROBE_RADIUS = 0.14  # nm
_BUILTIN_OBC_ALPHA_BETA_GAMMA = (1.0, 0.8, 4.85)


class UnsupportedForceError(ValueError):
    """An OpenMM force (or an option of one) that :class:`TorchEnergy` does not implement."""


# --------------------------------------------------------------------------------------------
# Helpers to read parameters
# --------------------------------------------------------------------------------------------


def _val(q, u=None) -> float:
    """Strip OpenMM units (to ``u`` if given; OpenMM's default MD units otherwise)."""
    if unit.is_quantity(q):
        return float(q.value_in_unit(u)) if u is not None else float(q.value_in_unit_system(unit.md_unit_system))
    return float(q)


def _refuse(force, option: str) -> UnsupportedForceError:
    return UnsupportedForceError(f"{type(force).__name__}: {option} is not supported by TorchEnergy")


# --- recognising CustomGBForce expressions ---------------------------------------------------

# A placeholder ``{name}`` (in a pattern) or an unsigned number literal not part of a name.
_TOKEN = re.compile(r"\{(\w+)\}|(?<![A-Za-z_0-9.])(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?")
_ALLOWED_NUMERIC_DEFS = {"solventDielectric", "soluteDielectric", "kappa", "offset", "cutoff"}


def _tokenize(s: str) -> tuple[str, list[tuple[str, object]]]:
    slots: list[tuple[str, object]] = []

    def rep(m: re.Match) -> str:
        if m.group(1) is not None:
            slots.append(("var", m.group(1)))
        else:
            slots.append(("num", float(m.group(0))))
        return "#"

    return _TOKEN.sub(rep, "".join(s.split())), slots


def _match(expr: str, pattern: str) -> dict[str, float] | None:
    """Match ``expr`` against ``pattern`` (numbers in the pattern must be equal, ``{name}``
    placeholders capture the number in that place).  Returns the captured numbers or None."""
    t1, s1 = _tokenize(expr)
    t2, s2 = _tokenize(pattern)
    if t1 != t2:
        return None
    out: dict[str, float] = {}
    for (_, v1), (k2, v2) in zip(s1, s2):
        if k2 == "num":
            if not math.isclose(v1, v2, rel_tol=1e-12, abs_tol=0.0):
                return None
        else:
            out[v2] = v1
    return out


class _Expr:
    """A Lepton expression ``main; name=value; ...`` split into main part and definitions."""

    def __init__(self, expression: str, globals_: dict[str, float]):
        parts = [p for p in expression.split(";") if p.strip()]
        self.text = expression
        self.main = "".join(parts[0].split())
        self.numeric: dict[str, float] = {}
        self.symbolic: dict[str, str] = {}
        for p in parts[1:]:
            if "=" not in p:
                raise UnsupportedForceError(f"CustomGBForce: cannot parse expression {expression!r}")
            name, value = p.split("=", 1)
            name, value = name.strip(), "".join(value.split())
            try:
                self.numeric[name] = float(value)
            except ValueError:
                self.symbolic[name] = value
        self.globals = globals_

    def check(self, symbolic: dict[str, str]) -> bool:
        """True if the symbolic definitions are exactly ``symbolic`` and the numeric ones are
        only of the allowed constants."""
        want = {k: "".join(v.split()) for k, v in symbolic.items()}
        return self.symbolic == want and set(self.numeric) <= _ALLOWED_NUMERIC_DEFS

    def number(self, name: str) -> float:
        if name in self.numeric:
            return self.numeric[name]
        if name in self.globals:
            return self.globals[name]
        raise UnsupportedForceError(
            f"CustomGBForce: constant {name!r} of expression {self.text!r} is not defined"
        )


_GB_I_EXPR = (
    "select(step(r+sr2-or1), 0.5*(1/L-1/U+0.25*(r-sr2^2/r)*(1/(U^2)-1/(L^2))+0.5*log(L/U)/r), 0)"
)
_GB_I_DEFS = {"U": "r+sr2", "L": "max(or1, D)", "D": "abs(r-sr2)"}
_GB_B_PATTERNS = [  # OBC1 (igb=2), OBC2 (igb=5), generic
    ("1/(1/or-tanh({alpha}*psi+{gamma}*psi^3)/radius)", {"beta": 0.0}),
    ("1/(1/or-tanh(psi-{beta}*psi^2+{gamma}*psi^3)/radius)", {"alpha": 1.0}),
    ("1/(1/or-tanh({alpha}*psi-{beta}*psi^2+{gamma}*psi^3)/radius)", {}),
]
_GB_B_DEFS = {"psi": "I*or", "radius": "or+offset"}
_GB_SELF_PATTERNS = [
    ("-0.5*{K}*(1/soluteDielectric-1/solventDielectric)*charge^2/B", False),
    ("-0.5*{K}*(1/soluteDielectric-exp(-kappa*B)/solventDielectric)*charge^2/B", True),
]
_GB_ACE_PATTERN = "{sa}*(radius+{probe})^2*(radius/B)^6"
_GB_PAIR_PATTERNS = [
    ("-{K}*(1/soluteDielectric-1/solventDielectric)*charge1*charge2/f", False),
    ("-{K}*(1/soluteDielectric-exp(-kappa*f)/solventDielectric)*charge1*charge2/f", True),
]
_GB_F_DEFS = {"f": "sqrt(r^2+B1*B2*exp(-r^2/(4*B1*B2)))"}


# --------------------------------------------------------------------------------------------
# Geometry
# --------------------------------------------------------------------------------------------


def _take(t: Tensor, idx: Tensor) -> Tensor:
    """t[:, idx] for a 1-D or 2-D index tensor, via index_select (whose backward is index_add,
    faster on CPU than the index_put of advanced indexing)."""
    out = torch.index_select(t, 1, idx.reshape(-1))
    return out.reshape(t.shape[:1] + idx.shape + t.shape[2:])


def _angle(x: Tensor, idx: Tensor) -> Tensor:
    """Angle i-j-k at j (rad), shape (B, M), via atan2(|u x v|, u.v) (stable near 0 and pi)."""
    u = _take(x, idx[:, 0]) - _take(x, idx[:, 1])
    v = _take(x, idx[:, 2]) - _take(x, idx[:, 1])
    c = torch.linalg.cross(u, v, dim=-1)
    return torch.atan2(torch.linalg.vector_norm(c, dim=-1), (u * v).sum(-1))


def _dihedral(x: Tensor, idx: Tensor) -> Tensor:
    """IUPAC dihedral angle i-j-k-l in (-pi, pi] (OpenMM's convention), shape (B, M)."""
    return compute_dihedrals(*(_take(x, idx[:, k]) for k in range(4)))


# --------------------------------------------------------------------------------------------
# Terms.  Each maps (x (B,N,3), r (B,P), r2 (B,P)) -> energy (B,), where r/r2 are the distances
# and squared distances of all P = N(N-1)/2 pairs i<j in torch.triu_indices order.
# --------------------------------------------------------------------------------------------


def _pair_index(n: int) -> dict[tuple[int, int], int]:
    iu = torch.triu_indices(n, n, offset=1)
    return {(int(i), int(j)): p for p, (i, j) in enumerate(zip(iu[0].tolist(), iu[1].tolist()))}


class _Term(nn.Module):
    def __init__(self, dtype: torch.dtype):
        super().__init__()
        self._dtype = dtype

    def _t(self, values, dtype=None) -> Tensor:
        return torch.as_tensor(values, dtype=dtype or self._dtype)

    def _idx(self, values, width: int) -> Tensor:
        return torch.as_tensor(values, dtype=torch.long).reshape(-1, width)


class _HarmonicBonds(_Term):
    """E = sum 1/2 k (r - r0)^2 ;  k in kJ/mol/nm^2, r0 in nm."""

    def __init__(self, force: openmm.HarmonicBondForce, pair_of: dict, dtype):
        super().__init__(dtype)
        if force.usesPeriodicBoundaryConditions():
            raise _refuse(force, "periodic boundary conditions")
        pidx, r0, k = [], [], []
        for b in range(force.getNumBonds()):
            i, j, length, kk = force.getBondParameters(b)
            if i == j:
                raise _refuse(force, f"bond {b} between a particle and itself")
            pidx.append(pair_of[(min(i, j), max(i, j))])
            r0.append(_val(length, unit.nanometer))
            k.append(_val(kk, unit.kilojoule_per_mole / unit.nanometer**2))
        self.register_buffer("pidx", torch.as_tensor(pidx, dtype=torch.long))
        self.register_buffer("r0", self._t(r0))
        self.register_buffer("k", self._t(k))

    def forward(self, x: Tensor, r: Tensor, r2: Tensor) -> Tensor:
        return (0.5 * self.k * (_take(r, self.pidx) - self.r0) ** 2).sum(-1)


class _HarmonicAngles(_Term):
    """E = sum 1/2 k (theta - theta0)^2 ;  k in kJ/mol/rad^2, theta0 in rad."""

    def __init__(self, force: openmm.HarmonicAngleForce, dtype):
        super().__init__(dtype)
        if force.usesPeriodicBoundaryConditions():
            raise _refuse(force, "periodic boundary conditions")
        idx, th0, k = [], [], []
        for a in range(force.getNumAngles()):
            i, j, l, theta, kk = force.getAngleParameters(a)
            idx.append((i, j, l))
            th0.append(_val(theta, unit.radian))
            k.append(_val(kk, unit.kilojoule_per_mole / unit.radian**2))
        self.register_buffer("idx", self._idx(idx, 3))
        self.register_buffer("theta0", self._t(th0))
        self.register_buffer("k", self._t(k))

    def forward(self, x: Tensor, r: Tensor, r2: Tensor) -> Tensor:
        return (0.5 * self.k * (_angle(x, self.idx) - self.theta0) ** 2).sum(-1)


class _PeriodicTorsions(_Term):
    """E = sum k (1 + cos(n phi - phi0)) ;  k in kJ/mol, phi0 in rad."""

    def __init__(self, force: openmm.PeriodicTorsionForce, dtype):
        super().__init__(dtype)
        if force.usesPeriodicBoundaryConditions():
            raise _refuse(force, "periodic boundary conditions")
        idx, n, ph, k = [], [], [], []
        for t in range(force.getNumTorsions()):
            i, j, l, m, per, phase, kk = force.getTorsionParameters(t)
            idx.append((i, j, l, m))
            n.append(float(per))
            ph.append(_val(phase, unit.radian))
            k.append(_val(kk, unit.kilojoule_per_mole))
        self.register_buffer("idx", self._idx(idx, 4))
        self.register_buffer("n", self._t(n))
        self.register_buffer("phase", self._t(ph))
        self.register_buffer("k", self._t(k))

    def forward(self, x: Tensor, r: Tensor, r2: Tensor) -> Tensor:
        phi = _dihedral(x, self.idx)
        return (self.k * (1.0 + torch.cos(self.n * phi - self.phase))).sum(-1)


class _Nonbonded(_Term):
    """Coulomb + Lennard-Jones without cutoff over all non-excluded pairs and all exceptions.

    E = sum_pairs ONE_4PI_EPS0 qq / r + 4 eps ((sigma/r)^12 - (sigma/r)^6), with
    qq = q_i q_j, sigma = (sigma_i + sigma_j)/2, eps = sqrt(eps_i eps_j) for ordinary pairs and
    the exception's own (chargeProd, sigma, epsilon) for exceptions.  Pairs whose qq and eps are
    both zero (pure exclusions) are dropped at construction.
    """

    def __init__(self, force: openmm.NonbondedForce, pair_of: dict, n: int, dtype):
        super().__init__(dtype)
        if force.getNonbondedMethod() != openmm.NonbondedForce.NoCutoff:
            names = {
                openmm.NonbondedForce.CutoffNonPeriodic: "CutoffNonPeriodic",
                openmm.NonbondedForce.CutoffPeriodic: "CutoffPeriodic",
                openmm.NonbondedForce.Ewald: "Ewald",
                openmm.NonbondedForce.PME: "PME",
                openmm.NonbondedForce.LJPME: "LJPME",
            }
            method = names.get(force.getNonbondedMethod(), str(force.getNonbondedMethod()))
            raise _refuse(force, f"nonbondedMethod={method} (only NoCutoff)")
        if force.getUseSwitchingFunction():
            raise _refuse(force, "a switching function")
        if force.getNumGlobalParameters() > 0:
            raise _refuse(force, "global parameters")
        if force.getNumParticleParameterOffsets() > 0:
            raise _refuse(force, "particle parameter offsets")
        if force.getNumExceptionParameterOffsets() > 0:
            raise _refuse(force, "exception parameter offsets")
        if hasattr(force, "getIncludeDirectSpace") and not force.getIncludeDirectSpace():
            raise _refuse(force, "includeDirectSpace=False")
        if force.getNumParticles() != n:
            raise _refuse(force, f"{force.getNumParticles()} particles for a System of {n}")
        q, sig, eps = [], [], []
        for i in range(n):
            qi, si, ei = force.getParticleParameters(i)
            q.append(_val(qi, unit.elementary_charge))
            sig.append(_val(si, unit.nanometer))
            eps.append(_val(ei, unit.kilojoule_per_mole))
        params: dict[int, tuple[float, float, float]] = {}
        for (i, j), p in pair_of.items():
            params[p] = (q[i] * q[j], 0.5 * (sig[i] + sig[j]), math.sqrt(eps[i] * eps[j]))
        for e in range(force.getNumExceptions()):
            i, j, qq, s, ep = force.getExceptionParameters(e)
            if i == j:
                raise _refuse(force, f"exception {e} between a particle and itself")
            params[pair_of[(min(i, j), max(i, j))]] = (
                _val(qq, unit.elementary_charge**2),
                _val(s, unit.nanometer),
                _val(ep, unit.kilojoule_per_mole),
            )
        keep = sorted(p for p, (qq, _, ep) in params.items() if qq != 0.0 or ep != 0.0)
        self.register_buffer("pidx", torch.as_tensor(keep, dtype=torch.long))
        self.register_buffer("qq", self._t([ONE_4PI_EPS0 * params[p][0] for p in keep]))
        self.register_buffer("sigma2", self._t([params[p][1] ** 2 for p in keep]))
        self.register_buffer("eps4", self._t([4.0 * params[p][2] for p in keep]))

    def forward(self, x: Tensor, r: Tensor, r2: Tensor) -> Tensor:
        inv_r2 = 1.0 / _take(r2, self.pidx)
        s2 = self.sigma2 * inv_r2
        s6 = s2 * s2 * s2
        return (self.qq * torch.sqrt(inv_r2) + self.eps4 * (s6 * s6 - s6)).sum(-1)


class _GBOBC(_Term):
    """Generalized Born (OBC) implicit solvent with optional ACE surface-area term, no cutoff.

    Per particle i: charge q_i (e), offset radius or_i = rho_i - offset (nm), scaled offset radius
    sr_i = s_i * or_i (nm).  Born radii:

        I_i = sum_{j != i} [r_ij + sr_j >= or_i] * 1/2 (1/L - 1/U + 1/4 (r - sr_j^2/r)(1/U^2 - 1/L^2)
                                                 + 1/2 log(L/U)/r [+ C]),
        U = r + sr_j, L = max(or_i, |r - sr_j|), C = 2 (1/or_i - 1/L) [sr_j - r > or_i]
                                                              (C only for the built-in force),
        psi_i = I_i or_i,   B_i = 1 / (1/or_i - tanh(alpha psi - beta psi^2 + gamma psi^3) / rho_i)

    Energy (kJ/mol), with D(x) = 1/eps_solute - exp(-kappa x)/eps_solvent:

        self  : sum_i  -1/2 K D(B_i) q_i^2 / B_i
        ACE   : sum_i  sa (rho_i + probe)^2 (rho_i / B_i)^6
        pairs : sum_{i<j} -K D(f_ij) q_i q_j / f_ij,  f = sqrt(r^2 + B_i B_j exp(-r^2 / (4 B_i B_j)))
    """

    def __init__(self, *, n, charge, or_, sr, rho_b, alpha, beta, gamma, c_term,
                 self_term, ace_term, pair_term, dtype):
        super().__init__(dtype)
        self.c_term = bool(c_term)
        self.alpha, self.beta, self.gamma = float(alpha), float(beta), float(gamma)
        # self_term / pair_term: None or (K, soluteDielectric, solventDielectric, kappa)
        # ace_term: None or (sa, probe, rho_ace per particle)
        self.has_self = self_term is not None
        self.has_pair = pair_term is not None
        self.has_ace = ace_term is not None
        if self.has_self:
            k, ein, eout, kappa = self_term
            self.self_coef = (-0.5 * k / ein, -0.5 * k / eout, float(kappa))
        if self.has_pair:
            k, ein, eout, kappa = pair_term
            self.pair_coef = (-k / ein, -k / eout, float(kappa))
        # neighbour table: for each i the N-1 other particles (in order), and the index of the
        # pair (min, max) in the all-pairs list
        pair_of = _pair_index(n)
        nbr = [[j for j in range(n) if j != i] for i in range(n)]
        nbr_pair = [[pair_of[(min(i, j), max(i, j))] for j in nbr[i]] for i in range(n)]
        self.register_buffer("nbr", torch.as_tensor(nbr, dtype=torch.long).reshape(n, n - 1))
        self.register_buffer("nbr_pair", torch.as_tensor(nbr_pair, dtype=torch.long).reshape(n, n - 1))
        iu = torch.triu_indices(n, n, offset=1)
        self.register_buffer("pi", iu[0].clone())
        self.register_buffer("pj", iu[1].clone())
        self.register_buffer("charge", self._t(charge))
        self.register_buffer("or_", self._t(or_))
        self.register_buffer("sr", self._t(sr))
        self.register_buffer("rho_b", self._t(rho_b))
        q = torch.as_tensor(charge, dtype=torch.float64)
        self.register_buffer("q2", (q * q).to(dtype))
        self.register_buffer("qq", (q[iu[0]] * q[iu[1]]).to(dtype))
        if self.has_ace:
            sa, probe, rho_ace = ace_term
            rho_ace = torch.as_tensor(rho_ace, dtype=torch.float64)
            self.register_buffer("ace_pref", (sa * (rho_ace + probe) ** 2).to(dtype))
            self.register_buffer("rho_ace", rho_ace.to(dtype))

    def born_radii(self, r: Tensor) -> Tensor:
        """Born radii (nm), shape (B, N), from all-pair distances r (B, P)."""
        rn = _take(r, self.nbr_pair)  # (B, N, N-1)
        or1 = self.or_[:, None]  # (N, 1)
        sr2 = self.sr[self.nbr]  # (N, N-1)
        u = rn + sr2
        l = torch.maximum(torch.abs(rn - sr2), or1)
        inv_l, inv_u, inv_r = 1.0 / l, 1.0 / u, 1.0 / rn
        term = inv_l - inv_u + (0.25 * rn - 0.25 * sr2 * sr2 * inv_r) * (inv_u * inv_u - inv_l * inv_l) \
            + 0.5 * torch.log(l * inv_u) * inv_r
        if self.c_term:
            term = term + torch.where(sr2 - rn > or1, 2.0 / or1 - 2.0 * inv_l, 0.0)
        term = torch.where(u >= or1, term, 0.0)
        psi = term.sum(-1) * (0.5 * self.or_)
        t = torch.tanh(psi * (self.alpha + psi * (-self.beta + self.gamma * psi)))
        return 1.0 / (1.0 / self.or_ - t / self.rho_b)

    def forward(self, x: Tensor, r: Tensor, r2: Tensor) -> Tensor:
        born = self.born_radii(r)
        e = torch.zeros_like(born[:, 0])
        if self.has_self:
            a, b, kappa = self.self_coef
            screen = a - b * torch.exp(-kappa * born) if kappa != 0.0 else a - b
            e = e + (screen * self.q2 / born).sum(-1)
        if self.has_ace:
            ratio = self.rho_ace / born
            r3 = ratio * ratio * ratio
            e = e + (self.ace_pref * r3 * r3).sum(-1)
        if self.has_pair:
            a, b, kappa = self.pair_coef
            bb = _take(born, self.pi) * _take(born, self.pj)
            f = torch.sqrt(r2 + bb * torch.exp(-r2 / (4.0 * bb)))
            screen = a - b * torch.exp(-kappa * f) if kappa != 0.0 else a - b
            e = e + (screen * self.qq / f).sum(-1)
        return e


def _gb_from_custom(force: openmm.CustomGBForce, n: int, dtype) -> _GBOBC:
    """Recognise a CustomGBForce built by openmm.app.internal.customgbforces.GBSAOBC1Force /
    GBSAOBC2Force (no cutoff) and read its parameters."""
    if force.getNonbondedMethod() != openmm.CustomGBForce.NoCutoff:
        raise _refuse(force, f"nonbondedMethod={force.getNonbondedMethod()} (only NoCutoff)")
    if force.getNumTabulatedFunctions() > 0:
        raise _refuse(force, "tabulated functions")
    if force.getNumParticles() != n:
        raise _refuse(force, f"{force.getNumParticles()} particles for a System of {n}")
    names = [force.getPerParticleParameterName(k) for k in range(force.getNumPerParticleParameters())]
    if names != ["charge", "or", "sr"]:
        raise _refuse(force, f"per-particle parameters {names} (expected ['charge', 'or', 'sr'])")
    globals_ = {
        force.getGlobalParameterName(k): float(force.getGlobalParameterDefaultValue(k))
        for k in range(force.getNumGlobalParameters())
    }
    SP, PP, PPNE = (openmm.CustomGBForce.SingleParticle, openmm.CustomGBForce.ParticlePair,
                    openmm.CustomGBForce.ParticlePairNoExclusions)
    pair_types = (PPNE,) if force.getNumExclusions() > 0 else (PP, PPNE)

    if force.getNumComputedValues() != 2:
        raise _refuse(force, f"{force.getNumComputedValues()} computed values (expected I and B of OBC)")
    name_i, expr_i, type_i = force.getComputedValueParameters(0)
    e_i = _Expr(expr_i, globals_)
    if name_i != "I" or type_i not in pair_types or _match(e_i.main, _GB_I_EXPR) != {} \
            or not e_i.check(_GB_I_DEFS) or e_i.numeric:
        raise _refuse(force, f"computed value {name_i!r} = {expr_i!r} (not the OBC integral)")
    name_b, expr_b, type_b = force.getComputedValueParameters(1)
    e_b = _Expr(expr_b, globals_)
    abg = None
    for pattern, fixed in _GB_B_PATTERNS:
        m = _match(e_b.main, pattern)
        if m is not None:
            abg = {**fixed, **m}
            break
    if name_b != "B" or type_b != SP or abg is None or not e_b.check(_GB_B_DEFS):
        raise _refuse(force, f"computed value {name_b!r} = {expr_b!r} (not an OBC Born radius)")
    offset_b = e_b.number("offset")

    self_term = ace = pair = None
    for k in range(force.getNumEnergyTerms()):
        expr, ttype = force.getEnergyTermParameters(k)
        e = _Expr(expr, globals_)
        recognised = False
        if ttype == SP and e.check({}):
            for pattern, with_kappa in _GB_SELF_PATTERNS:
                m = _match(e.main, pattern)
                if m is not None and self_term is None:
                    kappa = e.number("kappa") if with_kappa else 0.0
                    self_term = (m["K"], e.number("soluteDielectric"), e.number("solventDielectric"), kappa)
                    recognised = True
                    break
        if not recognised and ttype == SP and e.check({"radius": "or+offset"}):
            m = _match(e.main, _GB_ACE_PATTERN)
            if m is not None and ace is None:
                ace = (m["sa"], m["probe"], e.number("offset"))
                recognised = True
        if not recognised and ttype in pair_types and e.check(_GB_F_DEFS):
            for pattern, with_kappa in _GB_PAIR_PATTERNS:
                m = _match(e.main, pattern)
                if m is not None and pair is None:
                    kappa = e.number("kappa") if with_kappa else 0.0
                    pair = (m["K"], e.number("soluteDielectric"), e.number("solventDielectric"), kappa)
                    recognised = True
                    break
        if not recognised:
            raise _refuse(force, f"energy term {expr!r} (type {ttype}; unrecognised or with cutoff)")

    charge, or_, sr = [], [], []
    for i in range(n):
        c, o, s = force.getParticleParameters(i)
        charge.append(float(c))
        or_.append(float(o))
        sr.append(float(s))
    rho_b = [o + offset_b for o in or_]
    ace_term = None if ace is None else (ace[0], ace[1], [o + ace[2] for o in or_])
    return _GBOBC(n=n, charge=charge, or_=or_, sr=sr, rho_b=rho_b, alpha=abg["alpha"],
                  beta=abg["beta"], gamma=abg["gamma"], c_term=False, self_term=self_term,
                  ace_term=ace_term, pair_term=pair, dtype=dtype)


def _gb_from_builtin(force: openmm.GBSAOBCForce, n: int, dtype) -> _GBOBC:
    """OpenMM's built-in GBSAOBCForce (OBC type II, reference C++ implementation)."""
    if force.getNonbondedMethod() != openmm.GBSAOBCForce.NoCutoff:
        raise _refuse(force, f"nonbondedMethod={force.getNonbondedMethod()} (only NoCutoff)")
    if force.getNumParticles() != n:
        raise _refuse(force, f"{force.getNumParticles()} particles for a System of {n}")
    offset = _BUILTIN_OBC_DIELECTRIC_OFFSET
    charge, or_, sr, rho = [], [], [], []
    for i in range(n):
        c, radius, scale = force.getParticleParameters(i)
        c, radius, scale = _val(c, unit.elementary_charge), _val(radius, unit.nanometer), float(scale)
        charge.append(c)
        rho.append(radius)
        or_.append(radius - offset)
        sr.append(scale * (radius - offset))
    ein, eout = float(force.getSoluteDielectric()), float(force.getSolventDielectric())
    sa = 4.0 * math.pi * _val(force.getSurfaceAreaEnergy(), unit.kilojoule_per_mole / unit.nanometer**2)
    alpha, beta, gamma = _BUILTIN_OBC_ALPHA_BETA_GAMMA
    return _GBOBC(n=n, charge=charge, or_=or_, sr=sr, rho_b=rho, alpha=alpha, beta=beta, gamma=gamma,
                  c_term=True, self_term=(ONE_4PI_EPS0, ein, eout, 0.0),
                  ace_term=(sa, _BUILTIN_OBC_PROBE_RADIUS, rho) if sa != 0.0 else None,
                  pair_term=(ONE_4PI_EPS0, ein, eout, 0.0), dtype=dtype)


# --------------------------------------------------------------------------------------------
# Public class
# --------------------------------------------------------------------------------------------


class TorchEnergy(nn.Module):
    """Potential energy of an ``openmm.System`` for a batch of configurations, in PyTorch.

    Args:
        system: the OpenMM System (read once; later changes to it are not seen).
        temperature_K: temperature (K) for :meth:`reduced_energy`.
        dtype: ``torch.float64`` (default) or ``torch.float32``; all computations use it.
        device: where the parameters live and the computation runs.

    Raises:
        UnsupportedForceError: for a force class or option that is not implemented.

    Attributes:
        n_particles: N.
        kT: k_B T in kJ/mol.
        term_names: one name per energy-carrying force, e.g. ``"NonbondedForce"`` (a suffix
            ``"_1"``, ``"_2"``... is added for repeated classes).
        term_force_indices: term name -> index of the force in ``system.getForces()``.
    """

    def __init__(self, system: openmm.System, temperature_K: float, dtype: torch.dtype = torch.float64,
                 device: str | torch.device = "cpu"):
        super().__init__()
        if dtype not in (torch.float32, torch.float64):
            raise ValueError(f"dtype must be torch.float32 or torch.float64, got {dtype}")
        n = system.getNumParticles()
        if n < 2:
            raise ValueError("TorchEnergy needs a System with at least 2 particles")
        for i in range(n):
            if system.isVirtualSite(i):
                raise UnsupportedForceError(f"System: virtual site at particle {i} is not supported by TorchEnergy")
        self.n_particles = n
        self.dtype = dtype
        self.temperature_K = float(temperature_K)
        self.kT = MOLAR_GAS_CONSTANT_KJ * self.temperature_K
        pair_of = _pair_index(n)
        iu = torch.triu_indices(n, n, offset=1)
        self.register_buffer("pair_i", iu[0].clone())
        self.register_buffer("pair_j", iu[1].clone())

        terms: dict[str, nn.Module] = {}
        self.term_force_indices: dict[str, int] = {}
        for index, force in enumerate(system.getForces()):
            cls = type(force).__name__
            if isinstance(force, openmm.CMMotionRemover):
                continue
            if isinstance(force, openmm.HarmonicBondForce):
                term = _HarmonicBonds(force, pair_of, dtype)
            elif isinstance(force, openmm.HarmonicAngleForce):
                term = _HarmonicAngles(force, dtype)
            elif isinstance(force, openmm.PeriodicTorsionForce):
                term = _PeriodicTorsions(force, dtype)
            elif isinstance(force, openmm.NonbondedForce):
                term = _Nonbonded(force, pair_of, n, dtype)
            elif isinstance(force, openmm.CustomGBForce):
                term = _gb_from_custom(force, n, dtype)
            elif isinstance(force, openmm.GBSAOBCForce):
                term = _gb_from_builtin(force, n, dtype)
            else:
                raise UnsupportedForceError(f"{cls}: this force class is not supported by TorchEnergy")
            name, k = cls, 0
            while name in terms:
                k += 1
                name = f"{cls}_{k}"
            terms[name] = term
            self.term_force_indices[name] = index
        self.terms = nn.ModuleDict(terms)
        self.term_names = list(terms)
        self.to(device)

    @property
    def device(self) -> torch.device:
        return self.pair_i.device

    def _prepare(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        if x.dim() != 3 or x.shape[-2:] != (self.n_particles, 3):
            raise ValueError(f"positions must have shape (B, {self.n_particles}, 3), got {tuple(x.shape)}")
        x = x.to(device=self.device, dtype=self.dtype)
        d = _take(x, self.pair_j) - _take(x, self.pair_i)
        r2 = (d * d).sum(-1)
        return x, torch.sqrt(r2), r2

    def energy_terms(self, x: Tensor) -> dict[str, Tensor]:
        """Energy of each force, name -> (B,) tensor in kJ/mol.  x: (B, N, 3) in nm."""
        x, r, r2 = self._prepare(x)
        return {name: term(x, r, r2) for name, term in self.terms.items()}

    #: on the CPU, batches larger than this are evaluated in chunks (the pair tensors of a batch of
    #: 16384 no longer fit the caches: measured 2-3x slower per configuration than 1024, see
    #: docs/benchmarks.md).  Not applied on CUDA, where large fixed-shape batches are the point.
    cpu_chunk_size: int = 1024

    def energy_kJ_per_mol(self, x: Tensor) -> Tensor:
        """Potential energy (kJ/mol), shape (B,), differentiable.  x: (B, N, 3) in nm, any float
        dtype/device (converted to the module's).  NaN/inf positions give NaN/inf energies."""
        c = self.cpu_chunk_size
        if self.device.type == "cpu" and x.shape[0] > c:
            return torch.cat([self._energy(x[i:i + c]) for i in range(0, x.shape[0], c)])
        return self._energy(x)

    def _energy(self, x: Tensor) -> Tensor:
        x, r, r2 = self._prepare(x)
        e = torch.zeros_like(r[:, 0])
        for term in self.terms.values():
            e = e + term(x, r, r2)
        return e

    def forward(self, x: Tensor) -> Tensor:
        """Same as :meth:`energy_kJ_per_mol`."""
        return self.energy_kJ_per_mol(x)

    def reduced_energy(self, x: Tensor) -> Tensor:
        """Reduced potential energy u = E / (k_B T) (dimensionless), shape (B,).  x: (B, N, 3) nm."""
        return self.energy_kJ_per_mol(x) / self.kT

    def energy_and_forces_kJ_per_mol(self, x: Tensor, create_graph: bool = False) -> tuple[Tensor, Tensor]:
        """Energy (kJ/mol, shape (B,)) and forces F = -dE/dx (kJ/mol/nm, shape (B, N, 3)).

        x: (B, N, 3) in nm.  The forces come from autograd on a detached copy of x (set
        ``create_graph=True`` to differentiate through them, e.g. for force matching).
        """
        with torch.enable_grad():
            xg = x.detach().to(device=self.device, dtype=self.dtype).requires_grad_(True)
            e = self.energy_kJ_per_mol(xg)
            (g,) = torch.autograd.grad(e.sum(), xg, create_graph=create_graph)
        if not create_graph:
            e = e.detach()
        return e, -g
