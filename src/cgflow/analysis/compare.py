"""Accuracy against energy evaluations for several methods, measured against one reference PMF
(``cgflow compare``).

A run directory is either an MD run (``md.json`` with ``"method": "md"`` and the CG trajectory in
``cg_trajectory/*.npy``) or any run that writes PMF snapshots (``pmf_history/``: active learning,
grid conditioning, metadynamics, OPES, umbrella sampling).  Each becomes a :class:`Curve` of forward /
reverse KLD (nats) and PMF RMSE (kT) against the energy evaluations spent.

Model probabilities are floored, ``p = max(p, epsilon)`` and renormalized, for every method: the
forward KLD ``sum p_ref ln(p_ref / p)`` is infinite wherever a method gives zero probability to a
populated reference bin (MD before it has visited that bin); the floor makes it finite, and the
result then depends on ``epsilon`` (roughly ``p_ref(bin) * ln(p_ref(bin) / epsilon)`` per missing
bin).  Run twice with different epsilons to report the sensitivity.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import yaml  # noqa: E402

from cgflow.analysis.metrics import LOW_FREE_ENERGY_KT, forward_kld, pmf_errors, probabilities_from_pmf, reverse_kld  # noqa: E402
from cgflow.core.run_directory import atomic_write_text, write_metrics_csv  # noqa: E402
from cgflow.core.system import ReferencePMF  # noqa: E402
from cgflow.pmf.history import DIRNAME as HISTORY_DIR  # noqa: E402
from cgflow.pmf.history import PMFSnapshot, read_history
from cgflow.pmf.reference_file import load_reference  # noqa: E402

DEFAULT_LEVELS = (1e-2, 3e-3, 1e-3)
METHOD_FILES = ("md.json", "metad.json", "opes.json", "umbrella.json")


@dataclass
class Curve:
    """Accuracy of one run against the reference, one entry per measurement point.

    Attributes:
        label: name in the plot and tables (``"method (run dir name)"``).
        evaluations: (n,) int64, energy evaluations spent at each point, increasing.
        forward_kld: (n,) KL(p_ref || p_model), nats.
        reverse_kld: (n,) KL(p_model || p_ref), nats.
        pmf_rmse_weighted_kT: (n,) PMF RMSE weighted by the reference probability, kT, over the bins
            populated in both, best constant offset removed.
        method: the method alone (``"md"``, ``"active_learning"`` ...).
        pmf_rmse_unweighted_kT, pmf_max_abs_error_kT: (n,) unweighted RMSE and largest error (kT) over
            the bins with reference F < 10 kT that the model covers, after the best shift.
        coverage: (n,) reference probability of the bins where the model PMF is finite (MD: the
            bins visited so far); the errors above say nothing about the rest.
    """

    label: str
    evaluations: np.ndarray
    forward_kld: np.ndarray
    reverse_kld: np.ndarray
    pmf_rmse_weighted_kT: np.ndarray
    method: str = ""
    pmf_rmse_unweighted_kT: np.ndarray | None = None
    pmf_max_abs_error_kT: np.ndarray | None = None
    coverage: np.ndarray | None = None


def _floored(p: np.ndarray, epsilon: float) -> np.ndarray:
    p = np.maximum(np.asarray(p, dtype=np.float64), epsilon)
    return p / p.sum()


ERROR_KEYS = ("pmf_rmse_weighted_kT", "pmf_rmse_unweighted_kT", "pmf_max_abs_error_kT", "coverage")


def _point(ref: ReferencePMF, p_model: np.ndarray, pmf_kT: np.ndarray, epsilon: float) -> tuple:
    """(forward KLD, reverse KLD, weighted RMSE, unweighted RMSE, max error, coverage) of one model.
    The errors run over the bins populated in both, i.e. p_ref > 0 and a finite model PMF (the
    weighted RMSE with the reference weights renormalized there); ``coverage`` is the reference
    probability of the bins where the model PMF is finite (see :func:`cgflow.analysis.metrics.pmf_errors`)."""
    q = _floored(p_model, epsilon)
    e = pmf_errors(ref.prob, pmf_kT)
    return (forward_kld(ref.prob, q), reverse_kld(ref.prob, q, epsilon), *(e[k] for k in ERROR_KEYS))


def _marginal_point(ref, pmfs: dict, epsilon: float) -> tuple:
    """:func:`_point` for a marginal reference: each figure averaged over the CG pairs of ``pmfs`` (a
    dict mapping a pair (i, j) of the reference to the model's 2-D marginal PMF (kT) on the reference bins)."""
    from cgflow.core.system import ReferencePMF

    pts = []
    for pair in pmfs:
        f = np.asarray(pmfs[pair], dtype=np.float64)
        with np.errstate(over="ignore"):
            p = np.where(np.isfinite(f), np.exp(-(f - np.nanmin(np.where(np.isfinite(f), f, np.nan)))), 0.0)
        pts.append(_point(ReferencePMF(ref.edges[:2], ref.prob_of(pair)), p / p.sum(), f, epsilon))
    return tuple(float(np.nanmean(v)) for v in zip(*pts))


def _is_marginal(ref) -> bool:
    return hasattr(ref, "pairs")


def _curve(label, method, evaluations, points) -> Curve:
    fk, rk, rm, ru, mx, cov = (np.array(v, dtype=np.float64) for v in zip(*points))
    return Curve(label, np.asarray(evaluations, dtype=np.int64), fk, rk, rm, method, ru, mx, cov)


def kld_curve_from_snapshots(snapshots: list[PMFSnapshot], ref: ReferencePMF, label: str = "snapshots",
                             epsilon: float = 1e-10, method: str = "") -> Curve:
    """One point per PMF snapshot (sorted by evaluations).  Each snapshot's ``pmf_kT`` (kT, on
    the bins) must sit on the reference bins, else ValueError naming ``label``.  Bins where the
    PMF is inf get probability 0 before the ``epsilon`` floor."""
    if not snapshots:
        raise ValueError(f"{label}: no PMF snapshots")
    if _is_marginal(ref):
        return _marginal_curve_from_snapshots(snapshots, ref, label, epsilon, method)
    for s in snapshots:
        same = len(s.edges) == len(ref.edges) and all(
            np.shape(e) == np.shape(r) and np.allclose(e, r) for e, r in zip(s.edges, ref.edges))
        counts, ref_counts = [len(e) - 1 for e in s.edges], [len(e) - 1 for e in ref.edges]
        if not same and counts == ref_counts:
            bad = next(i for i, (e, r) in enumerate(zip(s.edges, ref.edges)) if not np.allclose(e, r))
            raise ValueError(f"{label}: snapshot '{s.label}' has the reference's bin count but different bin edges "
                             f"(dimension {bad}: {s.edges[bad][0]:.4g}..{s.edges[bad][-1]:.4g} vs the reference's "
                             f"{ref.edges[bad][0]:.4g}..{ref.edges[bad][-1]:.4g})")
        if not same or np.shape(s.pmf_kT) != ref.prob.shape:
            raise ValueError(f"{label}: snapshot '{s.label}' is not on the reference bins "
                             f"({counts} bins vs {list(ref.prob.shape)})")
    snaps = sorted(snapshots, key=lambda s: s.evaluations)
    pts = [_point(ref, probabilities_from_pmf(s.pmf_kT), np.asarray(s.pmf_kT, dtype=np.float64), epsilon)
           for s in snaps]
    return _curve(label, method, [s.evaluations for s in snaps], pts)


def _marginal_curve_from_snapshots(snapshots, ref, label, epsilon, method) -> Curve:
    """Snapshots with 2-D marginals (CG spaces of d > 2) against a marginal reference: every figure is
    the mean over the reference's pairs."""
    pts = []
    snaps = sorted(snapshots, key=lambda s: s.evaluations)
    for s in snaps:
        if s.marginal_pmf_kT is None:
            raise ValueError(f"{label}: snapshot '{s.label}' has no 2-D marginals, the reference is marginal")
        have = {tuple(p): f for p, f in zip(s.marginal_pairs, s.marginal_pmf_kT)}
        have.update({(j, i): f.T for (i, j), f in list(have.items())})
        common = [p for p in ref.pairs if p in have]  # the figures average over the pairs both have
        if not common:
            raise ValueError(f"{label}: snapshot '{s.label}' has none of the reference's CG pairs "
                             f"({sorted(have)} vs {ref.pairs})")
        bad = [i for i in range(ref.cg_dim) if np.shape(s.marginal_edges[i]) != np.shape(ref.edges[i])
               or not np.allclose(s.marginal_edges[i], ref.edges[i])]
        if bad:
            raise ValueError(f"{label}: snapshot '{s.label}' marginals are not on the reference bins "
                             f"(CG dimension(s) {bad})")
        pts.append(_marginal_point(ref, {p: have[p] for p in common}, epsilon))
    return _curve(label, method, [s.evaluations for s in snaps], pts)


def _flat_bins(x: np.ndarray, edges: list[np.ndarray]) -> np.ndarray:
    """Flat (C-order) bin index of each sample, x (..., d); -1 outside the edges.  The last edge
    belongs to the last bin, as in ``np.histogramdd``."""
    flat = np.zeros(x.shape[:-1], dtype=np.int64)
    ok = np.ones(x.shape[:-1], dtype=bool)
    for i, e in enumerate(edges):
        nb = len(e) - 1
        b = np.searchsorted(e, x[..., i], side="right") - 1
        b = np.where(x[..., i] == e[-1], nb - 1, b)
        ok &= (b >= 0) & (b < nb)
        flat = flat * nb + np.clip(b, 0, nb - 1)
    return np.where(ok, flat, -1)


def kld_curve_from_md(run_dir, ref: ReferencePMF, n_points: int = 40, epsilon: float = 1e-10,
                      label: str | None = None) -> Curve:
    """Accuracy of the histogram of an MD run's CG trajectory against the number of frames.

    The trajectory is ``cg_trajectory/*.npy`` (name order = time order), each (n_frames, R, d);
    the first ``n`` frames (all R replicas) are histogrammed on the reference bins for ``n`` on a
    geometric grid of at most ``n_points`` frame counts ending at all frames.  After ``n`` frames
    the evaluations are ``n * report_every_steps * n_replicas + evaluations_offset``.  Values
    outside the edges (periodic dims are already wrapped) are dropped but counted as evaluations.
    The model is the normalized histogram floored at ``epsilon``; the PMF RMSE uses -ln of the
    histogram over the bins visited by MD and populated in the reference.
    """
    run_dir = Path(run_dir)
    info = json.loads((run_dir / "md.json").read_text())
    k, R, d = int(info["report_every_steps"]), int(info["n_replicas"]), int(info["cg_dim"])
    label = label or _run_label(run_dir)
    ref_dim = ref.cg_dim if _is_marginal(ref) else ref.prob.ndim
    if d != ref_dim:
        raise ValueError(f"{label}: cg_dim {d} but the reference has {ref_dim} dimension(s)")
    chunks = sorted((run_dir / "cg_trajectory").glob("*.npy"))
    if "n_chunks" in info:  # chunks past the last checkpoint of a killed run are not part of it
        chunks = chunks[: int(info["n_chunks"])]
    sizes = [np.load(c, mmap_mode="r").shape for c in chunks]
    if not chunks or any(len(s) != 3 or s[1:] != (R, d) for s in sizes):
        raise ValueError(f"{label}: no CG trajectory of shape (frames, {R}, {d}) in {run_dir / 'cg_trajectory'}")
    total = sum(s[0] for s in sizes)
    if total == 0:
        raise ValueError(f"{label}: the CG trajectory has no frames")
    targets = np.unique(np.round(np.geomspace(1, total, n_points)).astype(np.int64))
    # one histogram (full grid), or one per CG pair of a marginal reference
    groups = ([(list(p), ref.prob_of(p).shape) for p in ref.pairs] if _is_marginal(ref)
              else [(list(range(d)), ref.prob.shape)])
    counts = [np.zeros(int(np.prod(shape))) for _, shape in groups]
    done, ti, pts = 0, 0, []

    def add(idx, start, stop):
        for c, i in zip(counts, idx):
            seg = i[start:stop].ravel()  # frames start..stop of every replica
            c += np.bincount(seg[seg >= 0], minlength=c.size)

    def point():
        pmfs = []
        for c, (_, shape) in zip(counts, groups):
            p = c / max(c.sum(), 1.0)
            with np.errstate(divide="ignore"):
                pmfs.append((p.reshape(shape), -np.log(p).reshape(shape)))
        if _is_marginal(ref):
            return _marginal_point(ref, {tuple(p): f for p, (_, f) in zip(ref.pairs, pmfs)}, epsilon)
        return _point(ref, *pmfs[0], epsilon)

    for c in chunks:
        x = np.load(c)
        idx = [_flat_bins(x[..., dims], [ref.edges[k] for k in dims]) for dims, _ in groups]  # (frames, R)
        n_here, start = idx[0].shape[0], 0
        while ti < len(targets) and targets[ti] <= done + n_here:
            stop = targets[ti] - done
            add(idx, start, stop)
            pts.append(point())
            start, ti = stop, ti + 1
        add(idx, start, n_here)
        done += n_here
    evals = targets * k * R + int(info.get("evaluations_offset", 0))
    return _curve(label, str(info.get("method", "md")), evals, pts)


def _crossing(x: np.ndarray, y: np.ndarray, i: int, level: float) -> float:
    """Evaluations where the KLD passes ``level`` between point i - 1 (above) and i (at/below),
    linear in (log evaluations, log KLD); linear in evaluations if x[i - 1] is 0."""
    if i == 0 or not np.isfinite(y[i - 1]):
        return float(x[i])
    ly0, ly1, ll = np.log(y[i - 1]), np.log(max(y[i], 1e-300)), np.log(level)
    t = (ly0 - ll) / (ly0 - ly1)
    if x[i - 1] <= 0:
        return float(x[i - 1] + t * (x[i] - x[i - 1]))
    return float(np.exp(np.log(x[i - 1]) + t * (np.log(x[i]) - np.log(x[i - 1]))))


def evaluations_to_reach(curve: Curve, level: float) -> float | None:
    """Evaluations at which the forward KLD first falls to ``level`` (nats) or below, linearly
    interpolated in (log evaluations, log KLD) between the last point above and the first point
    at/below (linear in evaluations if the point above has 0 evaluations).  The first point's
    evaluations if it is already at/below; None if never reached.  Only the first crossing counts."""
    if level <= 0:
        raise ValueError(f"level must be > 0, got {level}")
    x, y = curve.evaluations.astype(np.float64), curve.forward_kld
    below = np.flatnonzero(y <= level)
    return None if below.size == 0 else _crossing(x, y, int(below[0]), level)


def evaluations_to_stay_below(curve: Curve, level: float) -> float | None:
    """Evaluations from which the forward KLD stays at/below ``level`` up to the last point: the
    crossing after the last point above ``level`` (interpolated as in evaluations_to_reach); None
    if the last point is above.  Stricter than the first crossing for noisy curves."""
    if level <= 0:
        raise ValueError(f"level must be > 0, got {level}")
    x, y = curve.evaluations.astype(np.float64), curve.forward_kld
    above = np.flatnonzero(~(y <= level))
    if above.size == 0:
        return float(x[0])
    j = int(above[-1])
    return None if j == len(y) - 1 else _crossing(x, y, j + 1, level)


def crossing_table(curves: list[Curve], levels=DEFAULT_LEVELS, baseline_label: str | None = None) -> list[dict]:
    """One row per curve: ``evals@L`` (evaluations to reach forward KLD L, None if never) and
    ``speedup@L`` = N_baseline(L) / N_method(L) (None where either is missing) for each level,
    ``stays@L`` (evaluations from which the KLD stays at/below L to the end of the run), plus the final evaluations and final KLDs / RMSE.  The baseline is the curve labelled
    ``baseline_label``; by default the first MD curve, else the first curve."""
    if not curves:
        raise ValueError("no curves to compare")
    if baseline_label is None:
        base = next((c for c in curves if c.method == "md"), curves[0])
    else:
        base = next((c for c in curves if c.label == baseline_label), None)
        if base is None:
            raise ValueError(f"baseline '{baseline_label}' is not one of {[c.label for c in curves]}")
    n_base = {lv: evaluations_to_reach(base, lv) for lv in levels}
    rows = []
    for c in curves:
        row = {"label": c.label, "baseline": c is base}
        for lv in levels:
            n = evaluations_to_reach(c, lv)
            row[f"evals@{lv:g}"] = n
            row[f"speedup@{lv:g}"] = n_base[lv] / n if n and n_base[lv] else None
        for lv in levels:
            row[f"stays@{lv:g}"] = evaluations_to_stay_below(c, lv)
        row.update(final_evaluations=int(c.evaluations[-1]), final_forward_kld=float(c.forward_kld[-1]),
                   final_reverse_kld=float(c.reverse_kld[-1]),
                   final_pmf_rmse_weighted_kT=float(c.pmf_rmse_weighted_kT[-1]))
        if c.pmf_rmse_unweighted_kT is not None:
            row.update(final_pmf_rmse_unweighted_kT=float(c.pmf_rmse_unweighted_kT[-1]),
                       final_pmf_max_abs_error_kT=float(c.pmf_max_abs_error_kT[-1]),
                       final_coverage=float(c.coverage[-1]))
        rows.append(row)
    return rows


def _fmt(v) -> str:
    if v is None:
        return "—"
    if isinstance(v, bool):
        return "yes" if v else ""
    if isinstance(v, (str, int, np.integer)):
        return str(v)
    return f"{v:.3g}"


def table_markdown(rows: list[dict]) -> str:
    """A crossing table as Markdown ("—": level never reached)."""
    keys = list(rows[0])
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    lines += ["| " + " | ".join(_fmt(r[k]) for k in keys) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def _run_method(run_dir: Path) -> str:
    for name in METHOD_FILES:
        f = run_dir / name
        if f.is_file():
            method = json.loads(f.read_text()).get("method")
            if method:
                return str(method)
    cfg = run_dir / "config.yaml"
    if cfg.is_file():
        data = yaml.safe_load(cfg.read_text()) or {}
        if isinstance(data, dict) and data.get("mode"):
            return str(data["mode"])
    return "unknown"


def _run_label(run_dir: Path) -> str:
    return f"{_run_method(run_dir)} ({Path(run_dir).resolve().name})"


def _final_snapshot_of_run(run_dir: Path) -> list[PMFSnapshot]:
    """For active-learning runs made before pmf_history/ existed: the final ``pmf.npz`` with the
    last row's ``evals_total`` of metrics.csv, as a single snapshot (empty list if absent)."""
    from cgflow.core.run_directory import METRICS, PMF, read_metrics_csv

    if not ((run_dir / PMF).is_file() and (run_dir / METRICS).is_file()):
        return []
    rows = read_metrics_csv(run_dir / METRICS)
    if not rows or "evals_total" not in rows[-1]:
        return []
    with np.load(run_dir / PMF, allow_pickle=False) as z:
        n = sum(1 for k in z.files if k.startswith("edges_"))
        return [PMFSnapshot(edges=[z[f"edges_{i}"] for i in range(n)], pmf_kT=z["pmf_kT"],
                            evaluations=int(rows[-1]["evals_total"]), label=f"iteration {rows[-1]['iteration']}")]


def load_curves(run_dirs, ref: ReferencePMF, epsilon: float = 1e-10, n_points: int = 40) -> list[Curve]:
    """One curve per run directory: MD (``md.json`` with method "md") or PMF snapshots
    (``pmf_history/``); ValueError for a directory that is neither.  Duplicate labels get " #2" ..."""
    curves = []
    for d in map(Path, run_dirs):
        md = d / "md.json"
        if md.is_file() and json.loads(md.read_text()).get("method") == "md":
            c = kld_curve_from_md(d, ref, n_points=n_points, epsilon=epsilon)
        elif (snaps := read_history(d) or _final_snapshot_of_run(d)):
            c = kld_curve_from_snapshots(snaps, ref, _run_label(d), epsilon, _run_method(d))
        else:
            raise ValueError(f"{d}: neither an MD run (md.json) nor a run with PMF snapshots ({HISTORY_DIR}/*.npz)")
        base, n = c.label, 2
        while c.label in {x.label for x in curves}:
            c.label, n = f"{base} #{n}", n + 1
        curves.append(c)
    return curves


def plot_comparison(curves: list[Curve], path, ref_description: str, noise_floor: float | None = None) -> Path:
    """Three panels against energy evaluations (log x): forward KLD (nats, log y), with the
    reference's noise floor as a dashed line if given; the weighted PMF RMSE (solid) and the
    unweighted RMSE where F_ref < 10 kT (dashed), kT, log y; the coverage (reference probability of
    the bins a method has a PMF for; below 1 the errors ignore the rest).  Written atomically as PNG."""
    path = Path(path)
    fig, (ax, axr, axc) = plt.subplots(1, 3, figsize=(18, 5.2))
    markers = "osD^vPX*"
    for i, c in enumerate(curves):
        kw = dict(marker=markers[i % len(markers)], ms=4, lw=1.5, label=c.label)
        series = [(ax, c.forward_kld, "-"), (axr, c.pmf_rmse_weighted_kT, "-")]
        if c.pmf_rmse_unweighted_kT is not None:
            series += [(axr, c.pmf_rmse_unweighted_kT, "--"), (axc, c.coverage, "-")]
        for a, y, ls in series:
            ok = (c.evaluations > 0) & np.isfinite(y) & (y > 0)
            a.plot(c.evaluations[ok], y[ok], color=f"C{i}", ls=ls, **kw)
    if noise_floor is not None and noise_floor > 0:
        ax.axhline(noise_floor, color="k", ls="--", lw=1, label="reference noise floor (KLD between its two halves)")
    axc.set_xscale("log")
    axc.set_ylim(0, 1.05)
    axc.set_xlabel("energy evaluations")
    axc.set_ylabel("coverage: reference probability of bins with a PMF")
    axc.grid(True, which="both", alpha=0.3)
    axc.set_title("coverage vs cost")
    for a, ylab in ((ax, "forward KLD  KL(p_ref ‖ p_model)  (nats)"),
                    (axr, f"PMF RMSE (kT): solid weighted by p_ref, dashed unweighted F_ref < {LOW_FREE_ENERGY_KT:g} kT")):
        a.set_xscale("log")
        a.set_yscale("log")
        a.set_xlabel("energy evaluations")
        a.set_ylabel(ylab)
        a.grid(True, which="both", alpha=0.3)
    ax.set_title("forward KLD vs cost")
    axr.set_title("PMF RMSE vs cost")
    ax.legend(fontsize=8)
    import textwrap

    fig.suptitle(textwrap.fill(f"Accuracy vs energy evaluations — reference: {ref_description}", 160), fontsize=9)
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    try:
        fig.savefig(tmp, dpi=130)
        os.replace(tmp, path)
    finally:
        plt.close(fig)
        tmp.unlink(missing_ok=True)
    return path


def run_compare(run_dirs, reference_path, out_dir, epsilon: float = 1e-10, overwrite: bool = False,
                levels=DEFAULT_LEVELS, baseline_label: str | None = None) -> dict:
    """Compare runs against a reference file; writes ``comparison.png``, ``comparison.md`` and
    ``curves.csv`` (long format) into ``out_dir``.  Returns ``{"rows": crossing table, "curves":
    [Curve], "files": [Path]}``.  FileExistsError if ``out_dir`` is non-empty and not ``overwrite``."""
    out = Path(out_dir)
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise FileExistsError(f"output directory {out} exists and is not empty (add --overwrite to replace its files)")
    ref = load_reference(reference_path)
    curves = load_curves(run_dirs, ref, epsilon)
    rows = crossing_table(curves, levels, baseline_label)
    out.mkdir(parents=True, exist_ok=True)
    png = plot_comparison(curves, out / "comparison.png", ref.description, ref.meta.get("noise_floor_forward_kld"))
    lines = ["# Accuracy vs energy evaluations\n", f"Reference: {ref.description}  ",
             f"Model probabilities floored at epsilon = {epsilon:g}; KLDs in nats, RMSE in kT; "
             f"speedup = baseline evaluations / method evaluations to reach a forward KLD. PMF errors run "
             f"over the bins populated in both (for MD: the bins visited so far), so read them beside "
             f"the coverage (the reference probability of those bins): 'RMSE weighted' is weighted by the "
             f"reference probability; 'unweighted' and 'max error' count every bin with reference "
             f"F < {LOW_FREE_ENERGY_KT:g} kT alike, after the best constant shift.\n",
             table_markdown(rows)]
    lines += [f"- {c.label}: {c.evaluations[-1]} evaluations, forward KLD {c.forward_kld[-1]:.4g}, "
              f"reverse KLD {c.reverse_kld[-1]:.4g}, PMF RMSE weighted {c.pmf_rmse_weighted_kT[-1]:.4g} kT, "
              f"unweighted {c.pmf_rmse_unweighted_kT[-1]:.4g} kT, max error {c.pmf_max_abs_error_kT[-1]:.4g} kT, "
              f"coverage {c.coverage[-1]:.3g}" for c in curves]
    atomic_write_text(out / "comparison.md", "\n".join(lines) + "\n")
    write_metrics_csv(out / "curves.csv", [
        {"label": c.label, "evaluations": int(e), "forward_kld": float(f), "reverse_kld": float(r),
         "pmf_rmse_weighted_kT": float(m), "pmf_rmse_unweighted_kT": float(u), "pmf_max_abs_error_kT": float(x),
         "coverage": float(cv)}
        for c in curves for e, f, r, m, u, x, cv in zip(c.evaluations, c.forward_kld, c.reverse_kld,
                                                         c.pmf_rmse_weighted_kT, c.pmf_rmse_unweighted_kT,
                                                         c.pmf_max_abs_error_kT, c.coverage)])
    return {"rows": rows, "curves": curves, "files": [png, out / "comparison.md", out / "curves.csv"]}
