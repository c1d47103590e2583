"""What every `cgflow` command shares: the one typer ``app``, one-line failures, the --threads option."""

from __future__ import annotations

import sys
import warnings
from typing import Optional

import typer

app = typer.Typer(add_completion=False, no_args_is_help=True, rich_markup_mode=None,
                  help="PMFs in coarse-grained coordinates from conditional normalizing flows and active learning.")


@app.callback()
def _main() -> None:
    """PMFs in coarse-grained coordinates from conditional normalizing flows and active learning."""
    if not sys.stderr.isatty():
        quiet_progress_bars()
    notes_as_one_line()


def notes_as_one_line() -> None:
    """Config notes (``cgflow.config.ConfigNote``, e.g. a key reset because ``extends:`` changed the
    system) print as ``note: ...``, one line, not as a Python warning with its source line."""
    base = warnings.formatwarning
    if getattr(base, "_cgflow_notes", False):
        return

    def fmt(message, category, filename, lineno, line=None):
        if category.__name__ == "ConfigNote":
            return f"note: {message}\n"
        return base(message, category, filename, lineno, line)

    fmt._cgflow_notes = True  # type: ignore[attr-defined]
    warnings.formatwarning = fmt


def quiet_progress_bars() -> None:
    """Output that is not a terminal (a log file, a pipe, CI) gets no progress bars: their redraws would
    flood it.  The one line per iteration (and the summary) still comes.  Must run before the modules
    that draw bars are imported (the commands import them lazily)."""
    import tqdm.auto

    base = tqdm.auto.tqdm
    if getattr(base, "_cgflow_quiet", False):
        return

    class QuietTqdm(base):
        _cgflow_quiet = True

        def __init__(self, *args, **kwargs):
            kwargs["disable"] = True
            super().__init__(*args, **kwargs)

    tqdm.auto.tqdm = QuietTqdm


def fail(msg: str, code: int = 2) -> None:
    typer.echo(f"error: {msg}", err=True)
    raise typer.Exit(code)


THREADS_HELP = ("torch CPU threads of this process (default: 1, or OMP_NUM_THREADS when set; "
                "see docs/benchmarks.md).")


def threads_option():
    return typer.Option(None, "--threads", min=1, help=THREADS_HELP)


def set_threads(n: Optional[int]) -> int:
    from cgflow.core.threads import apply_threads

    return apply_threads(n)


