"""Reporters print progress; they are observers and never change what a run computes."""

from __future__ import annotations

from tqdm.auto import tqdm

from cgflow.analysis.metrics import LOW_FREE_ENERGY_KT


def _fmt_row(row: dict) -> str:
    parts = [f"iteration {row['iteration']}", f"evals {row['evals_total']:,}",
             f"CG points {row['n_points_total']}"]
    if "forward_kld" in row:
        parts.append(f"forward KLD {row['forward_kld']:.3g}")
    if "pmf_rmse_weighted_kT" in row:
        parts.append(f"PMF RMSE ref-weighted {row['pmf_rmse_weighted_kT']:.3f} kT")
    if "pmf_rmse_unweighted_kT" in row:
        parts.append(f"unweighted {row['pmf_rmse_unweighted_kT']:.3f} kT")
    if "pmf_max_abs_error_kT" in row:
        std = row.get("ensemble_std_at_max_error_kT")
        parts.append(f"max err {row['pmf_max_abs_error_kT']:.2f} kT" +
                     (f" (std there {std:.2f})" if std is not None else ""))
    if "error_bar_kT" in row:
        part = f"error bar model-weighted {row['error_bar_kT']:.3f} kT"
        if "abs_err_ref_weighted_kT" in row:
            part += (f" (actual ref-weighted {row['abs_err_ref_weighted_kT']:.3f}, 1-sigma coverage "
                     f"{row['coverage_1sigma']:.2f})")
        parts.append(part)
    parts.append(f"{row['wall_time_s']:.1f} s")
    return " | ".join(parts)


def error_bar_lines(row: dict) -> list[str]:
    """The run's own error bar (no reference needed; cgflow.pmf.error_bar): the absolute error it predicts,
    weighted by the model's probability, and its largest per-bin value below F = 10 kT; with a reference the
    actual absolute error weighted by the reference probability and the coverage beside it (calibration:
    docs/results.md).  Each figure carries its metrics.csv column in brackets."""
    if "error_bar_kT" not in row:
        return []
    out = [f"error bar (no reference used): predicted absolute error weighted by the model's probability "
           f"[error_bar_kT] = {row['error_bar_kT']:.3f} kT; largest per-bin error bar where F_model < 10 kT "
           f"[error_bar_max_low_F_kT] = {row['error_bar_max_low_F_kT']:.3f} kT"]
    if "abs_err_ref_weighted_kT" in row:
        out.append(f"actual absolute error weighted by the reference probability [abs_err_ref_weighted_kT] = "
                   f"{row['abs_err_ref_weighted_kT']:.3f} kT; reference probability where the per-bin error bar "
                   f"covers the actual error: at 1 sigma [coverage_1sigma] = {row['coverage_1sigma']:.2f} (nominal "
                   f"0.68), at 2 sigma [coverage_2sigma] = {row['coverage_2sigma']:.2f} (nominal 0.95)")
    return out


