"""Reporters print progress; they are observers and never change what a run computes."""

from __future__ import annotations

from tqdm.auto import tqdm


def _fmt_row(row: dict) -> str:
    parts = [f"iteration {row['iteration']}", f"evals {row['evals_total']:,}",
             f"CG points {row['n_points_total']}"]
    if "forward_kld" in row:
        parts.append(f"forward KLD {row['forward_kld']:.3g}")
    if "pmf_rmse_kT" in row:
        parts.append(f"PMF RMSE {row['pmf_rmse_kT']:.3f} kT")
    parts.append(f"{row['wall_time_s']:.1f} s")
    return " | ".join(parts)


class ConsoleReporter:
    """One line per iteration and a summary at the end."""

    def on_iteration(self, run, row) -> None:
        tqdm.write(_fmt_row(row))

    def on_finish(self, run) -> None:
        st = run.state
        c = st.counter
        last = st.rows[-1] if st.rows else {}
        lines = [f"finished: {st.stop_reason}"]
        if "forward_kld" in last:
            lines.append(f"final forward KLD: {last['forward_kld']:.3g} (PMF RMSE {last['pmf_rmse_kT']:.3f} kT)")
        lines.append(f"energy evaluations: {c.total:,} in all = {c.training:,} training (drawn {c.drawn:,}, "
                     f"rejected by filter {c.rejected:,}, non-finite {c.nonfinite:,}) + {c.diagnostics:,} "
                     f"diagnostics + {c.starting_data:,} starting data")
        lines.append(f"wall time: {st.wall_time_s:.1f} s over {len(st.rows)} iterations")
        lines.append(f"outputs: {run.run_dir}/ (metrics.csv, pmf.npz, pmf.png, kld.png, checkpoint.pt)")
        tqdm.write("\n".join(lines))
