"""Plots of a run directory: the PMF (ensemble mean ± std, reference, CG points by iteration)
and the forward KLD against energy evaluations."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from cgflow.analysis.metrics import describe_errors, pmf_errors  # noqa: E402
from cgflow.core import run_directory as rd  # noqa: E402


def _load_pmf(run_dir: Path) -> dict:
    with np.load(run_dir / rd.PMF) as z:
        return {k: z[k] for k in z.files}


def plot_pmf(run_dir: Path, out: Path | None = None) -> Path:
    """PMF figure (1-D: curve with ±std band; 2-D: mean and std maps).  Returns the PNG path."""
    run_dir = Path(run_dir)
    d = _load_pmf(run_dir)
    edges = [d[k] for k in sorted(k for k in d if k.startswith("edges_"))]
    periodic = [bool(x) for x in d["cg_periodic"]] if "cg_periodic" in d else [False] * len(edges)
    names = [f"{n} (rad)" if per else str(n) for n, per in zip(d["cg_names"], periodic)]  # periodic CG: angles
    pts, added = d["points"], d["points_added_in"]
    eb = d.get("error_bar_kT")  # the run's error bar (cgflow.pmf.error_bar); runs before it: the std only
    out = Path(out) if out else run_dir / "pmf.png"
    n_iter = int(added.max()) + 1 if added.size else 1
    cmap = plt.get_cmap("viridis")
    if len(edges) == 1:
        c = 0.5 * (edges[0][1:] + edges[0][:-1])
        f, sd = d["pmf_kT"], d["std_kT"]
        fig, (ax, axr) = plt.subplots(2, 1, figsize=(7, 6), sharex=True, gridspec_kw={"height_ratios": [3, 1]})
        if "reference_prob" in d:
            with np.errstate(divide="ignore"):
                fr = -np.log(d["reference_prob"])
            fr -= fr[np.isfinite(fr)].min()
            shift = np.average(f - fr, weights=d["reference_prob"])
            ax.plot(c, fr, "k--", lw=1.5, label="reference")
            import textwrap

            ax.set_title(textwrap.fill(describe_errors(pmf_errors(d["reference_prob"], f, sd)), 75), fontsize=10)
            f = f - shift
        ax.plot(c, f, color="C3", lw=2, label="ensemble mean")
        band, band_label = (eb, "± the run's error bar") if eb is not None else (sd, "± ensemble std")
        ax.fill_between(c, f - band, f + band, color="C3", alpha=0.4, label=band_label)
        lo = np.nanmin(f) - 1.0
        ax.scatter(pts[:, 0], np.full(len(pts), lo), c=added, cmap=cmap, vmin=0, vmax=max(n_iter - 1, 1),
                   marker="|", s=80, label=f"CG points (colour: iteration 0-{n_iter - 1})")
        ax.set_ylabel("PMF (kT)")
        ax.set_ylim(lo - 0.5, min(np.nanmax(f) + 1, np.nanmin(f) + 25))
        ax.legend(loc="upper center", fontsize=9, ncol=2)
        axr.plot(c, sd, color="C3", label="ensemble std")
        if eb is not None:
            axr.plot(c, eb, color="k", label="error bar")
            axr.legend(fontsize=8)
        axr.set_ylabel("kT")
        axr.set_xlabel(names[0])
        ax.set_xlim(edges[0][0], edges[0][-1])
    elif "marginal_pmf_kT" in d:
        fig = _marginal_figure(d, names, pts)
    elif len(edges) > 2:
        raise ValueError(f"{run_dir / rd.PMF} has a {len(edges)}-D PMF without marginals (no iteration finished)")
    else:
        fig, axes = plt.subplots(1, 2, figsize=(12, 5))
        if "reference_prob" in d:
            fig.suptitle(describe_errors(pmf_errors(d["reference_prob"], d["pmf_kT"], d["std_kT"])), fontsize=8)
        ext = [edges[0][0], edges[0][-1], edges[1][0], edges[1][-1]]
        right = ("error_bar_kT", "the run's error bar (kT)") if eb is not None else ("std_kT", "ensemble std (kT)")
        for ax, key, title, cm in ((axes[0], "pmf_kT", "PMF, ensemble mean (kT)", "viridis"),
                                   (axes[1], right[0], right[1], "magma")):
            vals = np.clip(d[key], 0, 20) if key == "pmf_kT" else np.clip(d[key], 0, np.nanpercentile(d[key], 99))
            im = ax.imshow(vals.T, origin="lower", extent=ext, cmap=cm, aspect="auto")
            fig.colorbar(im, ax=ax, label=title)
            ax.set_title(title, fontsize=12)
            ax.set_xlabel(names[0])
            ax.set_ylabel(names[1])
        sc = axes[0].scatter(pts[:, 0], pts[:, 1], c=added, cmap="cool", s=2, alpha=0.5)
        fig.colorbar(sc, ax=axes[0], label="CG points: iteration added", pad=0.01)
    if "marginal_pmf_kT" not in d:  # the marginal figure's shared colorbar does not fit tight_layout
        fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


def _marginal_figure(d: dict, names: list[str], pts: np.ndarray):
    """One panel per CG pair: the ensemble-mean 2-D marginal PMF (colour, kT), the reference's as black
    contours at 1, 2, 4, 6, 8 kT, the labelled CG points projected (white dots); title: the pair's
    forward KLD."""
    from cgflow.analysis.metrics import forward_kld, probabilities_from_pmf, reference_pmf_kT

    pairs = [tuple(int(v) for v in p) for p in d["marginal_pairs"]]
    fs = d["marginal_pmf_kT"]
    ref = d.get("marginal_reference_prob")
    medges = [d[f"marginal_edges_{i}"] for i in range(len(names))]
    ncol = len(pairs) if len(pairs) <= 4 else int(np.ceil(len(pairs) / np.ceil(len(pairs) / 4)))
    nrow = int(np.ceil(len(pairs) / ncol))
    fig, axes = plt.subplots(nrow, ncol, figsize=(3.3 * ncol + 1.2, 3.2 * nrow + 0.4), squeeze=False,
                             layout="constrained")
    im = None
    for k, (ax, (i, j)) in enumerate(zip(axes.ravel(), pairs)):
        ext = [medges[i][0], medges[i][-1], medges[j][0], medges[j][-1]]
        im = ax.imshow(np.clip(fs[k], 0, 12).T, origin="lower", extent=ext, cmap="viridis", vmin=0, vmax=12,
                       aspect="auto")
        title = f"{names[i]} vs {names[j]}"
        if ref is not None:
            ci, cj = (0.5 * (medges[a][1:] + medges[a][:-1]) for a in (i, j))
            fr = reference_pmf_kT(ref[k])
            ax.contour(ci, cj, np.where(np.isfinite(fr), fr, 99).T, levels=[1, 2, 4, 6, 8], colors="k",
                       linewidths=0.7)
            title += f"\nforward KLD {forward_kld(ref[k], probabilities_from_pmf(fs[k])):.2g}"
        if len(pts):
            ax.scatter(pts[:, i], pts[:, j], s=1, c="w", alpha=0.4)
        ax.set_title(title, fontsize=8)
        ax.set_xlabel(names[i], fontsize=8)
        ax.set_ylabel(names[j], fontsize=8)
        ax.set_xlim(ext[:2])
        ax.set_ylim(ext[2:])
    for ax in axes.ravel()[len(pairs):]:
        ax.axis("off")
    fig.suptitle("2-D marginal PMFs of the ensemble mean (colour, kT)"
                 + (", reference: black contours at 1, 2, 4, 6, 8 kT" if ref is not None else "")
                 + "; white: CG points", fontsize=9)
    fig.colorbar(im, ax=axes.ravel().tolist(), shrink=0.8, label="kT")
    return fig


ERROR_SERIES = (  # metrics.csv column, legend label
    ("pmf_rmse_weighted_kT", "RMSE weighted by p_ref"),
    ("pmf_rmse_kT", "RMSE weighted by p_ref"),  # runs written before the figures were named
    ("pmf_rmse_unweighted_kT", "RMSE unweighted, F_ref < 10 kT"),
    ("pmf_max_abs_error_kT", "max |error|, F_ref < 10 kT"),
    ("ensemble_std_mean_kT", "ensemble std (mean), F_ref < 10 kT"),
    ("ensemble_std_at_max_error_kT", "ensemble std at the max error"),
)


def plot_kld(run_dir: Path, out: Path | None = None) -> Path | None:
    """Forward KLD and the named PMF errors (weighted / unweighted RMSE, max error, ensemble std
    beside them) against total energy evaluations.  None without a reference."""
    run_dir = Path(run_dir)
    rows = rd.read_metrics_csv(run_dir / rd.METRICS)
    if not rows or "forward_kld" not in rows[0]:
        return None
    ev = np.array([r["evals_total"] for r in rows], dtype=float)
    kld = np.array([r["forward_kld"] for r in rows], dtype=float)
    fig, (ax, axe) = plt.subplots(1, 2, figsize=(11, 4))
    ax.loglog(ev, kld, "o-", color="C0")
    for r, x, y in zip(rows, ev, kld):
        ax.annotate(str(r["iteration"]), (x, y), textcoords="offset points", xytext=(3, 3), fontsize=7)
    ax.set_ylabel("forward KLD to reference (nats)")
    styles = iter(["o-", "s-", "^-", "v--", "x:"])
    done_labels = set()
    for key, label in ERROR_SERIES:
        if key not in rows[0] or label in done_labels:
            continue
        y = np.array([r.get(key, np.nan) for r in rows], dtype=float)
        ok = np.isfinite(y) & (y > 0)
        if ok.any():
            axe.loglog(ev[ok], y[ok], next(styles), ms=4, label=label)
            done_labels.add(label)
    axe.set_ylabel("PMF error (kT)")
    if done_labels:
        axe.legend(fontsize=7)
    for a in (ax, axe):
        a.set_xlabel("energy evaluations (all, incl. starting data and diagnostics)")
        a.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    out = Path(out) if out else run_dir / "kld.png"
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


def plot_run(run_dir: Path) -> list[Path]:
    run_dir = Path(run_dir)
    if not (run_dir / rd.PMF).is_file():
        raise rd.RunDirectoryError(f"{run_dir} has no {rd.PMF} yet (no iteration finished)")
    return [p for p in (plot_pmf(run_dir), plot_kld(run_dir)) if p is not None]


class PlotReporter:
    """Rewrites the plots after every ``every``-th iteration and at the end."""

    def __init__(self, every: int = 1):
        self.every = every

    def on_iteration(self, run, row) -> None:
        if row["iteration"] % self.every == 0:
            plot_run(run.run_dir)

    def on_finish(self, run) -> None:
        plot_run(run.run_dir)
