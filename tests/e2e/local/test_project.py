"""A project's flow functions reach a process that cannot import the project (pickled by
value). Parsing ``flowrig.toml`` is in tests/unit/test_project.py."""

from __future__ import annotations

from tests.unit.test_project import TASK_FLOW, flow_file

# --- loading the flow file (flowrig.project.flow_loader) -------------------------------------------


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
