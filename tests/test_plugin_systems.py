"""Plug-in systems: a System from Python (object) or YAML (factory), bad factories,
and CG spaces of 1-4 dimensions on the analytic torus system of examples/torus_system.py."""

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from cgflow.config import load_config
from cgflow.core.system import SystemProtocolError, with_defaults
from cgflow.learning.run import ActiveLearningRun

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
sys.path.insert(0, str(EXAMPLES))
from torus_system import TorusSystem, exact_pmf_kT  # noqa: E402

from conftest import run_cgflow

# small, fast settings on top of the example config (itself extending aldp-fast)
FAST = ["ensemble.epochs=200", "ensemble.warm_epochs=60", "by_example.epochs=5", "by_energy.epochs_first=3",
        "by_energy.epochs_later=2", "metrics.n_integration_points=64", "metrics.grid_points=4000",
        "acquisition.n_space_filling_seed_points=128", "acquisition.n_seed_points=50", "progress=false"]


def torus_cfg(cg_dim, n_bins=20, extra=()):
    return load_config(str(EXAMPLES / "torus-4d.yaml"),
                       [*FAST, f"system.kwargs.cg_dim={cg_dim}", f"system.kwargs.n_bins={n_bins}", *extra])


def cgflow(*args, cwd):
    return run_cgflow(*args, cwd=cwd)


@pytest.mark.slow
def test_exact_pmf_of_the_example_matches_numerical_integration():
    from scipy import integrate

    sysm = TorusSystem(cg_dim=3)
    for s0 in (np.array([0.3, -1.0, 2.0]), np.array([-2.5, 0.1, -0.7])):
        val = integrate.dblquad(lambda t, y: np.exp(-sysm.reduced_energy(torch.tensor([[*s0, y, t]])).item()),
                                -4, 4, -np.pi, np.pi, epsabs=1e-12, epsrel=1e-10)[0]
        assert -np.log(val) == pytest.approx(exact_pmf_kT(s0), abs=1e-8)


@pytest.mark.slow
def test_python_object_route_runs_and_resumes(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = torus_cfg(2, extra=["stopping.max_iterations=2"])
    run = ActiveLearningRun(cfg, tmp_path / "run", system=TorusSystem(cg_dim=2, n_bins=20))
    row = run.step()
    assert np.isfinite(row["forward_kld"]) and row["forward_kld"] < 0.05
    saved = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())["system"]
    assert saved == {"name": "python", "factory": None, "kwargs": {}, "object": "torus_system.TorusSystem"}
    # the CLI cannot rebuild an object-made system: a one-line error naming the Python route
    res = cgflow("run", "--resume", "--out", str(tmp_path / "run"), cwd=tmp_path)
    assert res.returncode != 0 and "resume=True, system=obj" in res.stderr.strip().splitlines()[-1]
    from cgflow.core.run_directory import RunDirectoryError

    with pytest.raises(RunDirectoryError, match="CG points have 2 dimension"):  # another object than the run's
        ActiveLearningRun(None, tmp_path / "run", resume=True, system=TorusSystem(cg_dim=3, n_bins=12))
    run2 = ActiveLearningRun(None, tmp_path / "run", resume=True, system=TorusSystem(cg_dim=2, n_bins=20))
    assert run2.state.iteration == 2
    run2.run()
    assert run2.state.done and len(run2.state.rows) == 2


def _write(path, text):
    path.write_text(text)
    return path


BAD_MODULE = '''
import numpy as np
from torus_system import TorusSystem
def returns_dict(**kw):
    return {"cg_dim": 2}
def inconsistent(**kw):
    s = TorusSystem(cg_dim=2); s.cg_periodic = (True,); return s
def periodic_domain(**kw):
    s = TorusSystem(cg_dim=1); s.cg_domain = ((0.0, 2 * np.pi),); return s
def raises(**kw):
    raise RuntimeError("no licence for the quantum chemistry code" + chr(10) + "second line")
def strict(cg_dim):  # takes no other kwargs: a child config must not inherit its parent's
    return TorusSystem(cg_dim=cg_dim, n_bins=12)
'''


