"""The manual (docs/, built by MkDocs): the site builds strictly and a broken link fails it.

This needs MkDocs (the ``docs`` dependency group, which CI installs); the generated
references are checked in process in tests/unit/test_manual.py.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.unit.test_manual import DOCS

REPO = Path(__file__).resolve().parents[3]


def _mkdocs() -> list[str]:
    pytest.importorskip("mkdocs", reason="the manual's tool is the docs dependency group (uv sync --group docs)")
    return [sys.executable, "-m", "mkdocs"]


def test_the_manual_builds_strictly_and_a_broken_link_fails_it(tmp_path):
    mkdocs = _mkdocs()
    copy = tmp_path / "repo"
    copy.mkdir()
    # What the build reads: the pages, the files they include, and the package layout.
    shutil.copytree(DOCS, copy / "docs")
    shutil.copytree(REPO / "flowrig", copy / "flowrig", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("mkdocs.yml", "SECURITY.md", "CONTRIBUTING.md", "pyproject.toml"):
        shutil.copy(REPO / name, copy / name)
    # Never -q: mkdocs then drops its warnings before strict mode can count them.
    built = subprocess.run([*mkdocs, "build", "--strict", "-d", str(tmp_path / "site")],
                           cwd=copy, capture_output=True, text=True, timeout=300)
    assert built.returncode == 0, built.stderr
    html = (tmp_path / "site" / "reference" / "configuration" / "index.html").read_text()
    assert "scheduler_extra_args" in html and "allow_private_keys" in html

    page = copy / "docs" / "backends" / "local.md"
    page.write_text(page.read_text() + "\nSee [the sizing hook](../project.md#no-such-heading).\n")
    broken = subprocess.run([*mkdocs, "build", "--strict", "-d", str(tmp_path / "site2")],
                            cwd=copy, capture_output=True, text=True, timeout=300)
    assert broken.returncode != 0
    assert "does not contain an anchor '#no-such-heading'" in broken.stderr
