"""The figure of ``cgflow validate`` (validate.png): the learned PMF, the MD residual with its
significance, and the flatness of the biased histogram."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from cgflow.validation.biased_md import VALIDATE_JSON, VALIDATE_NPZ


def plot_validation(out_dir, png) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir = Path(out_dir)
    info = json.loads((out_dir / VALIDATE_JSON).read_text())
    z = dict(np.load(out_dir / VALIDATE_NPZ))
    if "md_marginal_pmf_kT" in z:
        _plot_marginals(info, z, png, plt)
        return
    names = info["cg_names"]
    d = len(names)
    ce = [z[f"coarse_edges_{i}"] for i in range(d)]
    fe = [z[f"edges_{i}"] for i in range(d)]
    counts = z["counts_by_chunk"].sum((0, 1)).reshape(z["residual_kT"].shape)
    ratio = counts / max(counts.sum(), 1) / np.where(z["expected_fraction"] > 0, z["expected_fraction"], np.nan)
    unit = lambda n: f"{n} (rad)" if n in ("phi", "psi") or n.startswith(("chi", "omega")) else n  # noqa: E731
    fig, ax = plt.subplots(1, 3, figsize=(15, 4.4))
    if d == 1:
        xc, xf = 0.5 * (ce[0][1:] + ce[0][:-1]), 0.5 * (fe[0][1:] + fe[0][:-1])
        ax[0].plot(xf, z["pmf_kT"], label="learned PMF")
        ax[0].plot(xf, z["corrected_pmf_kT"], "--", label="corrected by the MD residual")
        ax[0].set_ylabel("F (kT)")
        ax[0].legend()
        r, se, eb = z["residual_kT"], z["residual_se_kT"], z["run_error_bar_kT"]
        ax[1].errorbar(xc, r, yerr=2 * se, fmt="o", ms=3, label="MD residual ± 2 se (bootstrap)")
        ax[1].fill_between(xc, -2 * eb, 2 * eb, alpha=0.25, color="C1", label="± 2 x the run's error bar")
        ax[1].axhline(0, color="k", lw=0.5)
        ax[1].set_ylabel("F_true - F (kT)")
        ax[1].legend(fontsize=9)
        ax[2].bar(xc, ratio, width=np.diff(ce[0]), alpha=0.7)
        ax[2].axhline(1, color="k", lw=0.8)
        ax[2].set_ylabel("biased histogram / expected")
        for a in ax:
            a.set_xlabel(unit(names[0]))
    elif d == 2:
        ext_f = [fe[0][0], fe[0][-1], fe[1][0], fe[1][-1]]
        ext_c = [ce[0][0], ce[0][-1], ce[1][0], ce[1][-1]]
        im = ax[0].imshow(z["pmf_kT"].T, origin="lower", extent=ext_f, aspect="auto", cmap="viridis",
                          vmax=min(np.nanmax(z["pmf_kT"]), info["settings"]["ceiling_kT"] + 2))
        fig.colorbar(im, ax=ax[0], label="learned F (kT)")
        r = z["residual_kT"]
        lim = max(0.2, float(np.nanmax(np.abs(r))) if np.isfinite(r).any() else 1.0)
        im = ax[1].imshow(r.T, origin="lower", extent=ext_c, aspect="auto", cmap="RdBu_r", vmin=-lim, vmax=lim)
        fig.colorbar(im, ax=ax[1], label="MD residual F_true - F (kT)")
        sig = np.abs(np.nan_to_num(z["z"])) > 2
        cx, cy = np.meshgrid(0.5 * (ce[0][1:] + ce[0][:-1]), 0.5 * (ce[1][1:] + ce[1][:-1]), indexing="ij")
        ax[1].plot(cx[sig], cy[sig], "kx", ms=5, label="|residual| > 2 combined error bars")
        ax[1].legend(fontsize=8, loc="upper right")
        im = ax[2].imshow(ratio.T, origin="lower", extent=ext_c, aspect="auto", cmap="PuOr", vmin=0, vmax=2)
        fig.colorbar(im, ax=ax[2], label="biased histogram / expected")
        for a in ax:
            a.set_xlabel(unit(names[0]))
            a.set_ylabel(unit(names[1]))
    else:  # d = 3: residual against model free energy
        ok = np.isfinite(z["residual_kT"])
        fc = -np.log(np.maximum(z["p_model"][ok], 1e-300))
        ax[1].errorbar(fc - fc.min(), z["residual_kT"][ok], yerr=2 * z["residual_se_kT"][ok], fmt="o", ms=2)
        ax[1].set_xlabel("learned F of the bin (kT)")
        ax[1].set_ylabel("F_true - F (kT)")
        ax[2].hist(ratio[np.isfinite(ratio)].ravel(), bins=40)
        ax[2].set_xlabel("biased histogram / expected")
        ax[0].axis("off")
    ax[0].set_title("learned PMF", fontsize=13)
    ax[1].set_title("MD residual (no reference needed)", fontsize=13)
    ax[2].set_title(f"flatness (CV {info['flatness_cv']:.2f})", fontsize=13)
    verdict = "consistent" if info["consistent"] else "NOT consistent"
    fig.suptitle(f"cgflow validate: {verdict} with the run's error bar — MD estimate {info['md_abs_error_kT']:.3f} ± "
                 f"{info['md_abs_error_se_kT']:.3f} kT, run's error bar {info['run_error_bar_kT']:.3f} kT, "
                 f"{info['evaluations']:,} MD evaluations", fontsize=12)
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)


def _unit(name: str) -> str:
    return f"{name} (rad)" if name.startswith(("phi", "psi", "chi", "omega")) else name


def _plot_marginals(info: dict, z: dict, png, plt) -> None:
    """d > 3: per marginal pair, the run's marginal, the MD's reweighted one (same colour scale) and the residual
    with its significant bins; phi > 0 populations in the title."""
    names = info["cg_names"]
    pairs = [tuple(int(v) for v in p) for p in z["marginal_pairs"]]
    n = len(pairs)
    fig, ax = plt.subplots(3, n, figsize=(3.4 * n + 1, 9.6), squeeze=False)
    vmax = info["settings"]["ceiling_kT"]
    for c, (i, j) in enumerate(pairs):
        ei, ej = z[f"marginal_edges_{i}"], z[f"marginal_edges_{j}"]
        ext = [ei[0], ei[-1], ej[0], ej[-1]]
        for row, key, title in ((0, "run_marginal_pmf_kT", "run"), (1, "md_marginal_pmf_kT", "biased MD, reweighted")):
            im = ax[row, c].imshow(z[key][c].T, origin="lower", extent=ext, aspect="auto", cmap="viridis", vmin=0,
                                   vmax=vmax)
            ax[row, c].set_title(f"{title}: {names[i]}|{names[j]}", fontsize=10)
        fig.colorbar(im, ax=ax[:2, c].tolist(), label="F (kT)", shrink=0.8)
        r = z["residual_kT"][c]
        lim = max(0.5, float(np.nanmax(np.abs(r))) if np.isfinite(r).any() else 1.0)
        im = ax[2, c].imshow(r.T, origin="lower", extent=ext, aspect="auto", cmap="RdBu_r", vmin=-lim, vmax=lim)
        ci, cj = np.meshgrid(0.5 * (ei[1:] + ei[:-1]), 0.5 * (ej[1:] + ej[:-1]), indexing="ij")
        sig = np.abs(np.nan_to_num(z["z"][c])) > 2
        ax[2, c].plot(ci[sig], cj[sig], "kx", ms=4)
        ax[2, c].set_title("MD - run (kT); x: beyond 2 error bars", fontsize=9)
        fig.colorbar(im, ax=ax[2, c], label="F_true - F (kT)")
        for row in range(3):
            ax[row, c].set_xlabel(_unit(names[i]))
            ax[row, c].set_ylabel(_unit(names[j]))
    pops = info.get("populations_phi_positive", {})
    pop = "; ".join(f"{k} > 0: MD {v['md']:.3f} ± {v['md_se']:.3f}, run {v['run']:.3f}" for k, v in pops.items())
    verdict = "consistent" if info["consistent"] else "NOT consistent"
    fig.suptitle(f"cgflow validate (reweighted marginals): {verdict} with the run's error bar; forward KLD MD || run "
                 f"{info['forward_kld_md_vs_run_mean']:.3f}; {info['evaluations']:,} MD evaluations\n{pop}", fontsize=11)
    fig.savefig(png, dpi=100)
    plt.close(fig)
