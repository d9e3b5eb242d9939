"""The command lines start fast: heavy libraries load only in the commands that need
them, and usage errors are one message and exit 2, never a traceback."""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.run_support import assert_nothing_left, run_cli

BIN = Path(sys.executable).parent
HEAVY = ("prefect", "distributed", "dask", "docker", "boto3", "cryptography", "dask_cloudprovider")


def python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)


def console(name: str, *args: str) -> subprocess.CompletedProcess:
    script = shutil.which(name, path=str(BIN))
    assert script, f"{name} is not installed next to {sys.executable}"
    env = {k: v for k, v in os.environ.items() if k != "FLOWRIG_DEBUG"}
    return subprocess.run([script, *args], capture_output=True, text=True, timeout=120, env=env)


@pytest.mark.parametrize(
    "modules",
    [
        "flowrig.cli",
        # What every container role imports before exec'ing Dask.
        "flowrig.entrypoint, flowrig.roles, flowrig.cli.exits",
        # The public API and the light modules behind a run.
        "flowrig, flowrig.run.prefect1, flowrig.project, flowrig.project.parameters, flowrig.project.sizing, flowrig.project.flow_loader",
    ],
)
def test_heavy_modules_are_not_imported(modules):
    done = python(
        f"import {modules}, sys; "
        f"print(sorted(m for m in sys.modules if m.split('.')[0] in {HEAVY!r}))"
    )
    assert done.returncode == 0, done.stderr
    assert ast.literal_eval(done.stdout.strip()) == []


def test_the_probe_sees_heavy_modules_when_they_are_imported():
    # The check above must be able to fail: the same probe after a real import of one.
    done = python(
        "import flowrig.cli, distributed, sys; "
        f"print(sorted(m for m in sys.modules if m.split('.')[0] in {HEAVY!r}))"
    )
    assert "distributed" in ast.literal_eval(done.stdout.strip())


def test_flowrig_help():
    done = console("flowrig", "--help")
    assert done.returncode == 0, done.stderr
    for command in ("run", "certs", "ecs"):
        assert command in done.stdout


def test_run_help_documents_param():
    done = console("flowrig", "run", "--help")
    assert done.returncode == 0, done.stderr
    assert "--param" in done.stdout and "--output" in done.stdout


def test_param_without_value_is_a_usage_error():
    done = console("flowrig", "run", "--param")
    assert done.returncode == 2
    assert "--param" in done.stderr and "requires an argument" in done.stderr
    assert "Traceback" not in done.stderr and done.stdout == ""


def test_unknown_command_is_a_usage_error():
    done = console("flowrig", "no-such-command")
    assert done.returncode == 2
    assert "No such command" in done.stderr and "Traceback" not in done.stderr


def test_bad_param_value_is_bad_input_and_leaves_nothing(tmp_path):
    project = tmp_path / "p"
    project.mkdir()
    (project / "flow.py").write_text("from prefect import flow\n\n@flow\ndef main(x: int = 1):\n    return x\n")
    (project / "flowrig.toml").write_text('flow = "flow.py:main"\n')
    done = run_cli("run", str(project), "--param", "x=[1,2")
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1].startswith("flowrig: error: --param x: malformed JSON")
    assert "Traceback" not in done.stderr
    # The run's Prefect API starts before the parameters are read; it must be gone.
    assert_nothing_left(done.marker)


def test_missing_project_is_bad_input(tmp_path):
    done = console("flowrig", "run", str(tmp_path / "nowhere"))
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1] == f"flowrig: error: project directory '{tmp_path / 'nowhere'}' does not exist"
