"""Systems that plug into the core through :class:`cgflow.core.system.System`."""

from __future__ import annotations

from cgflow.systems.muller_brown import MullerBrownSystem


def build_system(cfg, device="cpu"):
    """Make the System described by a validated system config (``RunConfig.system``)."""
    if cfg.name == "molecule":
        from cgflow.systems.molecules.config import build_molecule_system
        return build_molecule_system(cfg, device=device)
    if cfg.name == "python":
        from cgflow.systems.python_factory import build_python_system
        return build_python_system(cfg, device=device)
    if cfg.name == "muller-brown":
        return MullerBrownSystem(beta=cfg.beta, domain=cfg.domain, n_bins=cfg.n_bins,
                                 n_starting_points=cfg.n_starting_points)
    raise ValueError(f"unknown system {cfg.name!r}")
