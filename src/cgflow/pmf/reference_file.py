"""The reference-PMF file (``--reference FILE.npz``), read and written in one place.

Keys:
    edges: the bin edges shared by every CG dimension, shape (n_bins + 1,) (radians for
        angles; ALDP: ``linspace(-pi, pi, 101)``).
    prob: normalized bin probabilities, shape (n_bins,) * cg_dim, indexed [i_1, i_2, ...] in the
        order of the CG coordinates (ALDP: [i_phi, i_psi]).
    pmf_kT: -ln prob shifted to a minimum of 0, same shape (inf in empty bins).  Optional on read.
    meta: a JSON string saying how the reference was made (method, evaluations, noise floor ...).
        Optional on read.

A **marginal** reference (CG spaces of more than two dimensions, :mod:`cgflow.analysis.marginals`)
has instead of ``prob``:
    marginal_pairs: (K, 2) int, the CG index pairs;
    marginal_prob: (K, n_bins, n_bins), normalized 2-D bin probabilities of each pair, indexed
        [bin of the pair's first coordinate, bin of its second];
    cg_dim: the dimension of the CG space (int);
and ``edges`` as above (shared by every CG dimension).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from cgflow.core.run_directory import atomic_savez
from cgflow.core.system import ReferencePMF


class ReferenceFileError(ValueError):
    """A reference file that is missing or does not describe the CG space."""


def load_reference(path, cg_dim: int | None = None):
    """Read a reference file: a :class:`ReferencePMF`, or a
    :class:`~cgflow.analysis.marginals.MarginalReferencePMF` for a marginal one; ``cg_dim`` (if
    given) is checked against the file."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise ReferenceFileError(f"reference file not found: {path}")
    with open(path, "rb") as fh:
        if fh.read(4) != b"PK\x03\x04":
            raise ReferenceFileError(f"reference file {path} is not an .npz file (a NumPy zip archive with the "
                                     f"keys edges and prob, as `cgflow reference` writes)")
    try:
        with np.load(path, allow_pickle=False) as z:
            if "marginal_prob" in z.files:
                return _marginal_reference(path, z, cg_dim)
            missing = {"edges", "prob"} - set(z.files)
            if missing:
                raise ReferenceFileError(f"reference file {path} lacks the keys {sorted(missing)}")
            edges = np.asarray(z["edges"], dtype=np.float64)
            prob = np.asarray(z["prob"], dtype=np.float64)
            meta = json.loads(str(z["meta"])) if "meta" in z.files else {}
    except (OSError, ValueError) as exc:
        if isinstance(exc, ReferenceFileError):
            raise
        raise ReferenceFileError(f"cannot read reference file {path}: {exc}") from None
    nb = edges.shape[0] - 1
    d = prob.ndim if cg_dim is None else cg_dim
    if edges.ndim != 1 or nb < 1 or prob.shape != (nb,) * d:
        raise ReferenceFileError(f"reference file {path}: edges {edges.shape} and prob {prob.shape} do not "
                                 f"describe {d} CG dimension(s) with a shared set of bin edges")
    if not np.all(np.diff(edges) > 0):
        raise ReferenceFileError(f"reference file {path}: edges are not increasing")
    if not np.isclose(prob.sum(), 1.0, rtol=1e-6) or (prob < 0).any():
        raise ReferenceFileError(f"reference file {path}: prob must be >= 0 and sum to 1 (sums to {prob.sum()})")
    return ReferencePMF(edges=[edges.copy() for _ in range(d)], prob=prob,
                        description=meta.get("description", f"reference PMF from {path}"), meta=meta)


def save_reference(path, edges: np.ndarray, prob: np.ndarray, meta: dict) -> Path:
    """Write a reference file atomically.  ``prob`` is renormalized to sum 1; ``meta`` must be
    JSON-serializable."""
    path = Path(path).expanduser()
    prob = np.asarray(prob, dtype=np.float64)
    prob = prob / prob.sum()
    with np.errstate(divide="ignore"):
        f = -np.log(prob)
    f = f - f[np.isfinite(f)].min()
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_savez(path, edges=np.asarray(edges, dtype=np.float64), prob=prob, pmf_kT=f,
                 meta=np.array(json.dumps(meta, sort_keys=True)))
    return path


def _marginal_reference(path, z, cg_dim: int | None):
    from cgflow.core.system import MarginalReferencePMF

    missing = {"edges", "marginal_pairs", "marginal_prob", "cg_dim"} - set(z.files)
    if missing:
        raise ReferenceFileError(f"marginal reference file {path} lacks the keys {sorted(missing)}")
    edges = np.asarray(z["edges"], dtype=np.float64)
    pairs = np.asarray(z["marginal_pairs"])
    prob = np.asarray(z["marginal_prob"], dtype=np.float64)
    d = int(z["cg_dim"])
    meta = json.loads(str(z["meta"])) if "meta" in z.files else {}
    nb = edges.shape[0] - 1
    if cg_dim is not None and d != cg_dim:
        raise ReferenceFileError(f"reference file {path} describes a {d}-dimensional CG space, the run has {cg_dim}")
    if pairs.ndim != 2 or pairs.shape[1] != 2 or prob.shape != (pairs.shape[0], nb, nb):
        raise ReferenceFileError(f"marginal reference file {path}: marginal_pairs {pairs.shape} and marginal_prob "
                                 f"{prob.shape} do not match {nb} bins per dimension")
    if pairs.size and (pairs.min() < 0 or pairs.max() >= d or (pairs[:, 0] == pairs[:, 1]).any()):
        raise ReferenceFileError(f"marginal reference file {path}: marginal_pairs must be distinct indices in 0..{d - 1}")
    if not np.all(np.diff(edges) > 0):
        raise ReferenceFileError(f"reference file {path}: edges are not increasing")
    sums = prob.reshape(len(pairs), -1).sum(1)
    if not np.allclose(sums, 1.0, rtol=1e-6) or (prob < 0).any():
        raise ReferenceFileError(f"marginal reference file {path}: each marginal_prob[k] must be >= 0 and sum to 1")
    return MarginalReferencePMF(pairs=[(int(a), int(b)) for a, b in pairs], edges=[edges.copy() for _ in range(d)],
                                probs=[p.copy() for p in prob], cg_dim=d,
                                description=meta.get("description", f"marginal reference PMF from {path}"), meta=meta)


def save_marginal_reference(path, edges: np.ndarray, pairs, probs, cg_dim: int, meta: dict) -> Path:
    """Write a marginal reference file atomically (each marginal renormalized to sum 1)."""
    path = Path(path).expanduser()
    probs = np.stack([np.asarray(p, dtype=np.float64) / np.sum(p) for p in probs])
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_savez(path, edges=np.asarray(edges, dtype=np.float64), marginal_pairs=np.asarray(pairs, dtype=np.int64),
                 marginal_prob=probs, cg_dim=np.int64(cg_dim), meta=np.array(json.dumps(meta, sort_keys=True)))
    return path
