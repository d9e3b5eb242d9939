"""``[[cluster.worker_groups]]`` on the docker backend, end to end: ``flowrig run --backend
docker`` of an image whose baked project has two groups. The host starts one container
per group worker, named by its group (``flowrig-RUN-worker-gpu-1``), as the image's
project allows; each tagged task runs on its group's workers (what the task runs say of
the worker that ran them), the untagged ones anywhere; the ``cpu`` group's containers
have its shape (``cpu = 0.5``, ``memory = "1GiB"``) as their limits, the others none. An
adaptive group grows from no container for its tagged tasks and retires its containers
once they are done."""

from __future__ import annotations

import json
import subprocess
import threading
import uuid

import pytest

from flowrig.containers import engine
from tests.docker_support import derived_image, docker_run_env, inspected, listed
from tests.groups_support import GROUPS_FLOW, check_routing, groups_toml
from tests.run_support import FLOWRIG_SCRIPT, write_project

pytestmark = pytest.mark.docker


def test_tagged_tasks_run_on_their_groups_containers(docker_client, seed_image, tmp_path):
    toml = groups_toml("docker").rstrip() + '\n    cpu = 0.5\n    memory = "1GiB"\n'  # the last group's, cpu
    project = write_project(tmp_path / "groups", GROUPS_FLOW, toml)
    run_id = "g" + uuid.uuid4().hex[:9]
    seen: dict[str, tuple[int, int]] = {}
    done_event = threading.Event()

    def watch() -> None:
        # The run's containers as they come: their names and CPU and memory limits,
        # whatever the run ends with.
        label = {"label": f"flowrig.run-id={run_id}"}
        while not done_event.wait(0.5):
            for c in inspected(docker_client, label):
                host = c.attrs.get("HostConfig") or {}
                seen[c.name] = (host.get("NanoCpus") or 0, host.get("Memory") or 0)

    with derived_image(docker_client, seed_image, project, "flowrig-groups") as tag:
        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        try:
            done = subprocess.run(
                [FLOWRIG_SCRIPT, "run", str(project), "--backend", "docker", "--image", tag, "--output", "json"],
                env=docker_run_env(run_id), capture_output=True, text=True, timeout=300,
            )
        finally:
            done_event.set()
            watcher.join()
            engine.remove_run(docker_client, run_id)
    assert done.returncode == 0, done.stderr[-3000:]
    outcome = json.loads(done.stdout.strip().splitlines()[-1])
    assert outcome["state"] == "Completed" and outcome["n_workers"] == 3
    check_routing(outcome["result"])
    workers = {name: limits for name, limits in seen.items() if "-worker-" in name}
    assert set(workers) == {f"flowrig-{run_id}-worker-{w}" for w in ("gpu-1", "cpu-1", "cpu-2")}, seen
    assert workers[f"flowrig-{run_id}-worker-gpu-1"] == (0, 0), seen
    assert workers[f"flowrig-{run_id}-worker-cpu-1"] == workers[f"flowrig-{run_id}-worker-cpu-2"] == (
        500_000_000, 2**30), seen


#: Untagged tasks, then tasks tagged for the adaptive group ``burst`` (1.5 s each); each
#: says which worker ran it. ``census`` (untagged, on ``base``) lists the cluster's
#: workers before them and, until ``burst`` has shrunk, after them.
ADAPT_FLOW = """
    import time

    from distributed import get_client, get_worker
    from prefect import flow, task
    from prefect.runtime import task_run


    @task(tags=["burst"])
    def work(i: int):
        time.sleep(1.5)
        return [task_run.name, str(get_worker().name)]


    @task
    def anywhere(i: int):
        return [task_run.name, str(get_worker().name)]


    @task
    def census():
        return sorted(str(w["name"]) for w in get_client().scheduler_info()["workers"].values())


    @flow
    def main(n: int = 4):
        before = census.submit().result()
        plain = [f.result() for f in [anywhere.submit(i) for i in range(n)]]
        ran = [f.result() for f in [work.submit(i) for i in range(n)]]
        after, deadline = [], time.monotonic() + 30
        while time.monotonic() < deadline:
            after = census.submit().result()
            if not any(name.startswith("burst-") for name in after):
                break
            time.sleep(0.5)
        return {"before": before, "plain": plain, "ran": ran, "after": after}
"""

ADAPT_TOML = """
    flow = "flow.py:main"

    [cluster]
    backend = "docker"
    max_workers = 3

    [[cluster.worker_groups]]
    name = "base"

    [[cluster.worker_groups]]
    name = "burst"
    worker_threads = 1
    adapt = { minimum = 0, maximum = 2 }
"""


def test_an_adaptive_group_grows_from_none_runs_its_tasks_and_retires_its_containers(
        docker_client, seed_image, tmp_path):
    """``adapt = { minimum = 0, maximum = 2 }`` on docker: the group has no container at
    the start, grows to two for its four tagged tasks, which all run on its workers, and
    once they are done its workers are retired during the run: none is lost, none is
    started again in its place."""
    project = write_project(tmp_path / "adapt", ADAPT_FLOW, ADAPT_TOML)
    run_id = "a" + uuid.uuid4().hex[:9]
    seen: set[str] = set()
    done_event = threading.Event()

    def watch() -> None:
        label = {"label": f"flowrig.run-id={run_id}"}
        while not done_event.wait(0.5):
            seen.update(listed(docker_client, label))

    with derived_image(docker_client, seed_image, project, "flowrig-adapt") as tag:
        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        try:
            done = subprocess.run(
                [FLOWRIG_SCRIPT, "run", str(project), "--backend", "docker", "--image", tag, "--output", "json"],
                env=docker_run_env(run_id), capture_output=True, text=True, timeout=300,
            )
        finally:
            done_event.set()
            watcher.join()
            engine.remove_run(docker_client, run_id)
    assert done.returncode == 0, done.stderr[-3000:]
    outcome = json.loads(done.stdout.strip().splitlines()[-1])
    assert outcome["state"] == "Completed", outcome
    result = outcome["result"]
    assert result["before"] == ["base-1"], result  # the group starts with no worker
    assert {worker for _, worker in result["plain"]} == {"base-1"}, result
    ran = {worker for _, worker in result["ran"]}
    assert len(result["ran"]) == 4 and ran == {"burst-1", "burst-2"}, result  # it grew to its maximum
    assert result["after"] == ["base-1"], result  # and shrank while the flow still ran
    # Retired, not lost: nothing was started again in their place, and no loss was said.
    workers = {name for name in seen if "-worker-" in name}
    assert workers == {f"flowrig-{run_id}-worker-{w}" for w in ("base-1", "burst-1", "burst-2")}, seen
    assert outcome["usage"]["roles"]["worker:burst"]["count"] == 2, outcome["usage"]
    assert " lost" not in done.stderr and "starting it again" not in done.stderr, done.stderr[-3000:]
