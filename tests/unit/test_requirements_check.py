"""A local run checks the project's requirements against its environment before its cluster
starts: requirement files read as pip reads them, against the distributions of the test's
own environment (``flowrig-no-such-*`` is never installed), and the install command offered.
Throwaway environments and real runs: tests/e2e/local/test_requirements_check.py.
"""

from __future__ import annotations

import shutil
from importlib import metadata
from pathlib import Path

import pytest

from flowrig.errors import BadInput
from flowrig.project import load_project
from flowrig.project import requirements as req
from tests.run_support import write_project


def unmet(tmp_path: Path, text: str, **files: str) -> list[req.Unmet]:
    (tmp_path / "requirements.txt").write_text(text)
    for name, content in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(content)
    return req.unmet_requirements(tmp_path / "requirements.txt", tmp_path)


def names(found: list[req.Unmet]) -> list[str]:
    return [item.requirement for item in found]


# --- reading a requirements file as pip does ---------------------------------------------
def test_installed_requirements_at_matching_versions_are_met(tmp_path):
    pytest_version = metadata.version("pytest")
    text = f"pytest=={pytest_version}\npackaging>=20\ntyper\n"
    assert unmet(tmp_path, text) == []


def test_missing_and_wrong_versions_are_named_with_what_is_installed(tmp_path):
    found = unmet(tmp_path, "flowrig-no-such-package>=1\npytest<1\npytest-timeout\n")
    assert found == [
        req.Unmet("flowrig-no-such-package>=1"),
        req.Unmet("pytest<1", metadata.version("pytest")),
    ]


def test_names_are_compared_after_normalisation(tmp_path):
    # PEP 503: case, '_', '.' and '-' runs are one name.
    assert unmet(tmp_path, "PyTest\npytest_timeout\nTyping.Extensions\n") == []


def test_markers_that_do_not_hold_here_skip_the_requirement(tmp_path):
    text = 'flowrig-no-such-package ; sys_platform == "win32"\nflowrig-no-such-other ; python_version < "3"\n'
    assert unmet(tmp_path, text) == []
    assert names(unmet(tmp_path, 'flowrig-no-such-package ; python_version >= "3"\n')) == [
        'flowrig-no-such-package ; python_version >= "3"']


def test_includes_continuations_comments_options_and_variables_are_read_as_pip_reads_them(tmp_path, monkeypatch):
    monkeypatch.setenv("PROBE_NAME", "flowrig-no-such-from-env")
    text = (
        "--index-url https://example.invalid/simple\n"
        "# a comment\n"
        "-r extra/more.txt\n"
        "-c pins.txt\n"
        "pytest \\\n    >=1 --hash=sha256:0000\n"
        "${PROBE_NAME}  # trailing comment\n"
    )
    found = unmet(tmp_path, text, **{"extra/more.txt": "flowrig-no-such-included\n", "pins.txt": "flowrig-no-such-pin==1\n"})
    # The constraint file only narrows versions: it requires nothing.
    assert names(found) == ["flowrig-no-such-included", "flowrig-no-such-from-env"]


def fake_distribution(site_dir: Path, name: str, version: str, *requires: str) -> None:
    """A distribution's metadata on a path entry: what importlib.metadata finds."""
    dist_info = site_dir / f"{name.replace('-', '_')}-{version}.dist-info"
    dist_info.mkdir(parents=True)
    lines = ["Metadata-Version: 2.1", f"Name: {name}", f"Version: {version}", "Provides-Extra: fast",
             *(f"Requires-Dist: {text}" for text in requires)]
    (dist_info / "METADATA").write_text("\n".join(lines) + "\n")


def test_an_extras_own_requirements_are_checked(tmp_path, monkeypatch):
    site_dir = tmp_path / "site"
    fake_distribution(site_dir, "flowrig-probe-base", "1.0", "pytest",
                      'flowrig-no-such-speedup>=1; extra == "fast"', 'flowrig-probe-dep<1; extra == "fast"',
                      'flowrig-no-such-windows; extra == "fast" and sys_platform == "win32"')
    fake_distribution(site_dir, "flowrig-probe-dep", "2.0")
    monkeypatch.syspath_prepend(str(site_dir))
    assert unmet(tmp_path, "flowrig-probe-base\n") == []
    assert unmet(tmp_path, "flowrig-probe-base[fast]\n") == [
        req.Unmet('flowrig-no-such-speedup>=1; extra == "fast"'),
        req.Unmet('flowrig-probe-dep<1; extra == "fast"', "2.0"),
    ]


