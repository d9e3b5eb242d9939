"""A local run checks the project's requirements against its environment before its cluster starts.

The reading of requirement files is tested against the distributions of the test's own
environment (pytest, packaging and typer are installed; ``flowrig-no-such-*`` never is).
The end-to-end tests make throwaway environments that see flowrig (a ``.pth`` file to
this environment's site-packages) and a tiny wheel made here, install it with the very
command the refusal printed (offline: the requirements file points pip and uv at a local
folder), and run the flow on a real local cluster whose task imports it.

Cases that need none of these are in tests/unit/test_requirements_check.py.
"""

from __future__ import annotations

import base64
import hashlib
import os
import shlex
import site
import subprocess
import sys
import time
import uuid
import zipfile
from importlib import metadata
from pathlib import Path

from tests.run_support import FLOWRIG, assert_nothing_left, marked_env, write_project
from tests.unit.test_requirements_check import uv

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