@pytest.mark.parametrize("factory, kwargs, needle", [
    ("no_such_module_xyz:make", {}, "cannot import module 'no_such_module_xyz' (it is looked for in the working directory"),
    ("badsys:nothing", {}, "module badsys has no attribute 'nothing'"),
    ("badsys:returns_dict", {}, "lacks name, cg_dim"),
    ("badsys:inconsistent", {}, "len(cg_periodic) = 1 but cg_dim = 2"),
    ("badsys:periodic_domain", {}, "its domain must be (-pi, pi)"),
    ("torus_system:make_system", {"colour": 3}, "unexpected keyword argument 'colour'"),
    ("badsys:raises", {}, "failed: RuntimeError: no licence for the quantum chemistry code"),
])
def test_bad_factory_one_line_error_nothing_written(tmp_path, monkeypatch, factory, kwargs, needle):
    from cgflow.config import ConfigError, validate_config
    from cgflow.systems.python_factory import SystemFactoryError

    _write(tmp_path / "badsys.py", BAD_MODULE)
    monkeypatch.chdir(tmp_path)
    cfg = torus_cfg(2)
    data = cfg.model_dump(mode="json")
    data["system"] = {"name": "python", "factory": factory, "kwargs": kwargs}
    with pytest.raises((SystemFactoryError, ConfigError)) as err:
        ActiveLearningRun(validate_config(data), tmp_path / "runs" / "x")
    assert needle in str(err.value) and "\n" not in str(err.value)
    assert not (tmp_path / "runs").exists()
    sys.modules.pop("badsys", None)


@pytest.mark.slow
def test_bad_factory_from_the_command_line(tmp_path):
    _write(tmp_path / "badsys.py", BAD_MODULE)
    (tmp_path / "torus_system.py").write_text((EXAMPLES / "torus_system.py").read_text())
    for factory, needle in (("badsys:inconsistent", "len(cg_periodic) = 1 but cg_dim = 2"),
                            ("not-a-factory", "factory must look like 'module:callable'")):
        spec = {"extends": str(EXAMPLES / "torus-4d.yaml"), "system": {"name": "python", "factory": factory}}
        _write(tmp_path / "my.yaml", yaml.safe_dump(spec))
        res = cgflow("run", "my.yaml", "--out", "runs/x", cwd=tmp_path)
        assert res.returncode != 0
        lines = [ln for ln in res.stderr.strip().splitlines() if ln.strip()]
        assert len(lines) == 1 and needle in lines[0], res.stderr
        assert not (tmp_path / "runs").exists()


def test_with_defaults_supplies_the_optional_parts():
    sysm = TorusSystem(cg_dim=3)
    w = with_defaults(sysm)
    assert w.default_mc_start == (0.0, 0.0, 0.0)
    s, x = torch.zeros(4, 3, dtype=torch.float64), torch.zeros(4, 2, dtype=torch.float64)
    assert w.valid(s, x).dtype == torch.bool and bool(w.valid(s, x).all())
    assert w.cg_names == ("s1", "s2", "s3") and w.name == "torus-3d"
    del sysm.cg_names
    assert with_defaults(sysm).cg_names == ("s1", "s2", "s3")
    sysm.fg_dim = 0
    with pytest.raises(SystemProtocolError, match="fg_dim must be a positive int"):
        with_defaults(sysm)


@pytest.mark.slow
@pytest.mark.parametrize("cg_dim, sampler", [(1, "mc"), (3, "mc"), (3, "grid_score")])
def test_cg_spaces_of_one_and_three_dimensions_run(tmp_path, monkeypatch, cg_dim, sampler):
    monkeypatch.chdir(EXAMPLES)
    extra = ["stopping.max_iterations=2", f"sampler.kind={sampler}", "sampler.n_chains=20", "sampler.threshold=0.01",
             "sampler.max_steps=200", "sampler.step_size=0.3"]
    run = ActiveLearningRun(torus_cfg(cg_dim, n_bins=16, extra=extra), tmp_path / "run")
    run.run()
    rows = run.state.rows
    assert len(rows) == 2 and rows[-1]["n_points_total"] > rows[0]["n_points_total"] - rows[0]["n_points_added"]
    assert np.isfinite(rows[-1]["forward_kld"]) and rows[-1]["forward_kld"] < 0.1
    if cg_dim == 3:
        assert {"forward_kld[s1|s2]", "forward_kld[s1|s3]", "forward_kld[s2|s3]"} <= set(rows[-1])
        with np.load(tmp_path / "run" / "pmf.npz") as z:
            assert z["marginal_pmf_kT"].shape == (3, 16, 16) and z["marginal_reference_prob"].shape == (3, 16, 16)
    from cgflow.analysis.plotting import plot_run

    assert all(p.is_file() for p in plot_run(tmp_path / "run"))


