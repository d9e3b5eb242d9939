"""A task Dask gives up on (``KilledWorker``: it takes its worker down) ends Crashed on
the run's Prefect server, never left RUNNING; the flow's outcome is as before (it
fails, naming ``KilledWorker``), and the other task runs are untouched. A real local
run over TLS, reporting to a server of the test's own."""

from __future__ import annotations

import json
import subprocess
import uuid

from tests.run_support import FLOWRIG, marked_env, write_project

DOOMED_FLOW = """
    import os
    import signal
    import time
    from prefect import flow, task

    @task
    def fine(x: int) -> int:
        return x

    @task
    def doomed(x: int) -> int:
        time.sleep(2)  # its Running state reaches the server first
        os.kill(os.getpid(), signal.SIGKILL)  # its worker process goes with it
        return x

    @flow
    def lost_tasks(tag: str = "") -> int:
        first = fine.submit(1).result()
        return first + doomed.submit(2).result()
"""


def _task_runs(url: str, tag: str) -> dict[str, tuple[str, str]]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowFilter, FlowFilterName, FlowRunFilter, FlowRunFilterId
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings(updates={PREFECT_API_URL: url}), get_client(sync_client=True) as client:
        [flow_run] = [r for r in client.read_flow_runs(flow_filter=FlowFilter(name=FlowFilterName(any_=["lost-tasks"])))
                      if r.parameters.get("tag") == tag]
        runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run.id])))
    return {r.name.split("-")[0]: (r.state.type.value, r.state.message or "") for r in runs}


def test_a_task_dask_gave_up_on_ends_crashed_not_running(prefect_server, tmp_path):
    project = write_project(tmp_path / "lost", DOOMED_FLOW,
                            'flow = "flow.py:lost_tasks"\n[cluster]\nn_workers = 1\n')
    tag = "t" + uuid.uuid4().hex[:8]  # never read as a number by --param (e.g. 12e45678)
    env = {**marked_env(tag), "PREFECT_API_URL": prefect_server,
           # The first worker it takes down ends it (3 by default: only slower).
           "DASK_DISTRIBUTED__SCHEDULER__ALLOWED_FAILURES": "0"}
    done = subprocess.run([*FLOWRIG, "run", str(project), "--param", f"tag={tag}", "--output", "json"],
                          env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 1, done.stderr[-3000:]
    outcome = json.loads(done.stdout.strip().splitlines()[-1])
    assert "KilledWorker" in outcome["error"], outcome
    runs = _task_runs(prefect_server, tag)
    assert runs["fine"][0] == "COMPLETED", runs
    state, message = runs["doomed"]
    assert state == "CRASHED", runs
    assert "KilledWorker" in message, runs
