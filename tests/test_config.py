from pathlib import Path

import pytest

from cgflow.config import ConfigError, RunConfig, dump_config, load_config, preset_names, validate_config


def test_presets_load_and_roundtrip(tmp_path):
    assert {"mb", "mb-paper"} <= set(preset_names())
    for name in preset_names():
        cfg = load_config(name)
        path = tmp_path / f"{name}.yaml"
        path.write_text(dump_config(cfg))
        assert load_config(str(path)) == cfg


@pytest.mark.parametrize("overrides, key", [
    (["ensemble.epohcs=3"], "ensemble.epohcs"),
    (["ensemble.epochs=abc"], "ensemble.epochs"),
    (["sampler.step_size=-1"], "sampler.step_size"),
    (["system.betaa=0.2"], "system.betaa"),
    (["flow.kind=spline9"], "flow.kind"),
    (["nonsense=1"], "nonsense"),
])
def test_bad_keys_and_types_are_named(overrides, key):
    with pytest.raises(ConfigError) as err:
        load_config("mb", overrides)
    msg = str(err.value)
    assert key in msg and "\n" not in msg


def test_cross_field_validation():
    with pytest.raises(ConfigError, match="n_select"):
        load_config("mb", ["acquisition.n_select=5", "sampler.n_find=2"])


def test_overrides_and_seed_apply():
    cfg = load_config("mb", ["ensemble.epochs=7", "sampler.start=[-1.5]"], seed=42)
    assert cfg.ensemble.epochs == 7 and cfg.sampler.start == [-1.5] and cfg.seed == 42


def test_missing_file_and_unknown_preset():
    with pytest.raises(ConfigError, match="not found"):
        load_config("does/not/exist.yaml")
    with pytest.raises(ConfigError, match="neither a config file nor a preset"):
        load_config("no-such-preset")


def test_defaults_validate():
    assert isinstance(validate_config({}), RunConfig)


EXAMPLE_CONFIGS = sorted((Path(__file__).resolve().parents[1] / "examples").glob("*.yaml"))


@pytest.mark.parametrize("name", preset_names())
def test_every_preset_validates_and_roundtrips(name, tmp_path):
    cfg = load_config(name)
    path = tmp_path / f"{name}.yaml"
    path.write_text(dump_config(cfg))
    assert load_config(str(path)) == cfg


@pytest.mark.parametrize("path", [p for p in EXAMPLE_CONFIGS if p.name != "slurm-sweep.yaml"], ids=lambda p: p.name)
def test_every_example_run_config_validates_and_builds_its_system(path, monkeypatch):
    from cgflow.systems import build_system

    monkeypatch.syspath_prepend(str(path.parent))  # the example's factory module lives beside it
    cfg = load_config(str(path))
    system = build_system(cfg.system, device="cpu")
    assert system.cg_dim == len(system.cg_names) and len(system.cg_domain) == system.cg_dim


def test_the_example_sweep_spec_validates():
    from cgflow.learning.sweep import load_sweep_spec

    spec = [p for p in EXAMPLE_CONFIGS if p.name == "slurm-sweep.yaml"]
    assert spec, "examples/slurm-sweep.yaml is gone"
    load_sweep_spec(spec[0])
