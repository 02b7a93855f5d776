"""Documentation habits: the README stays a user's document and code carries no measurement diaries."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src" / "msresnet"
PERCENT = re.compile(r"\d+(\.\d+)?\s?%")  # a quoted figure such as "77.4%" or "12 %"


@pytest.mark.parametrize("path", sorted(SRC.rglob("*.py")), ids=lambda p: str(p.relative_to(SRC)))
def test_module_docstrings_quote_no_percentages(path: Path):
    """Measured figures go stale with every re-measurement: docstrings point to docs/results.md instead."""
    doc = ast.get_docstring(ast.parse(path.read_text())) or ""
    found = PERCENT.search(doc)
    assert not found, f"{path.relative_to(ROOT)} module docstring quotes {found.group(0)!r}: link docs/results.md"


def test_readme_is_a_users_document():
    readme = (ROOT / "README.md").read_text()
    assert len(readme.encode()) <= 12 * 1024, "README.md over 12 KB: move reference material to docs/"
    for command in ("make demo", "make test"):
        assert command in readme


def test_version_is_defined_once():
    import msresnet

    pyproject = (ROOT / "pyproject.toml").read_text()
    assert not re.search(r'^version\s*=\s*"', pyproject, re.M), "pyproject.toml reads the version from msresnet"
    assert 'version = {attr = "msresnet.__version__"}' in pyproject
    assert re.fullmatch(r"\d+\.\d+\.\d+(\.dev\d+|rc\d+)?", msresnet.__version__)


def test_relative_links_in_the_documents_resolve():
    docs = [ROOT / "README.md", ROOT / "CHANGELOG.md", ROOT / "benchmarks" / "README.md", *(ROOT / "docs").glob("*.md")]
    broken = []
    for md in docs:
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", md.read_text()):
            if "://" not in target and not (md.parent / target).exists():
                broken.append(f"{md.relative_to(ROOT)} -> {target}")
    assert not broken, f"broken links: {broken}"
