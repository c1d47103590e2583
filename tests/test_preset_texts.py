"""Issue 18.4: what `cgflow presets` and the README tell a user agrees with itself and points to
documents that exist."""

import re
from pathlib import Path

import pytest

from cgflow.cli.run import preset_description
from cgflow.config import preset_names, preset_text

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


@pytest.mark.parametrize("name", preset_names())
def test_preset_header_cites_only_documents_that_exist(name):
    header = "\n".join(x for x in preset_text(name).splitlines() if x.startswith("#"))
    assert not re.search(r"\bspec\b", header), f"{name} cites a spec a user cannot find"
    for doc in re.findall(r"docs/[\w.-]+\.md", header):
        assert (ROOT / doc).is_file(), doc


@pytest.mark.parametrize("name", preset_names())
def test_preset_timing_matches_the_readme_table(name):
    m = re.search(r"about ([\d-]+) minutes", preset_description(preset_text(name)))
    if m is None:
        return
    row = next(line for line in README.splitlines() if line.startswith(f"| `{name}` |"))
    assert f"~{m.group(1)} min" in row, (name, m.group(1), row)


def test_readme_names_the_extras_that_setup_installs():
    extras = re.search(r'pip install [^\n]*-e "\.\[([\w,]+)\]"', (ROOT / "scripts" / "setup.sh").read_text()).group(1)
    assert f'pip install -e ".[{extras}]"' in README
