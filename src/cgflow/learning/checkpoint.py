"""The run's checkpoint (``checkpoint.pt``): one versioned record of everything a resume needs,
written atomically every iteration.  A checkpoint of another format version is refused in one line."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from cgflow.core import run_directory as rd

FORMAT_VERSION = 2
"""Version 1 (cgflow 0.1.0, unversioned) had no ``format_version``, ``stop_kind`` or guaranteed
ensemble buffers; version 2 has all three."""


@dataclass
class Checkpoint:
    """Everything a resume restores.  ``rows`` are the metrics.csv rows so far; ``stop_kind`` a
    :class:`~cgflow.learning.stopping.StopReason` kind ("" while running)."""

    iteration: int
    counter: dict
    mc_start: torch.Tensor | None
    rows: list
    done: bool
    stop_reason: str
    stop_kind: str
    wall_time_s: float
    flow: dict
    optimizer: dict
    ensemble: dict
    dataset: dict
    torch_rng: torch.Tensor
    numpy_rng: dict

    def save(self, path: Path) -> None:
        rd.atomic_torch_save(path, {"format_version": FORMAT_VERSION, **asdict_shallow(self)})

    @classmethod
    def load(cls, path: Path, map_location=None) -> Checkpoint:
        ck = torch.load(path, map_location=map_location, weights_only=False)
        version = ck.get("format_version", 1) if isinstance(ck, dict) else None
        if version != FORMAT_VERSION:
            raise rd.RunDirectoryError(f"cannot resume from {path}: checkpoint format {version}, this cgflow reads "
                                       f"format {FORMAT_VERSION} (start the run again, or resume it with the cgflow "
                                       f"version that wrote it)")
        ck.pop("format_version")
        return cls(**ck)


def asdict_shallow(obj) -> dict:
    """The fields of a dataclass as a dict without deep-copying tensors (unlike dataclasses.asdict)."""
    return {k: getattr(obj, k) for k in obj.__dataclass_fields__}


__all__ = ["Checkpoint", "FORMAT_VERSION"]
