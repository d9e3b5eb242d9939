"""The lock: uv.lock matches pyproject.toml, constraints.txt is its export, and the check
CI runs (``.ci/check-lock``) fails when either drifts."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
FILES = ("pyproject.toml", "uv.lock", "constraints.txt")


def uv() -> str:
    found = shutil.which("uv")
    if found is None:
        pytest.fail("uv is not on PATH: install it as the README says (pip install uv==...)", pytrace=False)
    return found


def check(root: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(REPO / ".ci" / "check-lock")], cwd=root, env={"UV": uv(), "PATH": "/usr/bin:/bin"},
        capture_output=True, text=True, timeout=120,
    )


@pytest.fixture
def copy(tmp_path: Path) -> Path:
    for name in FILES:
        shutil.copy(REPO / name, tmp_path / name)
    # uv needs the project's files to exist to read its metadata (readme, package).
    shutil.copy(REPO / "README.md", tmp_path / "README.md")
    (tmp_path / "flowrig").mkdir()
    (tmp_path / "flowrig" / "__init__.py").write_text("")
    return tmp_path


def test_the_committed_lock_matches(copy: Path):
    done = check(copy)
    assert done.returncode == 0, done.stderr


def test_a_dependency_added_without_relocking_fails(copy: Path):
    pyproject = copy / "pyproject.toml"
    pyproject.write_text(pyproject.read_text().replace('"docker>=7.1",', '"docker>=7.1",\n    "toolz>=0.12",'))
    done = check(copy)
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == ["uv.lock does not match pyproject.toml: run 'uv lock' and commit uv.lock"]


def test_constraints_that_drift_from_the_lock_fail(copy: Path):
    constraints = copy / "constraints.txt"
    constraints.write_text(constraints.read_text().replace("prefect==", "prefect>="))
    done = check(copy)
    assert done.returncode == 1
    assert "constraints.txt is not the export of uv.lock" in done.stderr
