"""Files of a run directory, written atomically (temp file + rename) so a killed run never
leaves a half-written checkpoint or table behind."""

from __future__ import annotations

import csv
import io
import os
import tempfile
from pathlib import Path

import numpy as np
import torch

CONFIG = "config.yaml"
CHECKPOINT = "checkpoint.pt"
METRICS = "metrics.csv"
PMF = "pmf.npz"


class RunDirectoryError(ValueError):
    """A problem with the run directory (exists without --resume, missing checkpoint, ...)."""


def require_new_run_directory(path: Path, hint: str = "choose another --out") -> None:
    """The one check before a new run writes anything: ``path`` must not exist or be empty, else a
    one-line RunDirectoryError ending in ``hint``."""
    path = Path(path)
    if path.exists() and (not path.is_dir() or any(path.iterdir())):
        raise RunDirectoryError(f"run directory {path} already exists and is not empty; {hint}")


def _file_mode() -> int:
    """The mode a plainly created file gets (0666 less the umask; 0644 usually), not mkstemp's 0600."""
    umask = os.umask(0o022)
    os.umask(umask)
    return 0o666 & ~umask


def atomic_write(path: Path, write) -> None:
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.chmod(tmp, _file_mode())
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda fh: fh.write(text.encode()))


def atomic_torch_save(path: Path, obj) -> None:
    atomic_write(path, lambda fh: torch.save(obj, fh))


def atomic_savez(path: Path, **arrays) -> None:
    atomic_write(path, lambda fh: np.savez(fh, **arrays))


def write_metrics_csv(path: Path, rows: list[dict]) -> None:
    if not rows:
        return
    keys: list[str] = []
    for r in rows:
        keys += [k for k in r if k not in keys]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=keys)
    w.writeheader()
    w.writerows(rows)
    atomic_write_text(path, buf.getvalue())


def read_metrics_csv(path: Path) -> list[dict]:
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    out = []
    for r in rows:
        conv = {}
        for k, v in r.items():
            try:
                conv[k] = int(v)
            except (TypeError, ValueError):
                try:
                    conv[k] = float(v)
                except (TypeError, ValueError):
                    conv[k] = v
        out.append(conv)
    return out
