"""The one narrow protocol through which a molecule (or toy potential) plugs into the core.

The core (flow, PMF labels, ensemble, sampler, active-learning loop) never looks inside a
system.  It only needs:

* the sizes and periodicity of the coarse-grained (CG) coordinates ``s`` and of the
  fine-grained (FG) coordinates ``x_fg``;
* the CG domain (the range used for metrics, plots and, optionally, confining Monte Carlo);
* ``log_target(s, x_fg)``: the unnormalized log density of the joint internal coordinates,
  ``-u(x)/kT + log|det J_{T^-1}(s, x_fg)|`` where ``x = T^-1(s, x_fg)`` are the full coordinates;
* ``to_internal`` / ``from_internal``: the map between full coordinates and ``(s, x_fg)``;
* ``starting_data``: a few full configurations (e.g. short MD) for training by example;
* optionally ``valid`` (e.g. a chirality filter applied *before* any energy is evaluated) and
  ``reference`` (an exact or reference PMF on a grid of bins for the accuracy metric).

Conventions: energies in kT, float64 for energies and internal coordinates, angles in
radians, periodic coordinates wrapped to [-pi, pi).  Shapes: ``B`` is the batch size.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import numpy as np
import torch

Tensor = torch.Tensor


@dataclass
class StartingData:
    """Full configurations used to seed a run.

    Attributes:
        x: full coordinates, shape (n, *system.full_shape), float64.
        n_energy_evaluations: configurations whose energy was computed to make them (MD steps,
            MC steps ...), counted into the run's budget.
        description: one line saying how the data was made.
    """

    x: Tensor
    n_energy_evaluations: int
    description: str = ""


@dataclass
class ReferencePMF:
    """A reference PMF binned on a regular grid over the CG domain.

    Attributes:
        edges: one array of bin edges per CG dimension, each of shape (n_bins_d + 1,).
        prob: normalized bin probabilities, shape (n_bins_1, ..., n_bins_cg_dim), indexed
            [i_1, i_2, ...] in the order of the CG coordinates.
        description: how the reference was obtained.
    """

    edges: list[np.ndarray]
    prob: np.ndarray
    description: str = ""
    meta: dict = field(default_factory=dict)

    @property
    def centers(self) -> list[np.ndarray]:
        return [0.5 * (e[1:] + e[:-1]) for e in self.edges]

    @property
    def pmf_kT(self) -> np.ndarray:
        """-ln prob, shifted to a minimum of 0 (inf in empty bins)."""
        with np.errstate(divide="ignore"):
            f = -np.log(self.prob)
        return f - f[np.isfinite(f)].min()


@dataclass
class MarginalReferencePMF:
    """Reference 2-D marginals of a d-dimensional CG space.

    Attributes:
        pairs: the CG index pairs (i, j).
        edges: bin edges per CG dimension (d arrays, each (n_bins + 1,)).
        probs: per pair, normalized bin probabilities (n_bins_i, n_bins_j).
        cg_dim: d.
    """

    pairs: list[tuple[int, int]]
    edges: list[np.ndarray]
    probs: list[np.ndarray]
    cg_dim: int
    description: str = ""
    meta: dict = field(default_factory=dict)

    def prob_of(self, pair: tuple[int, int]) -> np.ndarray:
        i, j = pair
        for (a, b), p in zip(self.pairs, self.probs):
            if (a, b) == (i, j):
                return p
            if (a, b) == (j, i):
                return p.T
        raise KeyError(f"the reference has no marginal of the CG pair {pair}")


@runtime_checkable
class System(Protocol):
    """What the core needs to know about a molecule.  See the module docstring."""

    name: str
    cg_dim: int
    fg_dim: int
    cg_periodic: tuple[bool, ...]
    fg_periodic: tuple[bool, ...]
    cg_domain: tuple[tuple[float, float], ...]
    cg_names: tuple[str, ...]

    def log_target(self, s: Tensor, x_fg: Tensor) -> Tensor:
        """Unnormalized log density of (s, x_fg), shape (B,) float64; differentiable in x_fg.

        Non-finite values (clashes) are allowed and are handled by the caller."""
        ...

    def valid(self, s: Tensor, x_fg: Tensor) -> Tensor:
        """Boolean mask (B,): samples that may be evaluated (e.g. the right chirality)."""
        ...

    def to_internal(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Full coordinates (B, ...) -> (s (B, cg_dim), x_fg (B, fg_dim))."""
        ...

    def from_internal(self, s: Tensor, x_fg: Tensor) -> tuple[Tensor, Tensor]:
        """(s, x_fg) -> (full coordinates (B, ...), log|det J_{T^-1}| (B,))."""
        ...

    def starting_data(self, seed: int) -> StartingData:
        ...

    def reference(self) -> ReferencePMF | None:
        ...


# --- plug-in systems: validation and the defaults of the optional parts ------------------------
REQUIRED_ATTRIBUTES = ("name", "cg_dim", "fg_dim", "cg_periodic", "fg_periodic", "cg_domain")
REQUIRED_METHODS = ("log_target", "to_internal", "from_internal", "starting_data")
OPTIONAL_PARTS = {
    "cg_names": "('s1', 's2', ...)",
    "valid": "every sample is valid (no filter before the energy)",
    "reference": "None (no reference PMF: the run reports no accuracy figures, only its own error bar)",
    "default_mc_start": "the centre of cg_domain",
    "simulation_view": "absent (the MD / metadynamics / umbrella baselines refuse the system)",
}


