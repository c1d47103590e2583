"""PMF values of the alanine dipeptide basins from a run directory (reads RUN_DIR/pmf.npz and metrics.csv).

    python benchmarks/aldp_basins.py runs/aldp-quick

Basins (degrees): C7eq/beta phi in [-180, -45], psi in [90, 180] or [-180, -150];
alpha_R phi in [-160, -45], psi in [-90, 30]; alpha_L phi in [30, 90], psi in [-30, 90].
Prints each basin's lowest PMF value relative to the global minimum (kT) and where it is.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from cgflow.core.run_directory import read_metrics_csv

BASINS = {
    "C7eq/beta": lambda phi, psi: (phi <= -45) & ((psi >= 90) | (psi <= -150)),
    "alpha_R": lambda phi, psi: (phi >= -160) & (phi <= -45) & (psi >= -90) & (psi <= 30),
    "alpha_L": lambda phi, psi: (phi >= 30) & (phi <= 90) & (psi >= -30) & (psi <= 90),
}


def main(run_dir: Path) -> None:
    z = np.load(run_dir / "pmf.npz")
    c0 = np.degrees(0.5 * (z["edges_0"][1:] + z["edges_0"][:-1]))
    c1 = np.degrees(0.5 * (z["edges_1"][1:] + z["edges_1"][:-1]))
    phi, psi = np.meshgrid(c0, c1, indexing="ij")
    f = z["pmf_kT"] - z["pmf_kT"].min()
    i, j = np.unravel_index(np.argmin(f), f.shape)
    rows = read_metrics_csv(run_dir / "metrics.csv")
    last = rows[-1]
    print(f"run: {run_dir}; {last['iteration']} iterations, {last['evals_total']:,} energy evaluations in all "
          f"({last['evals_training']:,} training, {last['evals_rejected']:,} rejected by the chirality filter "
          f"before evaluation, {last['evals_diagnostics']:,} diagnostics, {last['evals_starting_data']:,} starting MD), "
          f"wall time {last['wall_time_s']:.0f} s")
    print(f"global minimum at (phi, psi) = ({c0[i]:.0f}, {c1[j]:.0f}) degrees\n")
    print("| basin | lowest PMF (kT, relative to the global minimum) | at (phi, psi) degrees | ensemble std there (kT) |")
    print("|---|---:|---|---:|")
    for name, sel in BASINS.items():
        m = sel(phi, psi)
        k = np.argmin(np.where(m, f, np.inf))
        a, b = np.unravel_index(k, f.shape)
        print(f"| {name} | {f[a, b]:.2f} | ({c0[a]:.0f}, {c1[b]:.0f}) | {z['std_kT'][a, b]:.2f} |")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
