"""Internal coordinates (Z-matrix) built from a bond graph, with an exact log-Jacobian.

A molecule of ``N`` atoms is described by ``3N - 6`` internal coordinates (ICs): the six
rigid-body degrees of freedom are removed by putting three bonded *reference atoms*
``a - b - c`` into a canonical frame, and every other atom is placed from three atoms that
were placed before it (a Z-matrix row).

Z-matrix construction (:func:`build_zmatrix`)
---------------------------------------------
* The reference chain ``(a, b, c)`` is taken from the first requested torsion ``(i, j, k, l)``:
  either ``(j, k, l)`` or ``(i, j, k)``, whichever has more heavy atoms and, on a tie, whose
  middle atom is most central in the bond graph (smallest sum of graph distances).  For
  alanine dipeptide with phi requested first this gives ``(N, CA, C)`` so that both phi and
  psi become torsions of placed atoms (``C(ACE)`` and ``N(NME)``).  Without requested
  torsions the most central heavy atom with two bonded heavy neighbours is ``b``.
* The other atoms are placed in rounds (breadth first from the references).  Within a round
  the endpoints of requested torsions come first, then heavy atoms, then by atom index.  An
  atom ``x`` is placed by a row ``(x, p, q, t)``: bond ``|x - p|``, angle ``x-p-q`` and
  dihedral ``x-p-q-t``, where

  - if ``x`` is an endpoint of a requested torsion whose other three atoms are placed, the
    row is that torsion (kind ``"requested"``);
  - otherwise ``p`` is a placed bonded neighbour (heavy first, then earliest placed),
    ``q`` is the atom ``p`` was placed from (for the reference atoms: ``a -> b``, ``b -> a``,
    ``c -> b``), and ``t`` is
      * an already placed *sibling*: a neighbour of ``p`` other than ``q`` (kind
        ``"sibling"``; e.g. the 2nd/3rd methyl hydrogen with ``t`` = the 1st hydrogen), or
        if there is none,
      * a placed neighbour of ``q`` other than ``p`` (preferably the atom ``q`` was placed
        from): a proper torsion about the bond ``p - q`` (kind ``"primary"``).

* **Circular rule.**  A dihedral is *circular* (periodic, to be given a uniform base
  density by the flow) iff its kind is ``"requested"`` or ``"primary"``, i.e. it is the
  first torsion about the bond ``p - q``.  ``"sibling"`` dihedrals measure the position of
  an atom relative to another substituent of the same centre ``p``; they are narrowly
  distributed (about +-120 deg or 180 deg) and are not circular.  Requested (CG) torsions
  are always circular.

IC vector layout (shape ``(3N - 6,)``)
--------------------------------------
``[r_ab, r_bc, theta_abc,  r_1, theta_1, phi_1,  r_2, theta_2, phi_2, ...]``

* ``ic[0] = |a - b|``, ``ic[1] = |c - b|``, ``ic[2] = angle(a, b, c)``;
* for the ``m``-th placed row ``(x, p, q, t)`` (placement order, ``ZMatrix.placed``):
  ``ic[3 + 3m] = |x - p|``, ``ic[4 + 3m] = angle(x, p, q)``,
  ``ic[5 + 3m] = dihedral(x, p, q, t)`` (IUPAC / mdtraj sign; equal to
  ``dihedral(t, q, p, x)``).

Units: nm and radians.  Dihedrals are returned in ``[-pi, pi)``.

Canonical frame and Jacobian
----------------------------
:meth:`InternalCoordinateTransform.from_internal` puts ``b`` at the origin, ``a`` on the
``+x`` axis at ``(r_ab, 0, 0)`` and ``c`` in the ``xy`` plane with ``c_y > 0``:
``c = r_bc (cos theta_abc, sin theta_abc, 0)``.  The *reduced Cartesian coordinates* are
the ``3N - 6`` numbers ``(a_x, c_x, c_y, x_1, y_1, z_1, ...)`` (all placed atoms).  The map
IC -> reduced Cartesians is block triangular, so

``log|det J| = log r_bc + sum_m [2 log r_m + log|sin theta_m|]``

(``a_x = r_ab`` contributes 1; ``(c_x, c_y)`` are polar coordinates of ``(r_bc, theta)``
contributing ``r_bc``; each placed atom is in spherical coordinates about ``p`` with volume
element ``r^2 sin theta``), plus ``sum log std`` of the normalization below.

Normalization (optional, given a reference configuration)
---------------------------------------------------------
With a reference (e.g. minimum-energy) configuration, bonds and angles are returned as
``(value - ref) / std`` with ``std = 0.005 nm`` (bonds) and ``0.15 rad`` (angles); non
circular dihedrals as ``wrap(value - ref) / 0.2``.  **Circular dihedrals are neither
shifted nor scaled**, only wrapped to ``[-pi, pi)``, so the CG torsions in the IC vector
are the plain phi / psi values.  Without a reference no normalization is applied.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import torch

from cgflow.core.geometry import compute_angles, compute_dihedrals, compute_distances, wrap_angle

Tensor = torch.Tensor

__all__ = [
    "ZMatrix",
    "InternalCoordinateTransform",
    "build_zmatrix",
    "zmatrix_from_mdtraj_topology",
    "find_dihedral",
    "bonds_from_topology",
    "compute_distances",
    "compute_angles",
    "compute_dihedrals",
    "canonical_frame",
    "reduced_cartesian",
    "wrap_angle",
]

BOND_STD = 0.005  # nm
ANGLE_STD = 0.15  # rad
DIHEDRAL_STD = 0.2  # rad (non-circular dihedrals)


# --------------------------------------------------------------------------------------
# geometry primitives (batched, differentiable)
# --------------------------------------------------------------------------------------


def canonical_frame(x: Tensor, reference_atoms: Sequence[int]) -> Tensor:
    """Rigidly move x (B, N, 3) so that b is at the origin, a on +x and c in the xy plane
    (c_y > 0), for ``reference_atoms = (a, b, c)``."""
    a, b, c = reference_atoms
    xb = x[:, b : b + 1, :]
    e1 = x[:, a, :] - x[:, b, :]
    e1 = e1 / torch.linalg.vector_norm(e1, dim=-1, keepdim=True)
    v = x[:, c, :] - x[:, b, :]
    e2 = v - (v * e1).sum(-1, keepdim=True) * e1
    e2 = e2 / torch.linalg.vector_norm(e2, dim=-1, keepdim=True)
    e3 = torch.cross(e1, e2, dim=-1)
    rot = torch.stack([e1, e2, e3], dim=-1)  # (B, 3, 3), columns = new axes
    return (x - xb) @ rot


def reduced_cartesian(x_canonical: Tensor, reference_atoms: Sequence[int]) -> Tensor:
    """The 3N-6 free numbers of canonical-frame coordinates (B, N, 3) -> (B, 3N-6):
    ``(a_x, c_x, c_y)`` followed by the xyz of all other atoms in atom-index order."""
    a, b, c = reference_atoms
    n = x_canonical.shape[1]
    others = [i for i in range(n) if i not in (a, b, c)]
    idx = torch.as_tensor(others, dtype=torch.long, device=x_canonical.device)
    head = torch.stack([x_canonical[:, a, 0], x_canonical[:, c, 0], x_canonical[:, c, 1]], dim=-1)
    return torch.cat([head, x_canonical[:, idx, :].reshape(x_canonical.shape[0], -1)], dim=-1)


# --------------------------------------------------------------------------------------
# Z-matrix
# --------------------------------------------------------------------------------------


@dataclass
class ZMatrix:
    """A Z-matrix over ``n_atoms`` atoms (see the module docstring for the IC layout).

    Attributes:
        n_atoms: number of atoms N.
        reference_atoms: (a, b, c), a bonded chain; ICs 0..2 are |a-b|, |c-b|, angle(a,b,c).
        placed: rows (atom, bond_ref, angle_ref, torsion_ref) in placement order.
        dihedral_kinds: per row, "requested", "primary" or "sibling".
        generations: per row, the placement depth (1 + max depth of its three references;
            the reference atoms have depth 0); rows are sorted by it.
        torsions: the requested torsions, as given.
        atom_names: optional names used in messages and labels.
    """

    n_atoms: int
    reference_atoms: tuple[int, int, int]
    placed: list[tuple[int, int, int, int]]
    dihedral_kinds: list[str]
    generations: list[int]
    torsions: list[tuple[int, int, int, int]] = field(default_factory=list)
    atom_names: list[str] | None = None

    # ---- sizes and index helpers -----------------------------------------------------
    @property
    def n_ic(self) -> int:
        return 3 * self.n_atoms - 6

    @property
    def bond_indices(self) -> np.ndarray:
        return np.array([0, 1] + [3 + 3 * m for m in range(len(self.placed))], dtype=np.int64)

    @property
    def angle_indices(self) -> np.ndarray:
        return np.array([2] + [4 + 3 * m for m in range(len(self.placed))], dtype=np.int64)

    @property
    def dihedral_indices(self) -> np.ndarray:
        return np.array([5 + 3 * m for m in range(len(self.placed))], dtype=np.int64)

    @property
    def circular_mask(self) -> np.ndarray:
        """(3N-6,) bool: dihedrals of kind "requested" or "primary"."""
        mask = np.zeros(self.n_ic, dtype=bool)
        for m, kind in enumerate(self.dihedral_kinds):
            mask[5 + 3 * m] = kind != "sibling"
        return mask

    @property
    def torsion_indices(self) -> np.ndarray:
        """IC indices of the requested torsions, in the order they were requested."""
        return np.array([self.torsion_index(*t) for t in self.torsions], dtype=np.int64)

    @property
    def fg_indices(self) -> np.ndarray:
        """IC indices of everything except the requested torsions (ascending)."""
        keep = np.ones(self.n_ic, dtype=bool)
        keep[self.torsion_indices] = False
        return np.nonzero(keep)[0]

    def torsion_index(self, i: int, j: int, k: int, l: int) -> int:
        """Index in the IC vector of dihedral (i, j, k, l) (either orientation)."""
        key = (int(i), int(j), int(k), int(l))
        for m, row in enumerate(self.placed):
            if row == key or row == key[::-1]:
                return 5 + 3 * m
        raise KeyError(f"dihedral {self._fmt(key)} is not a torsion of this Z-matrix")

    def ic_atoms(self, index: int) -> tuple[int, ...]:
        """The atoms defining IC ``index`` (2 for a bond, 3 for an angle, 4 for a dihedral)."""
        a, b, c = self.reference_atoms
        if index == 0:
            return (a, b)
        if index == 1:
            return (c, b)
        if index == 2:
            return (a, b, c)
        m, r = divmod(index - 3, 3)
        return self.placed[m][: 2 + r]

    def ic_labels(self) -> list[str]:
        kinds = {2: "bond", 3: "angle", 4: "dihedral"}
        out = []
        for index in range(self.n_ic):
            at = self.ic_atoms(index)
            out.append(f"{kinds[len(at)]}({', '.join(self._name(i) for i in at)})")
        return out

    def _name(self, i: int) -> str:
        return self.atom_names[i] if self.atom_names is not None else str(i)

    def _fmt(self, atoms: Sequence[int]) -> str:
        s = "(" + ", ".join(str(int(i)) for i in atoms) + ")"
        if self.atom_names is not None:
            s += " [" + " - ".join(self._name(i) for i in atoms) + "]"
        return s


def _fmt_atoms(atoms: Sequence[int], names: Sequence[str] | None) -> str:
    s = "(" + ", ".join(str(int(i)) for i in atoms) + ")"
    if names is not None:
        s += " [" + " - ".join(str(names[i]) for i in atoms) + "]"
    return s


def _graph_distances(adj: list[set[int]], src: int) -> np.ndarray:
    n = len(adj)
    dist = np.full(n, n + 1, dtype=np.int64)
    dist[src] = 0
    queue = deque([src])
    while queue:
        u = queue.popleft()
        for v in adj[u]:
            if dist[v] > dist[u] + 1:
                dist[v] = dist[u] + 1
                queue.append(v)
    return dist


def _place_atoms(
    adj: list[set[int]],
    refs: tuple[int, int, int],
    torsions: list[tuple[int, int, int, int]],
    heavy: list[bool],
    names: Sequence[str] | None,
) -> tuple[list[tuple[int, int, int, int]], list[str]]:
    """Greedy placement from the reference chain; raises ValueError when a requested torsion
    cannot be the torsion of a placed atom or the graph is disconnected."""
    n = len(adj)
    a, b, c = refs
    rank = {a: 0, b: 1, c: 2}  # placement rank
    parent = {a: b, b: a, c: b}  # the atom each placed atom was placed from
    rows: list[tuple[int, int, int, int]] = []
    kinds: list[str] = []
    satisfied = [False] * len(torsions)
    endpoint_of: dict[int, list[int]] = {}
    for ti, (i, _, _, l) in enumerate(torsions):
        endpoint_of.setdefault(i, []).append(ti)
        endpoint_of.setdefault(l, []).append(ti)

    def other_three(ti: int, x: int) -> tuple[int, int, int]:
        i, j, k, l = torsions[ti]
        return (k, j, i) if x == l else (j, k, l)

    def choose(x: int) -> tuple[tuple[int, int, int] | None, str, int | None]:
        pending = [ti for ti in endpoint_of.get(x, []) if not satisfied[ti]]
        for ti in pending:
            p, q, t = other_three(ti, x)
            if p in rank and q in rank and t in rank:
                return (p, q, t), "requested", ti
        for ti in pending:
            i, _, _, l = torsions[ti]
            if (i if x == l else l) in rank:  # only x can still carry this torsion: wait
                return None, "", None
        nbrs = sorted((v for v in adj[x] if v in rank), key=lambda v: (not heavy[v], rank[v]))
        p = nbrs[0]
        q = parent[p]
        sib = sorted((v for v in adj[p] if v in rank and v != q), key=lambda v: rank[v])
        if sib:
            return (p, q, sib[0]), "sibling", None
        cand = [v for v in adj[q] if v in rank and v != p]
        if not cand:  # cannot happen for a connected graph with a bonded reference chain
            raise ValueError(f"cannot find a torsion reference for atom {_fmt_atoms([x], names)}")
        cand.sort(key=lambda v: (v != parent[q], not heavy[v], rank[v]))
        return (p, q, cand[0]), "primary", None

    while len(rank) < n:
        cands = [x for x in range(n) if x not in rank and any(v in rank for v in adj[x])]
        if not cands:
            missing = [x for x in range(n) if x not in rank]
            raise ValueError(
                f"the bond graph is not connected: atoms {_fmt_atoms(missing[:10], names)}"
                f"{' ...' if len(missing) > 10 else ''} cannot be reached from the reference atoms"
            )
        cands.sort(key=lambda x: (x not in endpoint_of, not heavy[x], x))
        progress = False
        for x in cands:
            ref3, kind, ti = choose(x)
            if ref3 is None:
                continue
            rows.append((x, *ref3))
            kinds.append(kind)
            rank[x] = len(rank)
            parent[x] = ref3[0]
            if ti is not None:
                satisfied[ti] = True
            progress = True
        if not progress:
            break
    bad = [torsions[ti] for ti in range(len(torsions)) if not satisfied[ti]]
    if bad or len(rank) < n:
        t = bad[0] if bad else torsions[0]
        raise ValueError(
            f"cannot build a Z-matrix in which torsion {_fmt_atoms(t, names)} is the dihedral "
            f"of a placed atom (reference atoms {_fmt_atoms(refs, names)})"
        )
    return rows, kinds


def build_zmatrix(
    bonds: Sequence[tuple[int, int]],
    n_atoms: int,
    torsions: Sequence[tuple[int, int, int, int]] = (),
    heavy: Sequence[bool] | None = None,
    atom_names: Sequence[str] | None = None,
) -> ZMatrix:
    """Build a Z-matrix from a bond graph so that every requested torsion is the dihedral of
    one placed atom.  See the module docstring for the rules.

    Args:
        bonds: pairs of bonded atom indices (e.g. from ``mdtraj.Topology.bonds``).
        n_atoms: number of atoms (>= 3).
        torsions: requested (CG) torsions (i, j, k, l); each must be a chain of bonded atoms.
        heavy: per atom, whether it is a heavy (non-hydrogen) atom; default: all heavy.
        atom_names: optional names for error messages and labels.

    Raises:
        ValueError: a torsion is not a bonded chain of 4 distinct atoms, cannot be realised,
            or the graph is disconnected / too small.
    """
    n = int(n_atoms)
    if n < 3:
        raise ValueError(f"need at least 3 atoms for internal coordinates, got {n}")
    names = list(atom_names) if atom_names is not None else None
    heavy_l = [True] * n if heavy is None else [bool(h) for h in heavy]
    if len(heavy_l) != n:
        raise ValueError(f"heavy has length {len(heavy_l)}, expected {n}")
    adj: list[set[int]] = [set() for _ in range(n)]
    for u, v in bonds:
        u, v = int(u), int(v)
        if not (0 <= u < n and 0 <= v < n) or u == v:
            raise ValueError(f"invalid bond ({u}, {v}) for {n} atoms")
        adj[u].add(v)
        adj[v].add(u)

    tors: list[tuple[int, int, int, int]] = []
    for t in torsions:
        t4 = tuple(int(i) for i in t)
        if len(t4) != 4:
            raise ValueError(f"torsion {t} must have 4 atoms")
        if len(set(t4)) != 4 or not all(0 <= i < n for i in t4):
            raise ValueError(f"torsion {_fmt_atoms(t4, names) if all(0 <= i < n for i in t4) else t4} "
                             f"must consist of 4 distinct atom indices in [0, {n})")
        for u, v in zip(t4[:-1], t4[1:]):
            if v not in adj[u]:
                raise ValueError(
                    f"torsion {_fmt_atoms(t4, names)} is not a chain of bonded atoms: atoms "
                    f"{_fmt_atoms((u, v), names)} are not bonded"
                )
        if t4 in tors or t4[::-1] in tors:
            continue
        tors.append(t4)  # type: ignore[arg-type]

    dist_sum = {}

    def centrality(i: int) -> int:
        if i not in dist_sum:
            dist_sum[i] = int(_graph_distances(adj, i).sum())
        return dist_sum[i]

    def score(ch: tuple[int, int, int]) -> tuple[int, int]:
        return (sum(not heavy_l[i] for i in ch), centrality(ch[1]))

    candidates: list[tuple[int, int, int]] = []
    for t in tors:
        pair = [t[1:], t[:3]]
        pair.sort(key=score)
        candidates += [tuple(ch) for ch in pair if tuple(ch) not in candidates]  # type: ignore[misc]
    # generic central chains (also the fallback when the torsion chains fail)
    middles = [i for i in range(n) if len(adj[i]) >= 2]
    middles.sort(key=lambda i: (sum(heavy_l[v] for v in adj[i]) < 2, not heavy_l[i], centrality(i), i))
    for mid in middles[:5]:
        nb = sorted(adj[mid], key=lambda v: (not heavy_l[v], centrality(v), v))
        ch = (nb[0], mid, nb[1])
        if ch not in candidates:
            candidates.append(ch)
    if not candidates:
        raise ValueError("no chain of three bonded atoms found to use as reference atoms")

    first_error: ValueError | None = None
    for refs in candidates:
        try:
            rows, kinds = _place_atoms(adj, refs, tors, heavy_l, names)
        except ValueError as err:
            if first_error is None:
                first_error = err
            continue
        depth = {refs[0]: 0, refs[1]: 0, refs[2]: 0}
        gens = []
        for x, p, q, t in rows:
            depth[x] = 1 + max(depth[p], depth[q], depth[t])
            gens.append(depth[x])
        order = sorted(range(len(rows)), key=lambda m: gens[m])  # stable
        return ZMatrix(
            n_atoms=n,
            reference_atoms=refs,
            placed=[rows[m] for m in order],
            dihedral_kinds=[kinds[m] for m in order],
            generations=[gens[m] for m in order],
            torsions=list(tors),
            atom_names=names,
        )
    assert first_error is not None
    raise first_error


# --------------------------------------------------------------------------------------
# topology helpers (mdtraj / OpenMM)
# --------------------------------------------------------------------------------------


def _as_mdtraj_topology(top: Any):
    import mdtraj as md

    if isinstance(top, md.Topology):
        return top
    if isinstance(top, md.Trajectory):
        return top.topology
    try:  # OpenMM topology
        from openmm.app import Topology as OmmTopology

        if isinstance(top, OmmTopology):
            return md.Topology.from_openmm(top)
    except ImportError:  # pragma: no cover
        pass
    raise TypeError(f"expected an mdtraj or OpenMM Topology, got {type(top).__name__}")


def bonds_from_topology(top: Any) -> list[tuple[int, int]]:
    """Bonded atom pairs of an mdtraj or OpenMM topology."""
    top = _as_mdtraj_topology(top)
    return [(int(b[0].index), int(b[1].index)) for b in top.bonds]


_DIHEDRAL_INDEXERS = {
    "phi": "indices_phi",
    "psi": "indices_psi",
    "omega": "indices_omega",
    "chi1": "indices_chi1",
    "chi2": "indices_chi2",
    "chi3": "indices_chi3",
    "chi4": "indices_chi4",
    "chi5": "indices_chi5",
}


def find_dihedral(top: Any, name: str, residue: Any = None) -> tuple[int, int, int, int]:
    """Atom indices of backbone/side-chain dihedral ``name`` (phi, psi, omega, chi1..chi5)
    found with mdtraj's own index logic (``mdtraj.geometry.dihedral.indices_<name>``).

    The residue of a dihedral is the residue holding most of its 4 atoms (for phi and psi the
    residue of its CA), ties broken by the second atom.  ``residue`` selects it by index
    (int), by name (e.g. "ALA"), by mdtraj residue string ("ALA2") or by an mdtraj Residue; with
    ``residue=None`` the dihedral must be unique in the topology.
    """
    top = _as_mdtraj_topology(top)
    key = name.lower()
    here = available_dihedrals(top)
    if key not in _DIHEDRAL_INDEXERS or not here.get(key):
        what = "unknown dihedral name" if key not in _DIHEDRAL_INDEXERS else "no dihedral"
        raise ValueError(f"{what} {name!r} in this topology; it has {_describe_available(here)}")

    def matches(res) -> bool:
        if residue is None:
            return True
        if isinstance(residue, (int, np.integer)):
            return res.index == int(residue)
        if isinstance(residue, str):
            return residue in (res.name, str(res))
        return res.index == getattr(residue, "index", None)

    found = [row for row, res in here[key] if matches(res)]
    if len(found) != 1:
        where = "" if residue is None else f" in residue {residue!r}"
        options = ", ".join(f"{key}:{res.index} ({res})" for _, res in here[key])
        raise ValueError(f"found {len(found)} {key} dihedrals{where} (need exactly one); "
                         f"{key} exists here as {options}")
    return found[0]


def available_dihedrals(top: Any) -> dict[str, list[tuple[tuple[int, int, int, int], Any]]]:
    """The named dihedrals a topology has: name -> [(4 atom indices, owning mdtraj Residue), ...].

    Names are those of :func:`find_dihedral` (phi, psi, omega, chi1..chi5, mdtraj's index logic); the owning
    residue is the one holding most of the 4 atoms (for phi and psi the residue of its CA), ties broken by
    the second atom.  Names the topology lacks map to empty lists.
    """
    from mdtraj.geometry import dihedral as mdd

    top = _as_mdtraj_topology(top)

    def owner(row: np.ndarray):
        res = [top.atom(int(i)).residue for i in row]
        counts = {r.index: sum(s.index == r.index for s in res) for r in res}
        best = max(counts.values())
        winners = [r for r in res if counts[r.index] == best]
        return res[1] if res[1] in winners else winners[0]

    out: dict[str, list[tuple[tuple[int, int, int, int], Any]]] = {}
    for key, fn in _DIHEDRAL_INDEXERS.items():
        rows = np.asarray(getattr(mdd, fn)(top), dtype=np.int64).reshape(-1, 4)
        out[key] = [(tuple(int(i) for i in row), owner(row)) for row in rows]  # type: ignore[misc]
    return out


def _describe_available(here: dict) -> str:
    """One line, e.g. "phi:1, psi:1 (ALA2); omega:0 (ACE1), omega:1 (ALA2)" -- name:residue index."""
    parts = [f"{key}:{res.index} ({res})" for key, rows in here.items() for _, res in rows]
    return ", ".join(parts) if parts else "no named dihedrals (give 4 atom indices \"i,j,k,l\")"


def zmatrix_from_mdtraj_topology(top: Any, torsions: Sequence[Any] = ()) -> ZMatrix:
    """Z-matrix of an mdtraj (or OpenMM) topology.

    ``torsions`` entries are 4-tuples of atom indices, dihedral names ("phi", "psi", ...) or
    (name, residue) pairs, resolved with :func:`find_dihedral`.  Hydrogens are recognised by
    element and are not preferred as references.
    """
    top = _as_mdtraj_topology(top)
    resolved = []
    for t in torsions:
        if isinstance(t, str):
            resolved.append(find_dihedral(top, t))
        elif len(t) == 2 and isinstance(t[0], str):
            resolved.append(find_dihedral(top, t[0], t[1]))
        else:
            resolved.append(tuple(int(i) for i in t))
    heavy = [a.element is None or a.element.symbol != "H" for a in top.atoms]
    names = [str(a) for a in top.atoms]
    return build_zmatrix(bonds_from_topology(top), top.n_atoms, resolved, heavy=heavy, atom_names=names)


# --------------------------------------------------------------------------------------
# the transform
# --------------------------------------------------------------------------------------


class InternalCoordinateTransform(torch.nn.Module):
    """Cartesian coordinates (B, N, 3) <-> (normalized) internal coordinates (B, 3N-6).

    Args:
        zmatrix: the Z-matrix (IC layout in the module docstring).
        reference: optional configuration (N, 3) or (1, N, 3) in nm; if given, ICs are
            normalized: bonds/angles/non-circular dihedrals as (value - ref)/std (dihedral
            difference wrapped), circular dihedrals only wrapped to [-pi, pi).
        bond_std, angle_std, dihedral_std: the stds used for the normalization.

    All buffers are float64 and follow ``.to(device)``.
    """

    def __init__(
        self,
        zmatrix: ZMatrix,
        reference: Tensor | np.ndarray | None = None,
        bond_std: float = BOND_STD,
        angle_std: float = ANGLE_STD,
        dihedral_std: float = DIHEDRAL_STD,
    ):
        super().__init__()
        self.zmatrix = zmatrix
        n_ic = zmatrix.n_ic
        rows = np.array(zmatrix.placed, dtype=np.int64).reshape(-1, 4)
        self.register_buffer("ref_atoms", torch.as_tensor(zmatrix.reference_atoms, dtype=torch.long))
        self.register_buffer("rows", torch.as_tensor(rows, dtype=torch.long))
        self.register_buffer("bond_indices", torch.as_tensor(zmatrix.bond_indices))
        self.register_buffer("angle_indices", torch.as_tensor(zmatrix.angle_indices))
        self.register_buffer("dihedral_indices", torch.as_tensor(zmatrix.dihedral_indices))
        self.register_buffer("circular_mask", torch.as_tensor(zmatrix.circular_mask))
        # generation slices of the (generation-sorted) rows
        gens = np.array(zmatrix.generations, dtype=np.int64)
        bounds = np.flatnonzero(np.diff(gens)) + 1 if len(gens) else np.array([], dtype=np.int64)
        starts = [0, *bounds.tolist()]
        ends = [*bounds.tolist(), len(gens)]
        self._gen_slices = [(s, e) for s, e in zip(starts, ends) if e > s]

        mean = torch.zeros(n_ic, dtype=torch.float64)
        std = torch.ones(n_ic, dtype=torch.float64)
        is_dihedral = torch.zeros(n_ic, dtype=torch.bool)
        is_dihedral[self.dihedral_indices] = True
        if reference is not None:
            ref = torch.as_tensor(reference, dtype=torch.float64).detach().cpu().reshape(1, zmatrix.n_atoms, 3)
            raw = self._raw_internal(ref)[0]
            circ = self.circular_mask
            mean = torch.where(circ, torch.zeros_like(raw), raw)
            std[self.bond_indices] = bond_std
            std[self.angle_indices] = angle_std
            std[self.dihedral_indices] = dihedral_std
            std[circ] = 1.0
        self.register_buffer("mean", mean)
        self.register_buffer("std", std)
        self.register_buffer("_is_dihedral", is_dihedral)
        self.normalized = reference is not None

    # ---- sizes ---------------------------------------------------------------------
    @property
    def n_atoms(self) -> int:
        return self.zmatrix.n_atoms

    @property
    def n_ic(self) -> int:
        return self.zmatrix.n_ic

    @property
    def log_std_sum(self) -> Tensor:
        return torch.log(self.std).sum()

    # ---- raw ICs -----------------------------------------------------------------------
    def _raw_internal(self, x: Tensor) -> Tensor:
        """Un-normalized ICs (B, 3N-6); dihedrals in (-pi, pi]."""
        a, b, c = self.zmatrix.reference_atoms
        xa, xb, xc = x[:, a], x[:, b], x[:, c]
        head = torch.stack(
            [compute_distances(xa, xb), compute_distances(xc, xb), compute_angles(xa, xb, xc)], dim=-1
        )
        if self.rows.shape[0] == 0:
            return head
        X = x[:, self.rows[:, 0]]
        P = x[:, self.rows[:, 1]]
        Q = x[:, self.rows[:, 2]]
        T = x[:, self.rows[:, 3]]
        body = torch.stack(
            [compute_distances(X, P), compute_angles(X, P, Q), compute_dihedrals(X, P, Q, T)], dim=-1
        )
        return torch.cat([head, body.reshape(x.shape[0], -1)], dim=-1)

    def _raw_log_det(self, raw: Tensor) -> Tensor:
        """log|det d(reduced Cartesians)/d(raw ICs)| (B,)."""
        ld = torch.log(torch.abs(raw[:, 1]))
        if self.rows.shape[0]:
            r = raw[:, 3::3]
            th = raw[:, 4::3]
            ld = ld + (2 * torch.log(torch.abs(r)) + torch.log(torch.abs(torch.sin(th)))).sum(-1)
        return ld

    # ---- public maps -------------------------------------------------------------------
    def to_internal(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """x (B, N, 3) nm (any rigid placement) -> (ic (B, 3N-6), log|det d ic / d x_reduced| (B,)).

        ``x_reduced`` are the reduced Cartesians of ``x`` moved to the canonical frame (module
        docstring); the log-det is minus that of :meth:`from_internal`.  A single frame (N, 3)
        is treated as a batch of one.
        """
        x = x.to(self.mean.dtype)
        if x.dim() == 2:
            x = x.unsqueeze(0)
        raw = self._raw_internal(x)
        log_det = -self._raw_log_det(raw) - self.log_std_sum
        diff = raw - self.mean
        diff = torch.where(self._is_dihedral, wrap_angle(diff), diff)
        return diff / self.std, log_det

    def from_internal(self, ic: Tensor) -> tuple[Tensor, Tensor]:
        """ic (B, 3N-6) -> (x (B, N, 3) in the canonical frame, log|det J_{T^-1}| (B,)).

        Canonical frame: reference atom b at the origin, a on +x, c in the xy plane (c_y>0).
        """
        ic = ic.to(self.mean.dtype)
        raw = self.mean + self.std * ic
        log_det = self._raw_log_det(raw) + self.log_std_sum
        B = raw.shape[0]
        n = self.n_atoms
        zero = torch.zeros_like(raw[:, 0])
        r_ab, r_bc, th = raw[:, 0], raw[:, 1], raw[:, 2]
        pa = torch.stack([r_ab, zero, zero], dim=-1)
        pb = torch.stack([zero, zero, zero], dim=-1)
        pc = torch.stack([r_bc * torch.cos(th), r_bc * torch.sin(th), zero], dim=-1)
        x = raw.new_zeros(B, n, 3).index_copy(1, self.ref_atoms, torch.stack([pa, pb, pc], dim=1))
        if self.rows.shape[0]:
            body = raw[:, 3:].reshape(B, -1, 3)
            for s, e in self._gen_slices:
                rows = self.rows[s:e]
                new = _nerf(
                    x[:, rows[:, 3]], x[:, rows[:, 2]], x[:, rows[:, 1]],
                    body[:, s:e, 0], body[:, s:e, 1], body[:, s:e, 2],
                )
                x = x.index_copy(1, rows[:, 0], new)
        return x, log_det

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return self.to_internal(x)

    def extra_repr(self) -> str:
        return (f"n_atoms={self.n_atoms}, n_ic={self.n_ic}, reference_atoms={self.zmatrix.reference_atoms}, "
                f"generations={len(self._gen_slices)}, normalized={self.normalized}")


def _nerf(A: Tensor, Bq: Tensor, C: Tensor, r: Tensor, theta: Tensor, phi: Tensor) -> Tensor:
    """Place D with |D-C| = r, angle(D, C, B) = theta, dihedral(A, B, C, D) = phi (IUPAC)."""
    bc = C - Bq
    bc = bc / torch.linalg.vector_norm(bc, dim=-1, keepdim=True)
    nrm = torch.cross(Bq - A, bc, dim=-1)
    nrm = nrm / torch.linalg.vector_norm(nrm, dim=-1, keepdim=True)
    m = torch.cross(nrm, bc, dim=-1)
    st = torch.sin(theta)
    d = (
        -(r * torch.cos(theta)).unsqueeze(-1) * bc
        + (r * st * torch.cos(phi)).unsqueeze(-1) * m
        + (r * st * torch.sin(phi)).unsqueeze(-1) * nrm
    )
    return C + d