def accuracy_lines(row: dict) -> list[str]:
    """The final accuracy figures, each named for what it averages and by which weights, with its
    metrics.csv column in brackets (docs/method.md, "Accuracy figures")."""
    if "forward_kld" not in row:
        return []
    if "forward_kld_max_pair" in row:  # d > 2: 2-D marginals
        pairs = {k[len("forward_kld["):-1]: v for k, v in row.items() if k.startswith("forward_kld[")}
        worst = max(pairs, key=pairs.get) if pairs else "?"
        lines = [f"final forward KLD, mean over {len(pairs)} CG pairs of the 2-D marginal KLDs (nats) [forward_kld] = "
                 f"{row['forward_kld']:.3g}; worst {worst} [forward_kld_max_pair] = {row['forward_kld_max_pair']:.3g}; "
                 f"integration error ~{row.get('marginal_integration_error_kld', float('nan')):.2g}"]
    else:
        lines = [f"final forward KLD, KL(p_ref || p_model) on the reference bins (nats) [forward_kld] = "
                 f"{row['forward_kld']:.3g}"]
    if "forward_kld_max_pair" in row and "pmf_rmse_weighted_kT" in row:
        lines.append("PMF errors below: means over the CG pairs' 2-D marginals")
    if "pmf_rmse_weighted_kT" in row:
        lines.append(f"PMF RMSE weighted by the reference probability [pmf_rmse_weighted_kT] = "
                     f"{row['pmf_rmse_weighted_kT']:.3f} kT")
    if "pmf_rmse_unweighted_kT" in row:
        lines.append(f"PMF error where F_ref < {LOW_FREE_ENERGY_KT:g} kT, every bin alike (unweighted, best shift): "
                     f"RMSE [pmf_rmse_unweighted_kT] = {row['pmf_rmse_unweighted_kT']:.3f} kT, largest "
                     f"[pmf_max_abs_error_kT] = {row['pmf_max_abs_error_kT']:.3f} kT")
    if "ensemble_std_mean_kT" in row:
        lines.append(f"ensemble std there: unweighted mean [ensemble_std_mean_kT] = {row['ensemble_std_mean_kT']:.3f} "
                     f"kT, at the largest error [ensemble_std_at_max_error_kT] = "
                     f"{row['ensemble_std_at_max_error_kT']:.3f} kT")
    return lines


def run_warnings(rows: list[dict]) -> list[tuple[int, str]]:
    """(iteration, warning) for every warning recorded in the metrics rows (column ``warnings``,
    '; '-separated), in order."""
    out = []
    for r in rows:
        for w in str(r.get("warnings") or "").split("; "):
            if w.strip():
                out.append((r.get("iteration"), w.strip()))
    return out


def warning_lines(rows: list[dict], limit: int = 8) -> list[str]:
    """The summary's warning section (empty without warnings)."""
    warns = run_warnings(rows)
    if not warns:
        return []
    last_it = rows[-1].get("iteration") if rows else None
    last = sum(1 for it, _ in warns if it == last_it)
    lines = [f"warnings: {len(warns)} in {len({it for it, _ in warns})} iteration(s), "
             f"{last or 'none'} in the last one (metrics.csv, column 'warnings'):"]
    lines += [f"  - iteration {it}: {w}" for it, w in warns[-limit:]]
    if len(warns) > limit:
        lines.append(f"  ({len(warns) - limit} earlier ones in metrics.csv)")
    return lines


class ConsoleReporter:
    """One line per iteration (plus its warnings) and a summary at the end."""

    def on_iteration(self, run, row) -> None:
        tqdm.write(_fmt_row(row))
        for w in str(row.get("warnings") or "").split("; "):
            if w.strip():
                tqdm.write(f"warning: {w.strip()}")

    def on_finish(self, run) -> None:
        st = run.state
        c = st.counter
        last = st.rows[-1] if st.rows else {}
        lines = [f"finished: {st.stop_reason}"]
        lines += accuracy_lines(last)
        lines += error_bar_lines(last)
        lines.append(f"energy evaluations: {c.total:,} in all = {c.training:,} training (drawn {c.drawn:,}, "
                     f"rejected by filter {c.rejected:,}, non-finite {c.nonfinite:,} = "
                     f"{c.nonfinite / max(c.training, 1):.2%} of those evaluated) + {c.diagnostics:,} "
                     f"diagnostics + {c.starting_data:,} starting data")
        lines.append(f"wall time: {st.wall_time_s:.1f} s over {len(st.rows)} iterations")
        lines += warning_lines(st.rows)
        names = [n for n in ("metrics.csv", "pmf.npz", "pmf.png", "kld.png", "checkpoint.pt")
                 if (run.run_dir / n).is_file()]
        lines.append(f"outputs: {run.run_dir}/ ({', '.join(names)})")
        tqdm.write("\n".join(lines))
