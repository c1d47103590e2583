"""Write a small copy of a d > 2 run's pmf.npz for the repository: ``pmf-slim.npz`` beside it, with what the ala4
scripts read (the 2-D marginals, the d-dimensional PMF and error bar in float32, the CG points in float32, edges,
names), compressed: ~0.5 MB instead of ~3 MB for ala4.  The full pmf.npz stays where it is (not committed).

Usage: ``python benchmarks/slim_pmf.py RUN_DIR [RUN_DIR ...]``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

KEEP_FLOAT32 = ("pmf_kT", "error_bar_kT", "points")
KEEP = ("marginal_pairs", "marginal_pmf_kT", "cg_names", "cg_periodic", "points_added_in")


def main() -> None:
    for run in map(Path, sys.argv[1:]):
        z = np.load(run / "pmf.npz")
        out = {k: z[k] for k in z.files if k.startswith("edges_") or k.startswith("marginal_edges_") or k in KEEP}
        out.update({k: z[k].astype(np.float32) for k in KEEP_FLOAT32 if k in z.files})
        np.savez_compressed(run / "pmf-slim.npz", **out)
        print(run / "pmf-slim.npz", f"{(run / 'pmf-slim.npz').stat().st_size / 1e6:.2f} MB")


if __name__ == "__main__":
    main()
