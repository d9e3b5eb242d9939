"""``[[cluster.worker_groups]]`` on the docker backend, end to end: ``flowrig run --backend
docker`` of an image whose baked project has two groups. The host starts one container
per group worker, named by its group (``flowrig-RUN-worker-gpu-1``), as the image's
project allows; each tagged task runs on its group's workers (what the task runs say of
the worker that ran them), the untagged ones anywhere; the ``cpu`` group's containers
have its shape (``cpu = 0.5``, ``memory = "1GiB"``) as their limits, the others none."""

from __future__ import annotations

import json
import subprocess
import threading
import uuid

import pytest

from flowrig.containers import engine
from tests.docker_support import derived_image, docker_run_env
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
            for c in docker_client.containers.list(all=True, filters=label):
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
