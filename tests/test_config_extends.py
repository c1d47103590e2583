"""A YAML names what it extends and overrides only what it lists; an empty or
incomplete YAML is refused; syntax errors give line and column."""


import pytest

from cgflow.config import ConfigError, dump_config, load_config
from conftest import run_cgflow


def test_extends_a_preset_overrides_only_listed_keys(tmp_path):
    p = tmp_path / "mine.yaml"
    p.write_text("extends: mb\nensemble: {epochs: 7}\nstopping: {max_iterations: 3}\n")
    cfg = load_config(str(p))
    assert cfg == load_config("mb", ["ensemble.epochs=7", "stopping.max_iterations=3"])
    # everything else is mb, not the built-in defaults
    assert cfg.ensemble.activation == "tanh" and cfg.sampler.threshold == 0.25


def test_extends_chains_through_files_relative_to_the_file(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "base.yaml").write_text("extends: mb\nensemble: {epochs: 9, lr: 0.02}\n")
    top = tmp_path / "top.yaml"
    top.write_text("extends: sub/base.yaml\nensemble: {lr: 0.03}\nseed: 5\n")
    cfg = load_config(str(top), ["sampler.threshold=0.3"])
    assert (cfg.ensemble.epochs, cfg.ensemble.lr, cfg.seed, cfg.sampler.threshold) == (9, 0.03, 5, 0.3)
    assert cfg.flow == load_config("mb").flow


def test_extends_loop_and_bad_parent_are_errors(tmp_path):
    a, b = tmp_path / "a.yaml", tmp_path / "b.yaml"
    a.write_text("extends: b.yaml\n")
    b.write_text("extends: a.yaml\n")
    with pytest.raises(ConfigError, match="loops"):
        load_config(str(a))
    c = tmp_path / "c.yaml"
    c.write_text("extends: no-such-preset\n")
    with pytest.raises(ConfigError, match="neither a config file nor a preset"):
        load_config(str(c))


@pytest.mark.parametrize("text", ["", "\n# only a comment\n"])
def test_empty_yaml_is_an_error(tmp_path, text):
    p = tmp_path / "empty.yaml"
    p.write_text(text)
    with pytest.raises(ConfigError, match="empty.*extends: mb"):
        load_config(str(p))


def test_incomplete_yaml_without_extends_names_missing_sections(tmp_path):
    p = tmp_path / "partial.yaml"
    p.write_text("system: {name: muller-brown}\nensemble: {epochs: 5}\n")
    with pytest.raises(ConfigError) as err:
        load_config(str(p))
    msg = str(err.value)
    for section in ("flow", "by_example", "by_energy", "labels", "sampler", "acquisition", "stopping"):
        assert section in msg
    assert "extends" in msg and "\n" not in msg


def test_complete_yaml_without_extends_is_accepted(tmp_path):
    p = tmp_path / "full.yaml"
    p.write_text(dump_config(load_config("mb")))
    assert load_config(str(p)) == load_config("mb")


def test_yaml_syntax_error_gives_line_and_column(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("extends: mb\nensemble:\n  epochs: [1, 2\n  lr: 3\n")
    with pytest.raises(ConfigError, match=r"line \d+, column \d+") as err:
        load_config(str(p))
    assert "\n" not in str(err.value)


def test_cli_refuses_empty_yaml_with_one_line_and_writes_nothing(tmp_path):
    (tmp_path / "empty.yaml").write_text("")
    res = run_cgflow("run", "empty.yaml", "--out", "r", cwd=tmp_path, timeout=300)
    assert res.returncode != 0
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and "extends" in lines[0]
    assert not (tmp_path / "r").exists()
