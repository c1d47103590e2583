"""Plug-in systems from Python code: ``system: {name: python, factory: "module:callable", kwargs: {...}}``.

The module is imported from the working directory or ``PYTHONPATH``; ``callable(**kwargs)`` must
return an object implementing :class:`cgflow.core.system.System` (see docs/systems.md).  Problems are
reported in one line (:class:`SystemFactoryError`) before anything is written.

A run started from Python with ``ActiveLearningRun(cfg, run_dir, system=obj)`` records
``factory: null`` and the object's class; such a run is resumed from Python by passing the object again.
"""

from __future__ import annotations

import importlib
import os
import sys
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from cgflow.core.system import SystemProtocolError, with_defaults

__all__ = ["PythonSystemConfig", "SystemFactoryError", "build_python_system"]


class SystemFactoryError(ValueError):
    """A factory that cannot be imported or called, or returns no valid System."""


class PythonSystemConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    name: Literal["python"] = Field(default="python", description="the system: made by a Python factory")
    factory: str | None = Field(default=None, description='"module:callable" (dotted module path, callable name); '
                                "null for a system given as a Python object")
    kwargs: dict[str, Any] = Field(default_factory=dict, description="keyword arguments of the factory")
    object: str | None = Field(default=None, description="informative: the class of a system given as a Python object")

    @field_validator("factory")
    @classmethod
    def _form(cls, v):
        if v is not None:
            mod, sep, attr = v.partition(":")
            if not sep or not mod.strip() or not attr.strip():
                raise ValueError(f"factory must look like 'module:callable', got {v!r}")
        return v


def _import(module: str):
    cwd = os.getcwd()
    added = cwd not in sys.path
    if added:
        sys.path.insert(0, cwd)
    try:
        return importlib.import_module(module)
    finally:
        if added and cwd in sys.path:
            sys.path.remove(cwd)


def build_python_system(cfg: PythonSystemConfig, device="cpu"):
    """Import and call the factory; return the checked system with its defaults
    (:func:`cgflow.core.system.with_defaults`).  The factory chooses its own device (``device`` is unused)."""
    if cfg.factory is None:
        raise SystemFactoryError(f"this run's system was given as a Python object ({cfg.object or 'unknown class'}), "
                                 f"not a factory: resume it from Python with ActiveLearningRun(None, run_dir, "
                                 f"resume=True, system=obj), or set system.factory")
    module_name, _, attr = cfg.factory.partition(":")
    try:
        module = _import(module_name.strip())
    except ModuleNotFoundError as err:
        raise SystemFactoryError(f"system.factory {cfg.factory!r}: cannot import module {err.name!r} (it is looked "
                                 f"for in the working directory {os.getcwd()} and on PYTHONPATH)") from None
    except Exception as err:  # an error inside the user's module
        raise SystemFactoryError(f"system.factory {cfg.factory!r}: importing {module_name} failed: "
                                 f"{type(err).__name__}: {err}") from None
    make = getattr(module, attr.strip(), None)
    if make is None:
        raise SystemFactoryError(f"system.factory {cfg.factory!r}: module {module_name} has no attribute {attr!r}")
    if not callable(make):
        raise SystemFactoryError(f"system.factory {cfg.factory!r}: {attr} is not callable")
    try:
        obj = make(**cfg.kwargs)
    except Exception as err:  # the user's code: one line, whatever it raised
        first = str(err).splitlines()[0] if str(err) else ""
        raise SystemFactoryError(f"system.factory {cfg.factory!r} with kwargs {cfg.kwargs} failed: "
                                 f"{type(err).__name__}: {first}") from None
    try:
        return with_defaults(obj, where=f"system.factory {cfg.factory!r} returned {type(obj).__name__}, which")
    except SystemProtocolError as err:
        raise SystemFactoryError(str(err)) from None
