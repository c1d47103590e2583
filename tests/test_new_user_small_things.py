"""Smaller things a new user hit (issue "What a new user hit", point 5): a key given twice in one YAML
section is refused instead of silently replaced; `cgflow plot` on a folder that is no run says so."""

import pytest

from cgflow.config import ConfigError
from cgflow.config.loading import parse_yaml
from conftest import run_cgflow


def test_a_duplicate_top_level_section_is_refused_with_its_line():
    with pytest.raises(ConfigError, match=r"my.yaml: duplicate key 'ensemble' at line 3"):
        parse_yaml("extends: mb\nensemble: {epochs: 10}\nensemble: {hidden: [8]}\n", "my.yaml")


def test_a_duplicate_nested_key_is_refused():
    with pytest.raises(ConfigError, match="duplicate key 'epochs'"):
        parse_yaml("extends: mb\nensemble:\n  epochs: 10\n  epochs: 20\n", "my.yaml")


def test_distinct_keys_still_parse():
    assert parse_yaml("extends: mb\nensemble: {epochs: 10}\nstopping: {max_iterations: 2}\n", "x") == {
        "extends": "mb", "ensemble": {"epochs": 10}, "stopping": {"max_iterations": 2}}


def test_cli_refuses_a_yaml_with_a_duplicate_section(tmp_path):
    (tmp_path / "my.yaml").write_text("extends: mb\nensemble: {epochs: 10}\nensemble: {epochs: 20}\n")
    res = run_cgflow("run", "my.yaml", "--out", "r", cwd=tmp_path)
    assert res.returncode == 2 and "duplicate key 'ensemble'" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1 and not (tmp_path / "r").exists()


def test_plot_on_a_folder_that_is_no_run_says_so(tmp_path):
    res = run_cgflow("plot", str(tmp_path))
    assert res.returncode == 2 and "is not a cgflow run directory" in res.stderr
