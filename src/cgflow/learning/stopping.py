"""When an active-learning run stops: the one home of the stopping rule, used by the run and by
``--resume`` (which re-applies a changed rule to the rows a run has already written).

A stop has a *kind*; only the kinds of the ``stopping`` config section (:data:`RULE_KINDS`) can be
lifted by extending ``stopping.*`` on resume; the others (MC exhausted, a grid run finished, a zero
acquisition score) say the run has nothing left to do."""

from __future__ import annotations

from dataclasses import dataclass

RULE_KINDS = ("kld_threshold", "std_target", "error_bar_target", "max_iterations")
"""Stops decided by the ``stopping`` section (a resume with changed stopping keys may lift them)."""
OTHER_KINDS = ("mc_exhausted", "grid_finished", "score_zero")
"""Stops that no stopping key changes."""


@dataclass(frozen=True)
class StopReason:
    """Why a run stopped: ``kind`` (one of RULE_KINDS or OTHER_KINDS) and a sentence for people."""

    kind: str
    message: str

    @property
    def is_stopping_rule(self) -> bool:
        return self.kind in RULE_KINDS


def mc_exhausted(threshold_kT: float, max_steps: int) -> StopReason:
    return StopReason("mc_exhausted", f"MC found no point with std > {threshold_kT} kT in {max_steps} steps")


def grid_finished(epochs: int) -> StopReason:
    return StopReason("grid_finished", f"grid conditioning finished its {epochs} epochs")


SCORE_ZERO = StopReason("score_zero", "the acquisition score is zero everywhere")


class Stopping:
    """The rule of a ``stopping`` config section (``kld_threshold``, ``std_target_kT``,
    ``error_bar_target_kT``, ``max_iterations``), checked in that order after each iteration.

    The two targets that need no reference (``std_target_kT``, ``error_bar_target_kT``) are vetoed
    while the per-bin error bar somewhere below F = 10 kT (``error_bar_max_low_F_kT``) exceeds
    ``region_error_bar_kT``: no run stops on its own error bar while a low-free-energy region has not
    been resolved.  ``max_iterations`` (a budget) and ``kld_threshold`` (an oracle) are never vetoed."""

    def __init__(self, stopping_cfg) -> None:
        self.cfg = stopping_cfg

    def unresolved_region(self, row: dict) -> bool:
        """Whether ``row``'s largest low-F per-bin error bar exceeds ``region_error_bar_kT``."""
        ceiling, worst = getattr(self.cfg, "region_error_bar_kT", None), row.get("error_bar_max_low_F_kT")
        return ceiling is not None and worst is not None and worst == worst and worst > ceiling

    def check(self, iteration: int, row: dict) -> StopReason | None:
        """The stop after ``iteration`` (1-based) whose metrics are ``row`` (``forward_kld``,
        ``boltzmann_std_kT``, ``error_bar_kT``, ``error_bar_max_low_F_kT`` where computed), or None."""
        s = self.cfg
        kld = row.get("forward_kld")
        if s.kld_threshold is not None and kld is not None and kld < s.kld_threshold:
            return StopReason("kld_threshold", f"forward KLD {kld:.3g} < {s.kld_threshold:g}")
        if not self.unresolved_region(row):
            target, b_std = getattr(s, "std_target_kT", None), row.get("boltzmann_std_kT")
            if target is not None and b_std is not None and b_std < target:
                return StopReason("std_target", f"Boltzmann-weighted ensemble std {b_std:.3g} kT < {target:g} kT")
            target, bar = getattr(s, "error_bar_target_kT", None), row.get("error_bar_kT")
            if target is not None and bar is not None and bar < target:
                return StopReason("error_bar_target", f"error bar {bar:.3g} kT < {target:g} kT")
        if iteration >= s.max_iterations:
            return StopReason("max_iterations", f"reached stopping.max_iterations = {s.max_iterations}")
        return None

    def check_rows(self, rows: list[dict]) -> StopReason | None:
        """The stop this rule gives after the iterations ``rows`` (a resumed run's metrics), or None."""
        if not rows:
            return None
        return self.check(len(rows), rows[-1])
