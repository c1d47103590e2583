"""When progress bars are drawn: one rule for the CLI and the Python API.

A bar is drawn only if the caller asked for progress (``progress=True``, the config's ``progress``) *and* the
output can show it: standard error is a terminal, or the code runs in a Jupyter/IPython kernel (where tqdm
draws a widget).  Output to a log file, a pipe or CI gets no bars, whose redraws would flood it; the one line
per iteration and the summary still come.
"""

from __future__ import annotations

import sys


def _in_notebook() -> bool:
    shell = sys.modules.get("IPython")
    if shell is None:
        return False
    try:
        ip = shell.get_ipython()  # type: ignore[attr-defined]
    except Exception:  # pragma: no cover - an unusual IPython
        return False
    return ip is not None and "IPKernelApp" in getattr(ip, "config", {})


def bars_disabled(progress: bool = True) -> bool:
    """The ``disable=`` argument of every tqdm bar cgflow draws (True: no bar)."""
    if not progress:
        return True
    try:
        tty = sys.stderr.isatty()
    except (AttributeError, ValueError):  # closed or replaced stderr
        tty = False
    return not (tty or _in_notebook())
