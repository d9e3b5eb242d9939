"""What a local run does to start fast, and that none of it outlives the run.

- The run's Prefect API process is spawned as the run's first step, before the
  project is read; a run that then ends with bad input leaves neither that process
  nor its folder behind, nor does a runner killed before it configured the API.
- A worker's first task does not import every installed Prefect collection
  (prefect-aws, prefect-docker) to rebuild the run's result store.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path

import psutil

from tests.run_support import FLOWRIG, assert_nothing_left, marked_env, write_project


def _folders(tmp: Path) -> list[str]:
    return sorted(p.name for p in tmp.iterdir() if p.name.startswith("flowrig-"))


def test_bad_input_after_the_early_api_leaves_nothing(tmp_path):
    # A local project whose flow file is missing: bad input found once the API process
    # was spawned (flowrig.toml is read after it).
    project = write_project(tmp_path / "project", "", 'flow = "missing.py:main"\n\n[cluster]\nbackend = "local"\n')
    (project / "flow.py").unlink()
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    marker = uuid.uuid4().hex
    env = {**marked_env(marker), "TMPDIR": str(tmp)}
    seen: list[str] = []
    process = subprocess.Popen([*FLOWRIG, "run", str(project)], env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    while process.poll() is None:
        try:
            seen += [" ".join(p.cmdline()) for p in psutil.Process(process.pid).children()]
        except psutil.Error:
            pass
        time.sleep(0.02)
    stderr = process.stderr.read()
    assert process.returncode == 2, stderr
    assert "missing.py" in stderr and "Traceback" not in stderr, stderr
    assert any("flowrig.api.serve" in line for line in seen), seen  # it was spawned
    assert_nothing_left(marker)
    assert _folders(tmp) == []


def test_a_runner_killed_before_it_configured_its_api_leaves_nothing(tmp_path):
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    marker = uuid.uuid4().hex
    code = textwrap.dedent(
        """
        import os, signal, sys
        from flowrig.api import EmbeddedPrefectAPI

        api = EmbeddedPrefectAPI().spawn()
        print(api._process.pid, flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
        """
    )
    done = subprocess.run([sys.executable, "-c", code], env={**marked_env(marker), "TMPDIR": str(tmp)},
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == -signal.SIGKILL, done.stderr[-2000:]
    server = int(done.stdout.split()[0])
    # It notices once its import is done (or its parent watch does, within half a second).
    deadline = time.monotonic() + 60
    while psutil.pid_exists(server) and psutil.Process(server).status() != psutil.STATUS_ZOMBIE:
        assert time.monotonic() < deadline, "the API outlived its runner"
        time.sleep(0.1)
    assert_nothing_left(marker)
    assert _folders(tmp) == []


def test_workers_do_not_import_every_prefect_collection(tmp_path):
    flow = """
        import sys
        from prefect import flow, task

        @task
        def collections(_: int) -> list[str]:
            return sorted(n for n in ("prefect_aws", "prefect_docker") if n in sys.modules)

        @flow
        def main() -> list:
            return [names for names in collections.map(range(4)).result()]
    """
    project = write_project(tmp_path / "project", flow, 'flow = "flow.py:main"\n\n[cluster]\nn_workers = 2\n')
    marker = uuid.uuid4().hex
    done = subprocess.run([*FLOWRIG, "run", str(project), "--output", "json"], env=marked_env(marker),
                          capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    outcome = json.loads(done.stdout.strip().splitlines()[-1])
    assert outcome["result"] == [[], [], [], []], outcome
    assert_nothing_left(marker, outcome["scheduler_address"])
