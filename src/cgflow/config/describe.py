"""Every key of a run configuration with its value and its description (``cgflow presets NAME --describe``).

The descriptions are the ``Field(description=...)`` of the schema (:mod:`cgflow.config.schema`, the
system's config model); each names its unit.  Sections are walked recursively, in the schema's order."""

from __future__ import annotations

import json
import textwrap
from dataclasses import dataclass

from pydantic import BaseModel
from pydantic_core import to_jsonable_python

__all__ = ["KeyDescription", "describe_config", "format_description"]


@dataclass(frozen=True)
class KeyDescription:
    """One line of the description: a dotted key, its value (YAML-like text; empty for a section
    header) and the schema's description."""

    key: str
    value: str
    description: str
    is_section: bool = False


def _value_text(value) -> str:
    if isinstance(value, str):
        return value
    return json.dumps(to_jsonable_python(value))


def describe_config(model: BaseModel, prefix: str = "") -> list[KeyDescription]:
    """The keys of ``model`` (a :class:`~cgflow.config.schema.RunConfig` or any of its sections): its
    own keys, then each section depth first (the section's header, then its keys).  A section that is null (e.g. ``system.execution``) is a key
    with the value null."""
    keys, sections = [], []
    for name, field in type(model).model_fields.items():
        key = f"{prefix}{field.alias or name}"
        value = getattr(model, name)
        description = field.description or ""
        if isinstance(value, BaseModel):
            sections.append(KeyDescription(key, "", description, is_section=True))
            sections.extend(describe_config(value, f"{key}."))
        else:
            keys.append(KeyDescription(key, _value_text(value), description))
    return keys + sections


def format_description(rows: list[KeyDescription], width: int = 100) -> str:
    """``key: value`` lines, each followed by its description indented below it; section headers as
    ``[key] description``."""
    lines = []
    for r in rows:
        if r.is_section:
            if lines:
                lines.append("")
            lines.append(f"[{r.key}] {r.description}")
            continue
        lines.append(f"{r.key}: {r.value}")
        lines.extend(textwrap.wrap(r.description, width=width, initial_indent="    ", subsequent_indent="    ",
                                   break_on_hyphens=False))
    return "\n".join(lines) + "\n"
