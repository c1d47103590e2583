"""Loading a run configuration: presets shipped in the package, YAML files with ``extends:``,
``--set key.sub=value`` overrides, validation into :class:`~cgflow.config.schema.RunConfig` with
one-line :class:`ConfigError` messages, and the differences between two configs (for --resume).

A child config that replaces the parent's system (``extends:`` plus a ``system:`` naming another system)
does not inherit the parent's keys with a per-system default (``sampler.start``, ``metrics.pairs``): they
are reset to null (the new system's default) with a :class:`ConfigNote` unless the child lists them.  The
other system-dependent values are checked once the system is built
(:func:`cgflow.config.system_checks.check_against_system`)."""

from __future__ import annotations

import warnings
from importlib import resources
from pathlib import Path

import yaml
from pydantic import ValidationError

from cgflow.config.schema import ConfigError, RunConfig
from cgflow.config.system_checks import SYSTEM_DEFAULTED_KEYS


class ConfigNote(UserWarning):
    """A note about how a config was resolved (e.g. a key reset because ``extends:`` changed the
    system); the CLI prints it as ``note: ...`` on stderr."""


# --- loading -----------------------------------------------------------------------------------
def preset_names() -> list[str]:
    return sorted(p.name[:-5] for p in resources.files("cgflow.config.presets").iterdir() if p.name.endswith(".yaml"))


def preset_text(name: str) -> str:
    return (resources.files("cgflow.config.presets") / f"{name}.yaml").read_text()


def format_validation_error(err: ValidationError) -> str:
    first = err.errors()[0]
    loc = ".".join(str(x) for x in first["loc"] if x not in ("muller-brown", "molecule", "python")) or "config"
    msg = first["msg"]
    if first["type"] == "extra_forbidden":
        msg = "unknown key"
    extra = f" (and {err.error_count() - 1} more problem(s))" if err.error_count() > 1 else ""
    return f"{loc}: {msg}{extra}"


def validate_config(data: dict) -> RunConfig:
    try:
        return RunConfig.model_validate(data)
    except ValidationError as err:
        raise ConfigError(f"invalid config: {format_validation_error(err)}") from None


def parse_override(item: str) -> tuple[list[str], object]:
    """'a.b=value' -> (['a', 'b'], value parsed as YAML)."""
    if "=" not in item:
        raise ConfigError(f"--set {item!r}: expected key=value, e.g. ensemble.epochs=200")
    key, value = item.split("=", 1)
    if not key.strip():
        raise ConfigError(f"--set {item!r}: empty key")
    try:
        parsed = yaml.safe_load(value) if value != "" else ""
    except yaml.YAMLError:
        parsed = value
    return key.strip().split("."), parsed


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    for item in overrides:
        keys, value = parse_override(item)
        node = data
        for k in keys[:-1]:
            if not isinstance(node.get(k, {}), dict):
                raise ConfigError(f"--set {item!r}: {k} is not a section")
            node = node.setdefault(k, {})
        node[keys[-1]] = value
    return data


# a child config's system section that changes one of these describes another system: it replaces the
# parent's system section instead of merging into it (so e.g. a new factory does not inherit the old kwargs)
SYSTEM_SOURCE_KEYS = ("name", "factory", "preset", "sequence", "prmtop", "pdb")
BASE_SECTIONS = ("system", "flow", "by_example", "by_energy", "labels", "ensemble", "acquisition")
MODE_SECTIONS = {"active_learning": ("sampler", "stopping"), "grid": ("grid",)}
EXTENDS_HINT = "start it with `extends: mb` (a preset name or a YAML path) and list only the keys to change"


def _yaml_error(source: str, err: yaml.YAMLError) -> ConfigError:
    """A one-line parse error with the line and column (1-based) where YAML found the problem."""
    mark = getattr(err, "problem_mark", None) or getattr(err, "context_mark", None)
    problem = getattr(err, "problem", None) or str(err).splitlines()[0]
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    return ConfigError(f"cannot parse {source}{where}: {problem}")


class _UniqueKeyLoader(yaml.SafeLoader):
    """safe_load that refuses a key given twice in one mapping (PyYAML keeps the last one silently)."""


