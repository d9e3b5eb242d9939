"""A project's flow functions reach a process that cannot import the project (pickled by
value). Parsing ``flowrig.toml`` is in tests/unit/test_project.py."""

from __future__ import annotations

import textwrap
from pathlib import Path

# --- loading the flow file (flowrig.project.flow_loader) -------------------------------------------

TASK_FLOW = '''
from prefect import flow, task

FACTOR = 3


def helper(x):
    return x * FACTOR


@task
def scaled(x: int) -> int:
    return helper(x) + 1


@flow
def main(x: int = 1) -> int:
    return scaled(x)


not_a_function = 42


def plain(x):
    return helper(x)
'''


def flow_file(tmp_path: Path, source: str, name: str = "flow.py") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(source))
    return path


def test_functions_pickle_by_value_into_a_process_that_cannot_import_them(tmp_path):
    import subprocess
    import sys

    import cloudpickle

    from flowrig.project.flow_loader import load_module

    project = tmp_path / "project"
    project.mkdir()
    module = load_module(flow_file(project, TASK_FLOW))
    payload = tmp_path / "payload.pkl"
    payload.write_bytes(cloudpickle.dumps((module.plain, module.scaled)))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    script = (
        "import pickle, sys\n"
        f"plain, scaled = pickle.loads(open({str(payload)!r}, 'rb').read())\n"
        f"assert {module.__name__!r} not in sys.modules\n"
        "print(plain(2), scaled.fn(2))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=elsewhere, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["6", "7"]