def test_urls_and_paths_are_checked_by_the_name_they_carry(tmp_path):
    (tmp_path / "libs" / "mine").mkdir(parents=True)
    (tmp_path / "libs" / "mine" / "pyproject.toml").write_text('[project]\nname = "flowrig-no-such-local"\n')
    text = (
        "git+https://example.invalid/x.git#egg=flowrig-no-such-egg\n"
        "https://example.invalid/flowrig_no_such_wheel-1.0-py3-none-any.whl\n"
        "-e ./libs/mine\n"
        "flowrig-no-such-direct @ https://example.invalid/d.whl\n"
        f"pytest @ file://{tmp_path}/anything.whl\n"  # installed: a direct reference's version is not checked
        "./some/folder-without-metadata\n"
    )
    assert sorted(names(unmet(tmp_path, text))) == sorted([
        "flowrig-no-such-egg", "flowrig-no-such-wheel", "flowrig-no-such-local",
        "flowrig-no-such-direct @ https://example.invalid/d.whl"])


def test_a_line_pip_would_refuse_is_bad_input_naming_it(tmp_path):
    with pytest.raises(BadInput) as info:
        unmet(tmp_path, "pytest\nnumpy>=>1\n")
    assert "numpy>=>1" in str(info.value) and "requirements.txt" in str(info.value)
    assert "\n" not in str(info.value)


def test_a_utf16_file_with_its_byte_order_mark_is_read_and_other_bytes_are_bad_input(tmp_path):
    # pip reads a file whose byte order mark names its encoding: Windows tools write those.
    (tmp_path / "requirements.txt").write_bytes("pytest\nflowrig-no-such-package\n".encode("utf-16"))
    assert names(req.unmet_requirements(tmp_path / "requirements.txt", tmp_path)) == ["flowrig-no-such-package"]
    project = write_project(tmp_path / "p", "def main(): pass\n")
    (project / "requirements.txt").write_bytes(b"\xff\xfd pytest\n")
    with pytest.raises(BadInput, match="requirements.txt is not UTF-8 text: save it as UTF-8"):
        load_project(project)


def test_flowrigs_own_dependencies_are_not_offered_for_reinstall(tmp_path):
    project = write_project(tmp_path / "p", "def main(): pass\n")
    (project / "requirements.txt").write_text("prefect<1\nflowrig-no-such-package\n")
    with pytest.raises(BadInput) as info:
        req.check_environment(load_project(project))
    message = str(info.value)
    assert f"prefect<1 ({metadata.version('prefect')} installed)" in message
    assert "flowrig's own dependencies" in message and "the file must allow" in message
    # The install command is for the others only.
    assert message.endswith(f"-r {project / 'requirements.txt'}")
    assert "flowrig-no-such-package (not installed)" in message


def test_a_project_without_requirements_needs_nothing(tmp_path):
    project = write_project(tmp_path / "p", "def main(): pass\n")
    req.check_environment(load_project(project))  # no file: nothing to check


# --- the one command, matching how flowrig was installed ----------------------------------
def test_install_command_follows_the_environment(tmp_path):
    requirements = tmp_path / "proj" / "requirements.txt"
    uv_env = tmp_path / ".venv"
    uv_env.mkdir()
    (uv_env / "pyvenv.cfg").write_text("home = /usr/bin\nimplementation = CPython\nuv = 0.13.9\n")
    assert req.install_command(requirements, prefix=str(uv_env), python=str(uv_env / "bin" / "python"),
                               cwd=tmp_path) == "uv pip install --python .venv/bin/python -r proj/requirements.txt"
    pipx_env = tmp_path / "home" / ".local" / "pipx" / "venvs" / "flowrig"
    pipx_env.mkdir(parents=True)
    (pipx_env / "pyvenv.cfg").write_text("home = /usr/bin\n")
    assert req.install_command(requirements, prefix=str(pipx_env), python=str(pipx_env / "bin" / "python"),
                               cwd=tmp_path) == "pipx runpip flowrig install -r proj/requirements.txt"
    plain = tmp_path / "my env"
    plain.mkdir()
    (plain / "pyvenv.cfg").write_text("home = /usr/bin\n")
    # This test's interpreter has pip or not; either way the command names this interpreter.
    command = req.install_command(requirements, prefix=str(plain), python=str(plain / "bin" / "python"),
                                  cwd=tmp_path / "elsewhere")
    assert command in (f"'{plain}/bin/python' -m pip install -r {requirements}",
                       f"uv pip install --python '{plain}/bin/python' -r {requirements}")


# --- end to end: refused before anything starts, installed by the printed command, then runs


def uv() -> str:
    found = shutil.which("uv")
    if found is None:
        pytest.fail("uv is not on PATH: install it as the README says (pip install uv==...)", pytrace=False)
    return found