@pytest.mark.slow
def test_block_candidates_join_the_grid_score_draw(tmp_path, monkeypatch):
    """sampler.block_find of the n_find candidates come from block-resampled dataset points: each differs from a
    dataset point in at most block_size consecutive coordinates, and the run still reaches the exact marginals."""
    monkeypatch.chdir(EXAMPLES)
    extra = ["stopping.max_iterations=2", "sampler.kind=grid_score", "sampler.n_find=6", "sampler.block_pool=256",
             "sampler.block_find=4", "sampler.block_size=1", "sampler.n_chains=20"]
    run = ActiveLearningRun(torus_cfg(3, n_bins=16, extra=extra), tmp_path / "run")
    seen = []
    original = run._block_candidates

    def spy(f_min):
        pts = original(f_min)
        seen.append((pts.clone(), run.dataset.points.clone()))
        return pts

    monkeypatch.setattr(run, "_block_candidates", spy)
    run.run()
    assert len(seen) == 2
    for pts, existing in seen:
        assert pts.shape == (4, 3)
        differing = (pts[:, None, :] != existing[None, :, :]).sum(2).min(1).values  # vs the closest dataset point
        assert (differing <= 1).all(), differing
    assert run.state.rows[-1]["forward_kld"] < 0.1


def test_block_find_is_checked_against_n_find_pool_and_sampler():
    base = ["sampler.kind=grid_score", "sampler.n_find=5", "acquisition.n_select=5"]
    with pytest.raises(Exception, match="block_find"):
        load_config("mb", base + ["sampler.block_pool=100", "sampler.block_find=6"])
    with pytest.raises(Exception, match="block_find"):
        load_config("mb", base + ["sampler.block_pool=3", "sampler.block_find=4"])
    with pytest.raises(Exception, match="block_find needs sampler.kind: grid_score"):
        load_config("mb", ["sampler.kind=mc", "sampler.block_pool=100", "sampler.block_find=1"])
    assert load_config("mb", base + ["sampler.block_pool=100", "sampler.block_find=5"]).sampler.block_find == 5


@pytest.mark.slow
def test_four_dimensional_torus_reaches_its_exact_marginals_from_yaml(tmp_path):
    """The YAML factory route, end to end through the CLI: the mean forward KLD of the six 2-D marginals
    against the exact ones goes below 0.01 nats and every pair below 0.02 (a PMF without the FG terms,
    i.e. a flow that ignored its context, is at 0.11; a flat PMF at 0.9).  The last iteration's marginals are
    integrated with 8x the points (metrics.final_integration_points): its stated integration error drops."""
    sets = ["stopping.max_iterations=2", "system.kwargs.n_bins=20", "metrics.grid_points=4000", "progress=false",
            "metrics.final_integration_points=1024"]
    res = cgflow("run", "torus-4d.yaml", "--out", str(tmp_path / "run"), *sum((["--set", s] for s in sets), []),
                 cwd=EXAMPLES)
    assert res.returncode == 0, res.stderr
    import csv

    rows = list(csv.DictReader(open(tmp_path / "run" / "metrics.csv")))
    last = rows[-1]
    pair_klds = [float(v) for k, v in last.items() if k.startswith("forward_kld[")]
    assert len(pair_klds) == 6
    assert float(last["forward_kld"]) < 0.01 and max(pair_klds) < 0.025, last
    assert float(last["marginal_integration_error_kld"]) < 2e-3
    assert float(last["marginal_integration_error_kld"]) < float(rows[0]["marginal_integration_error_kld"]) / 2.5
    assert "mean over 6 CG pairs" in res.stdout
    assert (tmp_path / "run" / "pmf.png").is_file() and (tmp_path / "run" / "kld.png").is_file()


def test_a_child_config_with_another_factory_does_not_inherit_the_parents_kwargs(tmp_path, monkeypatch):
    _write(tmp_path / "badsys.py", BAD_MODULE)
    monkeypatch.chdir(tmp_path)
    _write(tmp_path / "child.yaml", yaml.safe_dump({
        "extends": str(EXAMPLES / "torus-4d.yaml"),
        "system": {"name": "python", "factory": "badsys:strict", "kwargs": {"cg_dim": 2}}}))
    cfg = load_config(str(tmp_path / "child.yaml"))
    assert cfg.system.kwargs == {"cg_dim": 2}
    from cgflow.systems import build_system

    assert build_system(cfg.system).cg_dim == 2
    # the same factory: kwargs merge key by key
    _write(tmp_path / "child2.yaml", yaml.safe_dump({
        "extends": str(EXAMPLES / "torus-4d.yaml"), "system": {"name": "python", "kwargs": {"cg_dim": 3}}}))
    assert load_config(str(tmp_path / "child2.yaml")).system.kwargs == {"cg_dim": 3, "n_bins": 30}
    sys.modules.pop("badsys", None)


def test_wrapped_systems_copy_and_pickle():
    import copy
    import pickle

    w = with_defaults(TorusSystem(cg_dim=2))
    for clone in (copy.deepcopy(w), pickle.loads(pickle.dumps(w))):
        assert clone.cg_dim == 2 and clone.default_mc_start == (0.0, 0.0) and clone.wrapped is not w.wrapped
