"""A worker container stopped mid-map hands its work over (the stand-in for a Spot
notice: SIGTERM through the image's init), with real containers of the seed image
and a Prefect server of the test's own.

It leaves within its grace time, having drained (its supervisor says so in its log,
and it exits 0), the flow's result is right, and the server holds every task run
once, each ending COMPLETED: none failed, none was left RUNNING.
"""

from __future__ import annotations

import json
import subprocess
import time
import uuid

import pytest

from flowrig.containers import engine
from tests.docker_support import derived_image, docker_run_env
from tests.e2e.docker.test_run_told import Server
from tests.run_support import FLOWRIG_SCRIPT, RunWatcher, write_project

pytestmark = pytest.mark.docker

#: Seconds the stopped worker has to hand its work over ([cluster.options] drain_timeout).
DRAIN_TIMEOUT = 20
#: Tasks of the map: about 1.5 s each, on three one-thread workers.
TASKS = 24

DRAIN_FLOW = """
    import time
    from prefect import flow, task

    @task
    def step(x: int) -> int:
        time.sleep(1.0 + (x % 3) * 0.5)
        return x * 2

    @flow
    def drained(n: int = 24, tag: str = "") -> int:
        return sum(step.map(range(n)).result())
"""


def test_a_worker_stopped_mid_map_drains_and_every_task_run_completes(
    container_prefect_server, docker_client, seed_image, tmp_path
):
    toml = (f'flow = "flow.py:drained"\n[cluster]\nbackend = "docker"\nn_workers = 3\n'
            f"[cluster.options]\ndrain_timeout = {DRAIN_TIMEOUT}\n")
    project = write_project(tmp_path / "drain", DRAIN_FLOW, toml)
    run_id = "drain" + uuid.uuid4().hex[:6]
    with derived_image(docker_client, seed_image, project, "flowrig-drain") as image:
        env = {**docker_run_env(run_id), "PREFECT_API_URL": container_prefect_server}
        run = RunWatcher(subprocess.Popen(
            [FLOWRIG_SCRIPT, "run", str(project), "--backend", "docker", "--image", image, "--output", "json",
             "--param", f"n={TASKS}", "--param", f"tag={run_id}"],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
        process = run.process
        try:
            run.wait_for("Beginning flow run", 300)
            time.sleep(4)  # every worker is in the middle of a task
            victim = docker_client.containers.get(f"flowrig-{run_id}-worker-0")
            victim.kill(signal="SIGTERM")
            noticed = time.monotonic()
            exit_code = victim.wait(timeout=DRAIN_TIMEOUT + 10)["StatusCode"]
            left_after = time.monotonic() - noticed
            log = victim.logs().decode("utf-8", "replace")
            out, _ = process.communicate(timeout=300)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
            engine.remove_run(docker_client, run_id)
    err = run.tail(10**6)
    assert process.returncode == 0, err[-3000:]
    assert json.loads(out.strip().splitlines()[-1])["result"] == 2 * sum(range(TASKS))

    # It drained (did not just stop), and left within its grace time.
    assert "flowrig-drain: drained after SIGTERM" in log, log[-3000:]
    assert exit_code == 0, log[-3000:]
    assert left_after < DRAIN_TIMEOUT + 5, (left_after, log[-3000:])

    server = Server(container_prefect_server)
    [flow_run] = [r for r in server.flow_runs("drained") if r.parameters.get("tag") == run_id]
    assert flow_run.state.is_completed()
    task_runs = server.task_runs(flow_run.id)
    assert len(task_runs) == TASKS, [t.name for t in task_runs]
    assert sorted(t.state.type.value for t in task_runs) == ["COMPLETED"] * TASKS, [
        (t.name, t.state.type.value) for t in task_runs
    ]
