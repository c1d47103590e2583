"""How many CPU threads torch uses in a cgflow process.

Measured in docs/benchmarks.md ("Torch threads"): the networks of cgflow are small, so a second
intra-op thread gains little on an idle 2-core machine and loses badly as soon as anything else
runs on the machine (each parallel region then waits for the descheduled thread).  The default is
therefore **one torch thread per process**; parallel energy evaluation (the OpenMM worker pool, MD
replicas) uses the other cores in separate processes.  ``--threads N`` overrides the default, and
so does an ``OMP_NUM_THREADS`` set in the environment when ``--threads`` is not given.
"""

from __future__ import annotations

import os

DEFAULT_THREADS = 1
THREAD_ENV_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


def choose_threads(requested: int | None, environ=None) -> int | None:
    """The number of torch threads to set: ``requested`` if given, else None (keep what torch
    took from ``OMP_NUM_THREADS``) when that variable is set, else :data:`DEFAULT_THREADS`."""
    environ = os.environ if environ is None else environ
    if requested is not None:
        if requested < 1:
            raise ValueError(f"--threads must be >= 1, got {requested}")
        return int(requested)
    if environ.get("OMP_NUM_THREADS", "").strip():
        return None
    return DEFAULT_THREADS


def apply_threads(requested: int | None = None) -> int:
    """Set torch's intra-op threads (and the variables child processes inherit) as chosen by
    :func:`choose_threads`; returns the number of threads torch now uses."""
    import torch

    n = choose_threads(requested)
    if n is not None:
        torch.set_num_threads(n)
        for var in THREAD_ENV_VARS:
            os.environ[var] = str(n)
    return torch.get_num_threads()


def allowed_cores() -> list[int]:
    """The CPU cores this process may run on (sorted), or [] where this is not known."""
    if hasattr(os, "sched_getaffinity"):
        try:
            return sorted(os.sched_getaffinity(0))
        except OSError:  # pragma: no cover
            return []
    return []
