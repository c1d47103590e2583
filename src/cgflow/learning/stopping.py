"""When an active-learning run stops: the one home of the stopping rule, used by the run and by
``--resume`` (which re-applies a changed rule to the rows a run has already written).

A stop has a *kind*; only the kinds of the ``stopping`` config section (:data:`RULE_KINDS`) can be
lifted by extending ``stopping.*`` on resume; the others (MC exhausted, a grid run finished, a zero
acquisition score) say the run has nothing left to do."""

from __future__ import annotations

from dataclasses import dataclass

RULE_KINDS = ("kld_threshold", "std_target", "max_iterations")
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
    ``max_iterations``), checked in that order after each iteration."""

    def __init__(self, stopping_cfg) -> None:
        self.cfg = stopping_cfg

    def check(self, iteration: int, row: dict) -> StopReason | None:
        """The stop after ``iteration`` (1-based) whose metrics are ``row`` (``forward_kld``,
        ``boltzmann_std_kT`` where computed), or None to go on."""
        s = self.cfg
        kld = row.get("forward_kld")
        if s.kld_threshold is not None and kld is not None and kld < s.kld_threshold:
            return StopReason("kld_threshold", f"forward KLD {kld:.3g} < {s.kld_threshold:g}")
        target, b_std = getattr(s, "std_target_kT", None), row.get("boltzmann_std_kT")
        if target is not None and b_std is not None and b_std < target:
            return StopReason("std_target", f"Boltzmann-weighted ensemble std {b_std:.3g} kT < {target:g} kT")
        if iteration >= s.max_iterations:
            return StopReason("max_iterations", f"reached stopping.max_iterations = {s.max_iterations}")
        return None

    def check_rows(self, rows: list[dict]) -> StopReason | None:
        """The stop this rule gives after the iterations ``rows`` (a resumed run's metrics), or None."""
        if not rows:
            return None
        return self.check(len(rows), rows[-1])
