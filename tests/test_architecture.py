"""The package's layout as docs/architecture.md draws it: dependencies point one way, no import
circles, no private names across packages, ``import cgflow`` stays light."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "cgflow"

# which packages each package may import (besides itself); the CLI is the only top
ALLOWED = {
    "core": set(),
    "flows": {"core"},
    "pmf": {"core"},
    "sampling": {"core"},
    "distributed": {"core"},
    "analysis": {"core", "pmf"},
    "systems": {"core", "pmf", "distributed"},
    "baselines": {"core", "pmf", "analysis"},
    "config": {"core", "systems", "distributed"},
    "learning": {"core", "flows", "pmf", "sampling", "distributed", "analysis", "systems", "config"},
    "validation": {"core", "pmf", "analysis", "baselines"},
    "cli": {"core", "flows", "pmf", "sampling", "distributed", "analysis", "systems", "config", "learning",
            "baselines", "validation"},
}


def _modules():
    out = {}
    for p in SRC.rglob("*.py"):
        rel = p.relative_to(SRC.parent).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = p
    return out


def _imports(path: Path):
    """(imported module, names) for every cgflow import in the file, lazy ones inside functions included."""
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("cgflow"):
            yield node.module, [a.name for a in node.names]
        elif isinstance(node, ast.Import):
            for a in node.names:
                if a.name.startswith("cgflow"):
                    yield a.name, []


def _package(mod: str) -> str | None:
    parts = mod.split(".")
    return parts[1] if len(parts) > 1 else None


def _graph():
    mods = _modules()
    g = {m: set() for m in mods}
    for m, p in mods.items():
        for target, names in _imports(p):
            for name in names or [None]:
                sub = f"{target}.{name}" if name else target
                dep = sub if sub in mods else target
                if dep in mods and dep != m:
                    g[m].add(dep)
    return g


def test_top_level_holds_only_packages():
    loose = sorted(p.name for p in SRC.iterdir() if p.suffix == ".py" and p.name != "__init__.py")
    assert loose == [], f"modules at the top of src/cgflow: {loose}"


def test_packages_depend_only_downwards():
    bad = []
    for m, deps in _graph().items():
        a = _package(m)
        for d in deps:
            b = _package(d)
            if a and b and a != b and b not in ALLOWED.get(a, set()) and b in ALLOWED:
                bad.append(f"{m} -> {d}")
    assert not bad, "imports against the layering of docs/architecture.md:\n" + "\n".join(sorted(bad))


def test_no_import_circle_between_modules():
    g = _graph()
    state, stack, cycles = {}, [], []

    def visit(m):
        state[m] = 1
        stack.append(m)
        for d in g[m]:
            if state.get(d) == 1:
                cycles.append(stack[stack.index(d):] + [d])
            elif d not in state:
                visit(d)
        stack.pop()
        state[m] = 2

    for m in g:
        if m not in state:
            visit(m)
    # a package's __init__ importing its own modules is not a circle of behaviour
    cycles = [c for c in cycles if not any(x == c[0].rsplit(".", 1)[0] for x in c)]
    assert not cycles, "import circles: " + "; ".join(" -> ".join(c) for c in cycles)


def test_no_private_name_imported_across_packages():
    mods = _modules()
    bad = []
    for m, p in mods.items():
        for target, names in _imports(p):
            if _package(target) != _package(m):
                bad += [f"{m}: {target}.{n}" for n in names if n.startswith("_") and n != "__version__"]
    assert not bad, "private names imported across packages: " + ", ".join(bad)


@pytest.mark.parametrize("module", ["cgflow", "cgflow.learning.run", "cgflow.systems"])
def test_core_imports_no_cli_and_no_baselines(module):
    code = (f"import sys, {module}; bad = [m for m in sys.modules if m.startswith(('cgflow.cli', 'cgflow.baselines'))]; "
            "print(','.join(bad)); sys.exit(1 if bad else 0)")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert res.returncode == 0, f"import {module} pulled in {res.stdout.strip()} {res.stderr[-300:]}"
