"""A local run checks the project's requirements against its environment before its cluster starts.

The reading of requirement files is tested against the distributions of the test's own
environment (pytest, packaging and typer are installed; ``flowrig-no-such-*`` never is).
The end-to-end tests make throwaway environments that see flowrig (a ``.pth`` file to
this environment's site-packages) and a tiny wheel made here, install it with the very
command the refusal printed (offline: the requirements file points pip and uv at a local
folder), and run the flow on a real local cluster whose task imports it.
"""

from __future__ import annotations

import base64
import hashlib
import os
import shlex
import shutil
import site
import subprocess
import sys
import time
import uuid
import zipfile
from importlib import metadata
from pathlib import Path

import pytest

from flowrig.errors import BadInput
from flowrig.project import load_project
from flowrig.project import requirements as req
from tests.run_support import FLOWRIG, assert_nothing_left, marked_env, write_project

FLOW = """
from prefect import flow, task

@task
def probe():
    import flowrig_probe
    return flowrig_probe.VALUE

@flow
def main():
    return probe.submit().result()
"""


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
def make_wheel(folder: Path, name: str, version: str, module: str, value: int) -> Path:
    """A pure-Python wheel, made by hand (no build backend, no network)."""
    folder.mkdir(parents=True, exist_ok=True)
    dist_info = f"{name.replace('-', '_')}-{version}.dist-info"
    files = {
        f"{module}/__init__.py": f"VALUE = {value}\n",
        f"{dist_info}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n",
        f"{dist_info}/WHEEL": "Wheel-Version: 1.0\nGenerator: flowrig-tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    record = []
    for path, text in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b"=").decode()
        record.append(f"{path},sha256={digest},{len(text.encode())}")
    record.append(f"{dist_info}/RECORD,,")
    files[f"{dist_info}/RECORD"] = "\n".join(record) + "\n"
    wheel = folder / f"{name.replace('-', '_')}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        for path, text in files.items():
            archive.writestr(path, text)
    return wheel


def environment_seeing_flowrig(path: Path, *, with_uv: bool) -> Path:
    """A new environment whose site-packages sees this one's (flowrig and its dependencies)."""
    if with_uv:
        subprocess.run([uv(), "venv", "--quiet", "--python", sys.executable, str(path)], check=True, timeout=120)
    else:
        subprocess.run([sys.executable, "-m", "venv", str(path)], check=True, timeout=120)
    python = path / "bin" / "python"
    own_site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                              capture_output=True, text=True, check=True).stdout.strip()
    paths = [p for p in site.getsitepackages() if Path(p).is_dir()]
    # flowrig itself when it is installed editable: its source folder.
    paths.append(str(Path(__file__).resolve().parents[3]))
    Path(own_site, "flowrig-tests-parent.pth").write_text("\n".join(paths) + "\n")
    return python


def uv() -> str:
    found = shutil.which("uv")
    if found is None:
        pytest.fail("uv is not on PATH: install it as the README says (pip install uv==...)", pytrace=False)
    return found


def requirements_project(tmp_path: Path, lines: str) -> Path:
    project = write_project(tmp_path / "project", FLOW)
    make_wheel(project / "wheels", "flowrig-probe", "1.0", "flowrig_probe", 41)
    make_wheel(project / "wheels", "flowrig-probe", "2.0", "flowrig_probe", 42)
    # Options in the file keep the install offline, and pip and uv both honour them.
    (project / "requirements.txt").write_text(f"--no-index\n--find-links ./wheels\n{lines}")
    return project


def run_in(python: Path, *args: str, cwd: Path, marker: str = "requirements-check",
           timeout: float = 240) -> subprocess.CompletedProcess[str]:
    env = marked_env(marker)
    env.pop("VIRTUAL_ENV", None)
    return subprocess.run([str(python), "-m", "flowrig.cli", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)


def test_missing_and_wrong_versions_exit_2_before_the_cluster_then_the_printed_command_fixes_it(tmp_path):
    python = environment_seeing_flowrig(tmp_path / "env", with_uv=True)
    project = requirements_project(tmp_path, "flowrig-probe==2.0\nflowrig-probe-absent>=1 ; python_version >= '3'\n")
    # Version 1.0 installed: the wrong one.
    subprocess.run([uv(), "pip", "install", "--quiet", "--python", str(python), "--no-index",
                    str(project / "wheels" / "flowrig_probe-1.0-py3-none-any.whl")], check=True, timeout=120)

    marker = uuid.uuid4().hex
    start = time.monotonic()
    done = run_in(python, "run", "project", "--output", "json", cwd=tmp_path, marker=marker)
    elapsed = time.monotonic() - start
    assert done.returncode == 2, done.stderr
    [line] = done.stderr.strip().splitlines()
    assert line == (
        "flowrig: error: project/requirements.txt requires packages this environment lacks: "
        "flowrig-probe==2.0 (1.0 installed), flowrig-probe-absent>=1 ; python_version >= '3' (not installed); "
        "install them with: uv pip install --python env/bin/python -r project/requirements.txt"
    )
    # No cluster started (it takes seconds; the refusal does not), and nothing is left:
    # the run's API, started alongside the check, is stopped with it.
    assert elapsed < 15, elapsed
    assert "Running" not in done.stdout and "dashboard" not in done.stderr
    assert_nothing_left(marker)

    # The printed command, run as printed, from the same directory.
    make_wheel(project / "wheels", "flowrig-probe-absent", "1.0", "flowrig_probe_absent", 0)
    command = line.split("install them with: ", 1)[1]
    installed = subprocess.run(shlex.split(command), cwd=tmp_path, capture_output=True, text=True, timeout=180,
                               env={**os.environ, "UV_NO_CACHE": "1"})
    assert installed.returncode == 0, installed.stderr

    done = run_in(python, "run", "project", "--output", "json", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    outcome = done.stdout.strip().splitlines()[-1]
    assert '"result": 42' in outcome and '"state": "Completed"' in outcome


def test_a_pip_environment_gets_a_pip_command_that_works(tmp_path):
    python = environment_seeing_flowrig(tmp_path / "env", with_uv=False)
    requirements_project(tmp_path, "flowrig-probe>=2\n")
    check = "from flowrig.project import load_project; from flowrig.project.requirements import check_environment; " \
            "check_environment(load_project('project'))"
    done = subprocess.run([str(python), "-c", check], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert done.returncode != 0
    message = done.stderr.strip().splitlines()[-1]
    command = message.split("install them with: ", 1)[1]
    assert command == "env/bin/python -m pip install -r project/requirements.txt"
    env = {key: value for key, value in os.environ.items() if not key.startswith("PIP_")}
    installed = subprocess.run(shlex.split(command), cwd=tmp_path, capture_output=True, text=True, timeout=180,
                               env={**env, "PIP_CONFIG_FILE": "/dev/null"})
    assert installed.returncode == 0, installed.stderr
    done = subprocess.run([str(python), "-c", check], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr


def test_satisfied_requirements_run(tmp_path):
    project = write_project(tmp_path / "project", FLOW.replace("import flowrig_probe", "import pytest as flowrig_probe")
                            .replace("flowrig_probe.VALUE", "len(flowrig_probe.__name__)"))
    (project / "requirements.txt").write_text(f"pytest=={metadata.version('pytest')}\ntyper\n")
    done = subprocess.run([*FLOWRIG, "run", str(project), "--output", "json"], env=marked_env("requirements-ok"),
                          capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    assert '"result": 6' in done.stdout.strip().splitlines()[-1]
