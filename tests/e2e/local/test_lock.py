"""The lock: uv.lock matches pyproject.toml, constraints.txt is its export, and the check
CI runs (``.ci/check-lock``) fails when either drifts."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]
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


# --- an install for running, one for developing ---------------------------------------
#: Tools that only tests, lint and the manual need: none may reach a run's install.
DEVELOPMENT_TOOLS = {
    "pytest", "pytest-timeout", "pytest-xdist", "testcontainers", "moto", "trustme", "ruff", "import-linter", "mkdocs",
    "prefect-aws", "prefect-docker", "cfn-lint", "docker-compose", "python-on-whales",
}
#: What the cloud extras bring: a local run needs none of them.
CLOUD_SDKS = {"boto3", "botocore", "aiobotocore", "azure-core", "azure-identity", "google-api-python-client",
              "google-auth", "dask-cloudprovider"}
#: uv options that choose what an install holds (the others do not change the set).
SELECTION = {"--all-extras", "--all-groups", "--no-default-groups", "--dev", "--no-dev"}
SELECTION_WITH_VALUE = {"--extra", "--group", "--only-group", "--no-group"}


def readme_first_command() -> list[str]:
    import re
    import shlex

    match = re.search(r"^\s*(pip install uv==.*)$", (REPO / "README.md").read_text(), re.MULTILINE)
    assert match, "the README has no first command (pip install uv==...)"
    return shlex.split(match.group(1))


def selection_of(words: list[str]) -> list[str]:
    """The uv options of ``uv run ... flowrig`` that choose what it installs."""
    start = next(i for i in range(len(words) - 1) if words[i:i + 2] == ["uv", "run"]) + 2
    chosen: list[str] = []
    index = start
    while index < len(words) and words[index].startswith("-"):
        word = words[index]
        if word in SELECTION:
            chosen.append(word)
        elif word.split("=", 1)[0] in SELECTION_WITH_VALUE:
            chosen += [word] if "=" in word else [word, words[index + 1]]
            index += "=" not in word
        index += 1
    return chosen


def exported(*selection: str) -> set[str]:
    done = subprocess.run(
        [uv(), "export", "--frozen", "--offline", "--no-emit-project", "--no-hashes", "--no-annotate", *selection],
        cwd=REPO, capture_output=True, text=True, timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return {line.split("==")[0].strip().lower() for line in done.stdout.splitlines()
            if line.strip() and not line.startswith("#")}


def test_the_readme_first_command_installs_what_running_needs_only():
    words = readme_first_command()
    assert "uv" in words and "flowrig" in words
    installed = exported(*selection_of(words))
    assert {"prefect", "prefect-dask", "distributed", "bokeh", "cryptography"} <= installed
    assert not installed & DEVELOPMENT_TOOLS, sorted(installed & DEVELOPMENT_TOOLS)
    assert not installed & CLOUD_SDKS, sorted(installed & CLOUD_SDKS)


def test_the_test_command_and_ci_install_the_development_tools():
    import re
    import shlex

    readme = (REPO / "README.md").read_text()
    test_command = re.search(r"<!-- test-command -->\n\s*(.+)", readme).group(1)
    installed = exported(*selection_of(shlex.split(test_command)))
    wanted = {"pytest", "pytest-timeout", "pytest-xdist", "testcontainers", "moto", "trustme", "ruff", "import-linter",
              "prefect-aws", "prefect-docker", "boto3", "dask-cloudprovider", "azure-keyvault-secrets"}
    assert wanted <= installed, sorted(wanted - installed)
    # CI's environment is the same selection (its sync line in .ci/run), and the docs
    # group besides, since CI also builds the manual; no test needs that group.
    sync = next(line for line in (REPO / ".ci" / "run").read_text().splitlines() if line.startswith("sync=("))
    assert selection_of(["uv", "run", *shlex.split(sync.split("sync", 2)[2].rstrip(")"))]) == [
        *selection_of(shlex.split(test_command)), "--group", "docs"]


def test_uv_installs_no_group_unless_asked():
    import tomllib

    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    # uv's own default would sync a group named dev with every `uv run`.
    assert pyproject["tool"]["uv"]["default-groups"] == []
    assert "test" not in pyproject["project"].get("optional-dependencies", {})
    assert exported() == exported("--no-default-groups")


def test_the_manual_tool_resolves_in_the_docs_group_only():
    assert "mkdocs" in exported("--only-group", "docs")
    assert "mkdocs" not in exported("--all-extras", "--group", "dev")


def test_images_install_the_runtime_and_the_backends_extra_only(tmp_path: Path):
    """The build's requirements step (flowrig/builder/buildsteps.py) reads flowrig's
    dependencies and the backend's extra from pyproject.toml, never a dependency group."""
    import sys

    from packaging.requirements import Requirement

    for backend, must in (("local", set()), ("ecs", {"dask-cloudprovider"})):
        project = tmp_path / backend
        project.mkdir()
        (project / "flowrig.toml").write_text(f'flow = "flow.py:f"\n[cluster]\nbackend = "{backend}"\n')
        (project / "flow.py").write_text("")
        out = tmp_path / f"out-{backend}"
        done = subprocess.run(
            [sys.executable, str(REPO / "flowrig" / "builder" / "buildsteps.py"), "requirements",
             "--pyproject", str(REPO / "pyproject.toml"), "--constraints", str(REPO / "constraints.txt"),
             "--project", str(project), "--out", str(out)],
            capture_output=True, text=True, timeout=60,
        )
        assert done.returncode == 0, done.stderr
        names = {Requirement(line).name.lower() for line in (out / "flowrig.txt").read_text().splitlines() if line}
        assert {"prefect", "distributed", "bokeh", "dumb-init"} | must <= names
        assert not names & (DEVELOPMENT_TOOLS | {"psutil"}), sorted(names & DEVELOPMENT_TOOLS)
        assert backend != "local" or not names & CLOUD_SDKS


def test_a_lock_that_lets_uv_run_install_a_group_fails(copy: Path):
    pyproject = copy / "pyproject.toml"
    pyproject.write_text(pyproject.read_text().replace("default-groups = []", 'default-groups = ["dev"]'))
    # The lock as `uv lock` rewrites it for that (uv's default groups are left unwritten),
    # edited rather than relocked: relocking resolves again, which offline needs every
    # package's index page in uv's cache, and a clean machine's cache has none. The check
    # below reaches its groups step only if uv finds this lock and the export consistent.
    lock = copy / "uv.lock"
    assert lock.read_text().count("\ndefault-groups = []\n") == 1
    lock.write_text(lock.read_text().replace("\ndefault-groups = []\n", "\n", 1))
    done = check(copy)
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [
        "uv run would install a dependency group: keep default-groups = [] in [tool.uv] of pyproject.toml"]
