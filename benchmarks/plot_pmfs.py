"""Side-by-side Ramachandran PMFs (kT, min 0, clipped) of a reference file and of runs' latest PMF
snapshots (or MD histograms), on the reference bins.

    python benchmarks/plot_pmfs.py REFERENCE.npz OUT.png RUN_DIR...
"""

from __future__ import annotations

import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from cgflow.analysis.compare import _final_snapshot_of_run, _run_label  # noqa: E402
from cgflow.baselines.md import read_cg_trajectory  # noqa: E402
from cgflow.pmf.history import read_history  # noqa: E402
from cgflow.pmf.reference_file import load_reference  # noqa: E402

CLIP = 12.0


def pmf_of_run(d: Path, edges) -> tuple[np.ndarray, str]:
    if (d / "md.json").is_file():
        cg, info = read_cg_trajectory(d)
        h, _ = np.histogramdd(cg.reshape(-1, cg.shape[-1]), bins=edges)
        with np.errstate(divide="ignore"):
            f = -np.log(h / h.sum())
        return f - f[np.isfinite(f)].min(), f"{info['evaluations']:.3g} evaluations"
    snaps = read_history(d) or _final_snapshot_of_run(d)
    return snaps[-1].pmf_kT, f"{snaps[-1].evaluations:.3g} evaluations"


def main() -> None:
    ref_path, out, runs = Path(sys.argv[1]), Path(sys.argv[2]), [Path(p) for p in sys.argv[3:]]
    ref = load_reference(ref_path, 2)
    panels = [(ref.pmf_kT, "reference: " + ref.meta.get("method", ""), f"{ref.meta.get('evaluations', 0):.3g} evaluations")]
    for d in runs:
        f, sub = pmf_of_run(d, ref.edges)
        panels.append((f, _run_label(d), sub))
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 4), constrained_layout=True)
    deg = np.degrees(ref.edges[0])
    for ax, (f, title, sub) in zip(np.atleast_1d(axes), panels):
        im = ax.pcolormesh(deg, deg, np.minimum(np.where(np.isfinite(f), f, CLIP), CLIP).T, cmap="viridis",
                           vmin=0, vmax=CLIP, shading="flat")
        ax.set_title(f"{title}\n{sub}", fontsize=9)
        ax.set_xlabel("phi (degrees)")
        ax.set_aspect("equal")
    np.atleast_1d(axes)[0].set_ylabel("psi (degrees)")
    fig.colorbar(im, ax=axes, label=f"PMF (kT, clipped at {CLIP:g}; unvisited bins shown at {CLIP:g})")
    fig.savefig(out, dpi=110)
    print(out)


if __name__ == "__main__":
    main()
