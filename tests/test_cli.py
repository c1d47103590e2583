"""Bad input: one-line error, non-zero exit, nothing overwritten."""


import pytest

from conftest import run_cgflow


def cgflow(*args, cwd=None):
    return run_cgflow(*args, cwd=cwd, timeout=300)


@pytest.mark.parametrize("args, needle", [
    (["run", "mb", "--set", "ensemble.epohcs=3"], "ensemble.epohcs: unknown key"),
    (["run", "mb", "--set", "ensemble.epochs=many"], "ensemble.epochs"),
    (["run", "missing.yaml"], "config file not found: missing.yaml"),
    (["run", "mb", "--set", "novalue"], "expected key=value"),
    (["plot", "no/such/dir"], "no such run directory"),
    (["run", "--resume", "--out", "no/such/dir"], "no checkpoint"),
])
@pytest.mark.slow  # fast lane: over 3 s (a subprocess or a tiny run)
def test_bad_input_one_line_error(tmp_path, args, needle):
    res = cgflow(*args, cwd=tmp_path)
    assert res.returncode != 0
    err_lines = [line for line in res.stderr.strip().splitlines() if line.strip()]
    assert len(err_lines) == 1, res.stderr
    assert needle in err_lines[0]
    assert not (tmp_path / "runs").exists()


def test_existing_run_directory_is_not_overwritten(tmp_path):
    out = tmp_path / "myrun"
    out.mkdir()
    (out / "precious.txt").write_text("keep me")
    res = cgflow("run", "mb", "--out", str(out))
    assert res.returncode != 0
    assert "already exists" in res.stderr and "--resume" in res.stderr
    assert sorted(p.name for p in out.iterdir()) == ["precious.txt"]
    assert (out / "precious.txt").read_text() == "keep me"


def test_presets_command_lists_and_shows():
    res = cgflow("presets")
    assert res.returncode == 0 and "mb" in res.stdout and "mb-paper" in res.stdout
    res = cgflow("presets", "mb")
    assert res.returncode == 0 and "muller-brown" in res.stdout
