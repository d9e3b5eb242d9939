"""How a docker cluster starts: its first workers' containers beside the scheduler's,
and the start goes on once every one of them has joined."""

from __future__ import annotations

from datetime import datetime

import pytest

from flowrig.backends import docker as dk
from flowrig.containers import engine


def _when(text: str) -> datetime:
    # Docker's RFC 3339 with nanoseconds: keep microseconds for fromisoformat.
    head, _, rest = text.rstrip("Z").partition(".")
    return datetime.fromisoformat(f"{head}.{(rest + '000000')[:6]}+00:00")


@pytest.mark.docker
def test_first_workers_start_beside_the_scheduler_and_all_join_before_the_start_returns(
    docker_client, seed_image, tls
):
    cluster = dk.DockerCluster(seed_image, n_workers=2, tls=tls, client=docker_client)
    run_id = cluster.run_id
    try:
        joined = cluster.wait_for_first_workers(2, 120)
        assert joined == 2 and len(cluster.scheduler_info["workers"]) == 2
        scheduler = docker_client.containers.get(f"flowrig-{run_id}-scheduler")
        logged = scheduler.logs(timestamps=True).decode()
        ready = next(line for line in logged.splitlines() if "Scheduler at:" in line)
        ready_at = _when(ready.split(" ", 1)[0])
        for name in (0, 1):
            worker = docker_client.containers.get(f"flowrig-{run_id}-worker-{name}")
            # Started before the scheduler listened: their imports overlapped its own.
            assert _when(worker.attrs["State"]["StartedAt"]) < ready_at
        # The workers the cluster knows are those containers, not others started again.
        assert sorted(cluster.workers) == [0, 1]
        assert {c.name for c in cluster.worker_containers()} == {
            f"flowrig-{run_id}-worker-0", f"flowrig-{run_id}-worker-1"
        }
        cluster.close()
        assert engine.run_containers(docker_client, run_id) == []
    finally:
        engine.remove_run(docker_client, run_id)
