"""Every config key carries a description with its unit, and `cgflow presets NAME --describe` prints them."""

import json
import typing

import pytest
import yaml
from pydantic import BaseModel

from cgflow.config import RunConfig, load_config, preset_names, preset_text
from cgflow.config.describe import describe_config, format_description
from conftest import run_cgflow

# words that name a unit (or say that a number has none); every numeric key's description names one
UNIT_WORDS = ("count", "kT", "CG units", "fraction", "(s)", "(ps)", "(K)", "nats", "dimensionless",
              "radians", "units", "per kT", "kT per", "0-based")
NO_UNIT = {"RunConfig.seed"}  # an identifier, not a quantity


def _models_in(annotation) -> list[type[BaseModel]]:
    """The pydantic model classes inside a field's annotation (through Optional, unions, lists, Annotated)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    out = []
    for arg in typing.get_args(annotation):
        out.extend(_models_in(arg))
    return out


def _all_models(root: type[BaseModel]) -> list[type[BaseModel]]:
    seen, todo = [], [root]
    while todo:
        model = todo.pop()
        if model in seen:
            continue
        seen.append(model)
        for field in model.model_fields.values():
            todo.extend(_models_in(field.annotation))
    return seen


def _is_numeric(annotation) -> bool:
    """int or float, also inside Optional, unions, lists and Annotated (bool is no number here)."""
    if annotation in (int, float):
        return True
    if isinstance(annotation, type):
        return False
    return any(_is_numeric(a) for a in typing.get_args(annotation))


def test_the_walk_reaches_every_config_model():
    names = {m.__name__ for m in _all_models(RunConfig)}
    assert {"RunConfig", "FlowConfig", "ByEnergyConfig", "EnsembleConfig", "SamplerConfig", "StoppingConfig",
            "MetricsConfig", "MullerBrownConfig", "MoleculeConfig", "ExecutionConfig",
            "PythonSystemConfig"} <= names


@pytest.mark.parametrize("model", _all_models(RunConfig), ids=lambda m: m.__name__)
def test_every_key_has_a_description(model):
    missing = [name for name, f in model.model_fields.items() if not (f.description or "").strip()]
    assert not missing, f"{model.__name__}: keys without Field(description=...): {missing}"


@pytest.mark.parametrize("model", _all_models(RunConfig), ids=lambda m: m.__name__)
def test_every_numeric_key_names_its_unit(model):
    bad = [name for name, f in model.model_fields.items()
           if f"{model.__name__}.{name}" not in NO_UNIT and _is_numeric(f.annotation)
           and not any(w in (f.description or "") for w in UNIT_WORDS)]
    assert not bad, f"{model.__name__}: numeric keys whose description names no unit: {bad}"


def _parse(text: str):
    """A printed value back to data: JSON for numbers, lists, booleans and null; else the string itself."""
    try:
        return json.loads(text)
    except ValueError:
        return text


def _leaves(d: dict, prefix=""):
    for k, v in d.items():
        if isinstance(v, dict) and v:
            yield from _leaves(v, f"{prefix}{k}.")
        else:
            yield f"{prefix}{k}", v


@pytest.mark.parametrize("name", preset_names())
def test_describe_lists_every_key_with_the_presets_value(name):
    cfg = load_config(name)
    rows = describe_config(cfg)
    by_key = {r.key: r for r in rows if not r.is_section}
    dumped = dict(_leaves(cfg.model_dump(mode="json", by_alias=True)))
    assert set(by_key) == set(dumped)
    assert all(r.description for r in rows)
    # the values are the preset's own, not the defaults (those the preset file sets, for a file without extends)
    data = yaml.safe_load(preset_text(name))
    if "extends" not in data:
        for key, value in _leaves(data):
            if key in by_key:
                assert _parse(by_key[key].value) == value, key


@pytest.mark.slow  # fast lane: over 3 s (a subprocess or a tiny run)
def test_presets_describe_prints_keys_values_and_descriptions():
    res = run_cgflow("presets", "mb", "--describe", timeout=300)
    assert res.returncode == 0, res.stderr
    rows = describe_config(load_config("mb"))
    assert res.stdout.endswith(format_description(rows))
    flat = " ".join(res.stdout.split())
    for r in rows:
        if not r.is_section:
            assert f"\n{r.key}: {r.value}\n" in res.stdout
        assert " ".join(r.description.split()) in flat
    assert "ensemble.activation: tanh" in res.stdout  # the preset's value (the default is sigmoid)
    # without --describe: the YAML as shipped
    plain = run_cgflow("presets", "mb", timeout=300)
    assert plain.returncode == 0 and plain.stdout == preset_text("mb")


def test_describe_without_a_preset_is_a_one_line_error():
    res = run_cgflow("presets", "--describe", timeout=300)
    assert res.returncode == 2
    assert len(res.stderr.strip().splitlines()) == 1 and "preset name" in res.stderr
