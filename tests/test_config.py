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
