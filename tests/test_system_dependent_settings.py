"""Issue 18.1: settings that depend on the system, inherited through ``extends:`` or given by ``--set``,
are checked against the system actually built (one-line error, nothing written), and a child config
that replaces the system does not keep the parent's system-specific keys (they are reset, with a note)."""

import shutil
import sys
import warnings
from pathlib import Path

import pytest

from cgflow.config import ConfigError, ConfigNote, load_config
from cgflow.config.system_checks import MAX_GRID_POINTS, system_problems
from cgflow.core.system import with_defaults
from cgflow.learning.run import ActiveLearningRun

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from conftest import run_cgflow  # noqa: E402
from double_well_system import DOMAIN, DoubleWellSystem  # noqa: E402

FAST = ["progress=false", "by_example.epochs=1", "by_energy.epochs_first=1", "ensemble.epochs=5",
        "stopping.max_iterations=1"]
DW_YAML = 'extends: mb\nsystem: {name: python, factory: "double_well_system:make_system", kwargs: {}}\n'


def _dw_dir(tmp_path, text=DW_YAML):
    """A folder with the double-well module and a config extending mb (as README's example does)."""
    shutil.copy(HERE / "double_well_system.py", tmp_path / "double_well_system.py")
    (tmp_path / "dw.yaml").write_text(text)
    return tmp_path


def test_mb_sets_a_start_that_lies_outside_the_double_well():
    """The premise: mb's sampler.start is outside the double well's domain."""
    start = load_config("mb").sampler.start
    assert start is not None and not DOMAIN[0] <= start[0] <= DOMAIN[1]


def test_inherited_start_is_reset_to_the_new_systems_default_with_a_note(tmp_path, monkeypatch):
    d = _dw_dir(tmp_path)
    monkeypatch.chdir(d)
    with pytest.warns(ConfigNote, match=r"sampler\.start \[-2\.0\].*reset"):
        cfg = load_config(str(d / "dw.yaml"), FAST)
    assert cfg.sampler.start is None
    run = ActiveLearningRun(cfg, d / "run")
    starts = run._mc_starts()
    assert starts.shape[1] == 1 and bool(((starts >= DOMAIN[0]) & (starts <= DOMAIN[1])).all())
    assert tuple(starts[0].tolist()) == tuple(run.system.default_mc_start)


def test_a_start_the_child_lists_is_kept_and_checked(tmp_path, monkeypatch):
    d = _dw_dir(tmp_path, DW_YAML + "sampler: {start: [-0.9]}\n")
    monkeypatch.chdir(d)
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConfigNote)  # the child chose it: no reset, no note
        cfg = load_config(str(d / "dw.yaml"), FAST)
    assert cfg.sampler.start == [-0.9]
    bad = load_config(str(d / "dw.yaml"), FAST + ["sampler.start=[-2.0]"])
    with pytest.raises(ConfigError, match=r"sampler\.start \[-2\.0\]: s = -2 lies outside the CG domain"):
        ActiveLearningRun(bad, d / "run")
    assert not (d / "run").exists()


def test_cli_set_start_outside_the_domain_is_one_line_exit_2_nothing_written(tmp_path):
    out = tmp_path / "run"
    res = run_cgflow("run", "mb", "--out", str(out), "--no-plots", "--set", "sampler.start=[5.0]",
                     *[f"--set={s}" for s in FAST], cwd=tmp_path)
    assert res.returncode == 2, res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "sampler.start [5.0]" in lines[0] and "outside the CG domain [-2.5, 1.1]" in lines[0]
    assert not out.exists()


def test_cli_double_well_note_then_refusal_of_a_too_large_step(tmp_path):
    d = _dw_dir(tmp_path)
    res = run_cgflow("run", "dw.yaml", "--out", "run", "--no-plots", "--set", "sampler.step_size=2.5",
                     *[f"--set={s}" for s in FAST], cwd=d)
    assert res.returncode == 2, res.stderr
    lines = res.stderr.strip().splitlines()
    assert lines[0].startswith("note: ") and "sampler.start" in lines[0]
    assert lines[-1].startswith("error: ") and "sampler.step_size 2.5" in lines[-1]
    assert not (d / "run").exists()


@pytest.mark.parametrize("override, key", [
    ("sampler.start=[0.0, 1.0]", "sampler.start has 2 value"),
    ("sampler.step_size=1.9", "sampler.step_size"),
    ("acquisition.spread_radius=2.0", "acquisition.spread_radius"),
])
def test_each_system_dependent_key_is_checked(override, key):
    cfg = load_config("mb", [override])
    assert any(key in p for p in system_problems(cfg, with_defaults(DoubleWellSystem())))
    assert system_problems(load_config("mb", ["sampler.start=[0.5]"]), with_defaults(DoubleWellSystem())) == []


def test_grid_points_limit():
    cfg = load_config("aldp-grid", [f"grid.points_per_dim={int(MAX_GRID_POINTS ** 0.5) + 1}"])
    sys2 = DoubleWellSystem()
    assert not any("grid.points_per_dim" in p for p in system_problems(cfg, sys2))  # 1-D: few points
    sys2.cg_dim, sys2.cg_domain, sys2.cg_periodic, sys2.cg_names = 2, (DOMAIN, DOMAIN), (False, False), ("a", "b")
    assert any("grid.points_per_dim" in p for p in system_problems(cfg, sys2))
