"""Chiral centres from the bond graph and a vectorized chirality check.

A *chiral centre* is an atom with exactly 4 bonded neighbours whose 4 substituent branches are
pairwise non-equivalent.  A branch is compared through a canonical hash of the tree unrolled from
the neighbour away from the centre: a node is (element, sorted hashes of its children), a child
is any bonded atom except the node's parent and the centre itself, and the unrolling stops at
``max_depth`` bonds (rings are unrolled, not closed; the default depth makes this exact for any
molecule whose branches differ within 32 bonds of the centre).  Hashes are interned integers, so
the cost is O(atoms x bonds x depth).

The chirality of a centre ``c`` with neighbours ``n1 < n2 < n3 < n4`` (atom indices; the 4th is
implied) is the sign of the signed volume ``(n1 - c) . ((n2 - c) x (n3 - c))``, recorded from a
reference structure.  :meth:`ChiralityCheck.chirality_ok` is True for the configurations whose
centres all have the reference signs (pure torch, batched; NaN coordinates give False).
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch

from cgflow.systems.molecules.ic.internal_coordinates import _as_mdtraj_topology, bonds_from_topology

__all__ = ["find_chiral_centers", "signed_volumes", "ChiralityCheck"]

Tensor = torch.Tensor


def _elements(top) -> list[str]:
    out = []
    for a in top.atoms:
        out.append(a.element.symbol if a.element is not None else a.name)
    return out


def find_chiral_centers(bonds: Sequence[tuple[int, int]], elements: Sequence[str],
                        max_depth: int = 32) -> list[tuple[int, tuple[int, int, int, int]]]:
    """Chiral centres of a bond graph: list of (centre, (n1, n2, n3, n4)) with sorted neighbours.

    Args:
        bonds: bonded atom pairs.
        elements: element symbol (or any label) per atom.
        max_depth: how many bonds away from the centre branches are compared.
    """
    n = len(elements)
    adj: list[list[int]] = [[] for _ in range(n)]
    for u, v in bonds:
        adj[int(u)].append(int(v))
        adj[int(v)].append(int(u))
    intern: dict[tuple, int] = {}

    def canon(key: tuple) -> int:
        if key not in intern:
            intern[key] = len(intern)
        return intern[key]

    centers = []
    for c in range(n):
        if len(adj[c]) != 4:
            continue
        memo: dict[tuple[int, int, int], int] = {}

        def branch(atom: int, parent: int, depth: int) -> int:
            key = (atom, parent, depth)
            if key in memo:
                return memo[key]
            if depth == 0:
                h = canon((elements[atom],))
            else:
                kids = sorted(branch(v, atom, depth - 1) for v in adj[atom] if v != parent and v != c)
                h = canon((elements[atom], tuple(kids)))
            memo[key] = h
            return h

        # iterative deepening avoids Python recursion limits on long chains
        depth_limit = min(max_depth, n)
        hashes = None
        for d in range(depth_limit + 1):
            hashes = [branch(v, c, d) for v in adj[c]]
            if len(set(hashes)) == 4:
                break
        if hashes is not None and len(set(hashes)) == 4:
            centers.append((c, tuple(sorted(adj[c]))))
    return centers


def signed_volumes(x: Tensor, centers: Tensor) -> Tensor:
    """Signed volumes (B, K) of x (B, N, 3) for centres (K, 5) = (c, n1, n2, n3, n4):
    ``(n1 - c) . ((n2 - c) x (n3 - c))``."""
    c = x[:, centers[:, 0]]
    a = x[:, centers[:, 1]] - c
    b = x[:, centers[:, 2]] - c
    d = x[:, centers[:, 3]] - c
    return (a * torch.cross(b, d, dim=-1)).sum(-1)


class ChiralityCheck:
    """The chiral centres of a topology and their signs in a reference structure.

    Args:
        topology: mdtraj or OpenMM topology.
        reference: reference positions (N, 3) (any length unit).
        max_depth: see :func:`find_chiral_centers`.

    Attributes:
        centers: list of (centre, (n1, n2, n3, n4)).
        reference_signs: (K,) float64 tensor of +1 / -1.
        names: "ALA2-CA"-style names of the centres.
    """

    def __init__(self, topology: Any, reference, max_depth: int = 32):
        top = _as_mdtraj_topology(topology)
        self.centers = find_chiral_centers(bonds_from_topology(top), _elements(top), max_depth=max_depth)
        self.names = [str(top.atom(c)) for c, _ in self.centers]
        idx = [[c, *nb] for c, nb in self.centers]
        self._idx = torch.as_tensor(np.array(idx, dtype=np.int64).reshape(-1, 5))
        ref = torch.as_tensor(np.asarray(reference, dtype=np.float64)).reshape(1, top.n_atoms, 3)
        vol = signed_volumes(ref, self._idx)[0]
        if len(self.centers) and not bool((vol != 0).all()):
            bad = [self.names[k] for k in range(len(self.centers)) if vol[k] == 0]
            raise ValueError(f"chiral centre(s) {bad} are planar in the reference structure")
        self.reference_signs = torch.sign(vol)

    @property
    def n_centers(self) -> int:
        return len(self.centers)

    def chirality_ok(self, x: Tensor) -> Tensor:
        """(B,) bool: every centre of x (B, N, 3) has its reference sign (False for NaN)."""
        if x.dim() == 2:
            x = x.unsqueeze(0)
        if not self.centers:
            return torch.ones(x.shape[0], dtype=torch.bool, device=x.device)
        idx = self._idx.to(x.device)
        vol = signed_volumes(x, idx)
        ref = self.reference_signs.to(device=x.device, dtype=vol.dtype)
        return (torch.sign(vol) == ref).all(dim=-1)

    __call__ = chirality_ok

    def __repr__(self) -> str:
        return f"ChiralityCheck(centers={self.names})"