class SystemProtocolError(TypeError):
    """An object that does not implement :class:`System` consistently (one-line message)."""


def check_system(obj, where: str = "system") -> None:
    """Raise :class:`SystemProtocolError` (one line) unless ``obj`` implements the required part of
    :class:`System` consistently: sizes, periodicity, domain (periodic CG coordinates must use the
    domain (-pi, pi), the convention of :func:`wrap_angle`) and callables."""
    missing = [a for a in REQUIRED_ATTRIBUTES + REQUIRED_METHODS if not hasattr(obj, a)]
    if missing:
        raise SystemProtocolError(f"{where} ({type(obj).__name__}) lacks {', '.join(missing)} of the System protocol "
                                  f"(see docs/systems.md)")
    not_callable = [m for m in REQUIRED_METHODS + ("valid", "reference")
                    if hasattr(obj, m) and not callable(getattr(obj, m))]
    if not_callable:
        raise SystemProtocolError(f"{where}: {', '.join(not_callable)} must be method(s)")
    for a in ("cg_dim", "fg_dim"):
        v = getattr(obj, a)
        if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v < 1:
            raise SystemProtocolError(f"{where}: {a} must be a positive int, got {v!r}")
    d = int(obj.cg_dim)
    for a, n in (("cg_periodic", d), ("fg_periodic", int(obj.fg_dim))):
        v = tuple(getattr(obj, a))
        if len(v) != n:
            raise SystemProtocolError(f"{where}: len({a}) = {len(v)} but {a[:2]}_dim = {n}")
    try:
        dom = tuple(tuple(float(x) for x in lohi) for lohi in obj.cg_domain)
    except (TypeError, ValueError):
        dom = ()
    if len(dom) != d or any(len(lohi) != 2 for lohi in dom):
        raise SystemProtocolError(f"{where}: cg_domain must be {d} (low, high) pair(s), got {obj.cg_domain!r}")
    for i, ((lo, hi), per) in enumerate(zip(dom, obj.cg_periodic)):
        if not lo < hi:
            raise SystemProtocolError(f"{where}: cg_domain[{i}] = ({lo}, {hi}) needs low < high")
        if per and not (np.isclose(lo, -np.pi) and np.isclose(hi, np.pi)):
            raise SystemProtocolError(f"{where}: CG coordinate {i} is periodic, so its domain must be (-pi, pi) "
                                      f"(radians), got ({lo:.4g}, {hi:.4g})")
    names = getattr(obj, "cg_names", None)
    if names is not None and len(tuple(names)) != d:
        raise SystemProtocolError(f"{where}: len(cg_names) = {len(tuple(names))} but cg_dim = {d}")
    start = getattr(obj, "default_mc_start", None)
    if start is not None and len(tuple(start)) != d:
        raise SystemProtocolError(f"{where}: default_mc_start has {len(tuple(start))} values, cg_dim = {d}")


class SystemWithDefaults:
    """A plug-in system with the documented defaults (:data:`OPTIONAL_PARTS`) for the optional parts
    it lacks; every other attribute is the wrapped object's."""

    def __init__(self, system):
        object.__setattr__(self, "wrapped", system)

    def __getattr__(self, name):
        if name == "wrapped" or name.startswith("__"):  # not yet set (copy, unpickling) or a protocol of its own
            raise AttributeError(name)
        return getattr(self.__dict__["wrapped"], name)

    def __setattr__(self, name, value):
        setattr(self.wrapped, name, value)

    @property
    def cg_names(self) -> tuple[str, ...]:
        names = getattr(self.wrapped, "cg_names", None)
        return tuple(names) if names is not None else tuple(f"s{i + 1}" for i in range(self.wrapped.cg_dim))

    @property
    def default_mc_start(self) -> tuple[float, ...]:
        start = getattr(self.wrapped, "default_mc_start", None)
        if start is not None:
            return tuple(float(v) for v in start)
        return tuple(0.5 * (lo + hi) for lo, hi in self.wrapped.cg_domain)

    def valid(self, s: Tensor, x_fg: Tensor) -> Tensor:
        f = getattr(self.wrapped, "valid", None)
        if f is None:
            return torch.ones(s.shape[0], dtype=torch.bool, device=s.device)
        return f(s, x_fg)

    def reference(self) -> ReferencePMF | None:
        f = getattr(self.wrapped, "reference", None)
        return None if f is None else f()

    def __repr__(self) -> str:
        return f"SystemWithDefaults({self.wrapped!r})"


def with_defaults(obj, where: str = "system"):
    """Check ``obj`` (:func:`check_system`) and return it with the defaults of the optional parts:
    ``obj`` itself if it has them all, else a :class:`SystemWithDefaults` around it."""
    check_system(obj, where)
    if all(hasattr(obj, a) for a in ("cg_names", "valid", "reference", "default_mc_start")):
        return obj
    return SystemWithDefaults(obj)
