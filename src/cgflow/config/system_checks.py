"""The settings that depend on the system, checked against the system actually built.

A config is validated on its own (:mod:`cgflow.config.schema`) before any system exists; values that
only make sense for one system (an MC start, lengths in CG units, grid sizes) can only be judged once
it is built.  :func:`check_against_system` does that, before a run writes anything: whatever the value
came from (the YAML, a parent config through ``extends:``, or ``--set``), a value that does not fit
the system is a one-line :class:`~cgflow.config.schema.ConfigError`.

Keys with a per-system default (:data:`SYSTEM_DEFAULTED_KEYS`) that a child config would inherit from
a parent describing another system are reset by :mod:`cgflow.config.loading` instead (with a note).
"""

from __future__ import annotations

import math

from cgflow.config.schema import ConfigError

SYSTEM_DEFAULTED_KEYS = ("sampler.start", "metrics.pairs")
"""Keys whose default (null) means "the system's own": ``sampler.start`` -> ``system.default_mc_start``,
``metrics.pairs`` -> the reference's pairs or every pair.  A child config that replaces the system keeps
them only if it lists them itself."""

MAX_STEP_FRACTION = 0.5
"""``sampler.step_size`` must not exceed this fraction of the narrowest CG domain width."""
MAX_SPREAD_FRACTION = 0.5
"""``acquisition.spread_radius`` must not exceed this fraction of the narrowest CG domain width."""
MAX_GRID_POINTS = 1_000_000
"""Grid mode: at most this many CG points (``grid.points_per_dim ** cg_dim``)."""


def _domain(system) -> list[tuple[float, float]]:
    return [(float(lo), float(hi)) for lo, hi in system.cg_domain]


def _default_start(system) -> str:
    start = getattr(system, "default_mc_start", None)
    return f" {[float(v) for v in start]}" if start is not None else ""


def system_problems(cfg, system) -> list[str]:
    """One line per setting of ``cfg`` (a RunConfig) that does not fit ``system`` (empty: all fit)."""
    out = []
    dom, names = _domain(system), tuple(getattr(system, "cg_names", ()) or
                                        (f"s{i + 1}" for i in range(system.cg_dim)))
    where = f"the system {system.name!r}"
    start = cfg.sampler.start
    if start is not None:
        if len(start) != system.cg_dim:
            out.append(f"sampler.start has {len(start)} value(s), the CG space of {where} has {system.cg_dim} "
                       f"({', '.join(names)})")
        else:
            for v, (lo, hi), per, n in zip(start, dom, system.cg_periodic, names):
                if not math.isfinite(v):
                    out.append(f"sampler.start {list(start)}: {n} = {v} is not finite")
                elif not per and not lo <= v <= hi:
                    out.append(f"sampler.start {list(start)}: {n} = {v:g} lies outside the CG domain "
                               f"[{lo:g}, {hi:g}] of {where} (set a start inside it, or null for the system's "
                               f"default{_default_start(system)})")
    width = min(hi - lo for lo, hi in dom)
    if cfg.mode == "active_learning" and cfg.sampler.kind == "mc" and cfg.sampler.step_size > MAX_STEP_FRACTION * width:
        out.append(f"sampler.step_size {cfg.sampler.step_size:g} is more than {MAX_STEP_FRACTION:g} of the narrowest "
                   f"CG domain width {width:g} of {where}: MC proposals would mostly leave the domain")
    if cfg.mode == "active_learning" and cfg.acquisition.spread_radius > MAX_SPREAD_FRACTION * width:
        out.append(f"acquisition.spread_radius {cfg.acquisition.spread_radius:g} is more than {MAX_SPREAD_FRACTION:g} "
                   f"of the narrowest CG domain width {width:g} of {where}")
    if cfg.mode == "grid":
        n = cfg.grid.points_per_dim ** system.cg_dim
        if n > MAX_GRID_POINTS:
            out.append(f"grid.points_per_dim {cfg.grid.points_per_dim} makes {n:.3g} CG points in the {system.cg_dim} "
                       f"dimension(s) of {where} (at most {MAX_GRID_POINTS:,})")
    return out


def check_against_system(cfg, system) -> None:
    """ConfigError (one line: the first problem, and how many more) unless every system-dependent
    setting of ``cfg`` fits ``system``."""
    problems = system_problems(cfg, system)
    if problems:
        more = f" (and {len(problems) - 1} more problem(s))" if len(problems) > 1 else ""
        raise ConfigError(f"invalid config for this system: {problems[0]}{more}")
