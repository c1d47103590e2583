"""Energy evaluations are the currency: count every configuration whose energy is computed."""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass
class EvaluationCounter:
    """Running totals of configurations, by purpose.

    Attributes:
        drawn: flow samples drawn for training by energy, before any validity (e.g. chirality)
            filter (the reference implementation's main counter).
        training: configurations whose energy was actually computed in training by energy
            (after the filter).  These also provide the PMF labels, at no extra cost.
        rejected: drawn samples rejected by the system's filter (never evaluated).
        nonfinite: evaluated configurations whose energy was NaN/inf (clashes); included in
            ``training``.
        diagnostics: energies computed only for diagnostics (test-set losses).
        starting_data: energies computed to make the starting data (MD / MC steps).
    """

    drawn: int = 0
    training: int = 0
    rejected: int = 0
    nonfinite: int = 0
    diagnostics: int = 0
    starting_data: int = 0

    @property
    def total(self) -> int:
        """Every configuration whose energy was computed, whatever the purpose."""
        return self.training + self.diagnostics + self.starting_data

    def as_dict(self) -> dict:
        d = asdict(self)
        d["total"] = self.total
        return d

    @classmethod
    def from_dict(cls, d: dict) -> EvaluationCounter:
        return cls(**{k: v for k, v in d.items() if k != "total"})