def _unique_mapping(loader: yaml.SafeLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    seen: set = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise ConfigError(f"duplicate key {key!r} at line {key_node.start_mark.line + 1}: each key may appear "
                              f"once per section (merge the two)")
        seen.add(key)
    return loader.construct_mapping(node, deep=deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _unique_mapping)


def parse_yaml(text: str, source: str) -> dict:
    try:
        data = yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 (a SafeLoader subclass)
    except ConfigError as err:
        raise ConfigError(f"{source}: {err}") from None
    except yaml.YAMLError as err:
        raise _yaml_error(source, err) from None
    if data is None:
        raise ConfigError(f"{source} is empty; {EXTENDS_HINT}")
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: the top level must be a mapping of keys")
    return data


def deep_merge(base: dict, over: dict) -> dict:
    """``base`` with ``over`` layered on top: mappings merge key by key, anything else replaces."""
    out = dict(base)
    for k, v in over.items():
        out[k] = deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def missing_sections(data: dict) -> list[str]:
    """The sections a config without ``extends`` must list (all of the method's, for its mode)."""
    mode = data.get("mode", "active_learning")
    need = BASE_SECTIONS + MODE_SECTIONS.get(mode if isinstance(mode, str) else "", ())
    return [k for k in need if k not in data]


def resolve_source(preset_or_path: str, relative_to: Path | None = None) -> tuple[str, str, Path | None]:
    """(text, name for messages, the file's path or None for a preset)."""
    path = Path(preset_or_path).expanduser()
    if relative_to is not None and not path.is_absolute() and (relative_to / path).exists():
        path = relative_to / path
    if path.suffix in (".yaml", ".yml") or path.exists():
        if not path.is_file():
            raise ConfigError(f"config file not found: {preset_or_path}")
        return path.read_text(), str(preset_or_path), path.resolve()
    if preset_or_path in preset_names():
        return preset_text(preset_or_path), f"preset {preset_or_path}", None
    raise ConfigError(f"{preset_or_path!r} is neither a config file nor a preset "
                      f"(presets: {', '.join(preset_names())})")


def read_config_source(preset_or_path: str, _seen: tuple = (), _relative_to: Path | None = None) -> dict:
    """Load a YAML file, or a preset by name, resolving ``extends``.

    A file with ``extends: NAME`` (a preset, or a YAML path relative to the file) starts from that
    config and overrides only the keys it lists (sections merge key by key; a ``system`` section
    naming another system, i.e. another value of a key in :data:`SYSTEM_SOURCE_KEYS`, replaces the
    parent's); chains are allowed.  When the system is replaced, the parent's keys with a per-system
    default (:data:`~cgflow.config.system_checks.SYSTEM_DEFAULTED_KEYS`: ``sampler.start``,
    ``metrics.pairs``) that the child does not list are reset to that default (null: the new system's
    ``default_mc_start``, its pairs) with a :class:`ConfigNote`; every other system-dependent value
    (step sizes, radii, grid sizes) is checked against the built system before a run writes anything
    (:func:`~cgflow.config.system_checks.check_against_system`).
    A file without ``extends`` must list every section of the method (ConfigError naming the missing
    ones), and an empty file is an error: nothing silently falls back to built-in defaults.
    """
    text, name, path = resolve_source(preset_or_path, _relative_to)
    ident = str(path) if path is not None else f"preset:{preset_or_path}"
    if ident in _seen:
        raise ConfigError(f"{name}: `extends` loops back to itself")
    data = parse_yaml(text, name)
    if "extends" in data:
        parent = data.pop("extends")
        if not isinstance(parent, str) or not parent.strip():
            raise ConfigError(f"{name}: extends must be a preset name or a YAML path, got {parent!r}")
        base = read_config_source(parent.strip(), _seen + (ident,), path.parent if path is not None else None)
        sys_over, sys_base = data.get("system"), base.get("system", {})
        if isinstance(sys_over, dict) and isinstance(sys_base, dict) and any(
                k in sys_over and sys_over[k] != sys_base.get(k) for k in SYSTEM_SOURCE_KEYS):
            base = {**base, "system": {}}  # another system (kind or source) replaces the parent's system section
            base = _reset_system_defaulted(base, data, name, parent.strip())
        return deep_merge(base, data)
    missing = missing_sections(data)
    if missing:
        raise ConfigError(f"{name} lacks the section(s) {', '.join(missing)}; either list them or {EXTENDS_HINT}")
    return data


def _reset_system_defaulted(base: dict, child: dict, name: str, parent: str) -> dict:
    """``base`` without the keys of :data:`SYSTEM_DEFAULTED_KEYS` that it sets and ``child`` does not
    list: they were set for the parent's system, and the child describes another one.  Each reset is
    announced with a :class:`ConfigNote`."""
    out = dict(base)
    for key in SYSTEM_DEFAULTED_KEYS:
        section, sub = key.split(".")
        sec = out.get(section)
        if not isinstance(sec, dict) or sec.get(sub) is None:
            continue
        if isinstance(child.get(section), dict) and sub in child[section]:
            continue  # the child chose it for its own system
        warnings.warn(ConfigNote(f"{name} replaces the system of {parent}: {key} {sec[sub]!r}, set for that system, "
                                 f"is reset to the new system's default (list {key} in {name} to choose one)"),
                      stacklevel=2)
        out[section] = {k: v for k, v in sec.items() if k != sub}
    return out


def load_config(preset_or_path: str, overrides: list[str] = (), seed: int | None = None) -> RunConfig:
    data = apply_overrides(read_config_source(preset_or_path), list(overrides))
    if seed is not None:
        data["seed"] = seed
    return validate_config(data)


def dump_config(cfg: RunConfig) -> str:
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def config_differences(saved: RunConfig, given: RunConfig) -> list[str]:
    """Dotted keys whose values differ, e.g. ``['ensemble.epochs']`` (a changed system kind shows as
    ``system.name`` and its keys)."""
    a, b = _flatten(saved.model_dump(mode="json")), _flatten(given.model_dump(mode="json"))
    return [k for k in list(a) + [k for k in b if k not in a] if a.get(k, "<absent>") != b.get(k, "<absent>")]


def describe_differences(saved: RunConfig, given: RunConfig, keys: list[str], limit: int = 4) -> str:
    """'ensemble.epochs (saved 1000, given 300), ...' for the first ``limit`` keys."""
    a, b = _flatten(saved.model_dump(mode="json")), _flatten(given.model_dump(mode="json"))
    parts = [f"{k} (saved {a.get(k, '<absent>')!r}, given {b.get(k, '<absent>')!r})" for k in keys[:limit]]
    more = f" and {len(keys) - limit} more" if len(keys) > limit else ""
    return ", ".join(parts) + more
