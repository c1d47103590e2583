"""The reference-PMF file (``--reference FILE.npz``), read and written in one place.

Keys:
    edges: the bin edges shared by every CG dimension, shape (n_bins + 1,) (radians for
        angles; ALDP: ``linspace(-pi, pi, 101)``).
    prob: normalized bin probabilities, shape (n_bins,) * cg_dim, indexed [i_1, i_2, ...] in the
        order of the CG coordinates (ALDP: [i_phi, i_psi]).
    pmf_kT: -ln prob shifted to a minimum of 0, same shape (inf in empty bins).  Optional on read.
    meta: a JSON string saying how the reference was made (method, evaluations, noise floor ...).
        Optional on read.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from cgflow.run_directory import atomic_savez
from cgflow.system import ReferencePMF


class ReferenceFileError(ValueError):
    """A reference file that is missing or does not describe the CG space."""


def load_reference(path, cg_dim: int | None = None) -> ReferencePMF:
    """Read a reference file; ``cg_dim`` (if given) is checked against ``prob.ndim``."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise ReferenceFileError(f"reference file not found: {path}")
    with open(path, "rb") as fh:
        if fh.read(4) != b"PK\x03\x04":
            raise ReferenceFileError(f"reference file {path} is not an .npz file (a NumPy zip archive with the "
                                     f"keys edges and prob, as `cgflow reference` writes)")
    try:
        with np.load(path, allow_pickle=False) as z:
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
