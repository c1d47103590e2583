"""Seeds derived from a run's seed, one stream per use, so that every random choice is reproducible."""

from __future__ import annotations

import hashlib


def openmm_seed(seed: int, stream: str) -> int:
    """A nonzero 31-bit seed for OpenMM (which treats 0 as "pick one at random") derived from
    ``(seed, stream)``."""
    h = hashlib.sha256(f"{int(seed)}:{stream}".encode()).digest()
    return int.from_bytes(h[:4], "little") % (2**31 - 2) + 1
