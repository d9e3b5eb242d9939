"""Waiting for a docker cluster's workers to join before its flow starts.

A flow started on the first worker to join while the others still start shares the
machine with their imports, and its tasks are then moved again onto the late ones: a
run of many tasks took longer that way than one that waited. The local backend's
cluster also starts its flow with every worker it asked for. So the start waits for
all the workers it starts with, but never fails for a late one: once one has joined,
it waits at most :data:`ALL_JOINED_GRACE` more seconds, and not at all for containers
that have exited (the cluster starts those again).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from flowrig.containers.engine import container_logs_tail
from flowrig.errors import InfrastructureError

if TYPE_CHECKING:
    from flowrig.backends.docker.cluster import DockerCluster

#: Seconds a start waits for the rest of its workers once the first has joined.
ALL_JOINED_GRACE = 30.0
_POLL = 0.1


def enough_joined(joined: int, wanted: int, on_the_way: int, since_first: float | None,
                  grace: float = ALL_JOINED_GRACE, all_of_them: bool = False) -> bool:
    """Whether a start may go on with ``joined`` workers.

    Parameters
    ----------
    joined
        Workers the scheduler knows.
    wanted
        Workers the cluster starts with.
    on_the_way
        Worker containers running that have not joined yet.
    since_first
        Seconds since the first worker joined (``None``: none has).
    all_of_them
        Only ``wanted`` workers will do (worker groups).
    """
    if joined >= max(wanted, 1):
        return True
    if all_of_them or joined < 1 or since_first is None:
        return False
    return on_the_way <= 0 or since_first >= grace


def wait_for_workers(cluster: "DockerCluster", wanted: int, timeout: float,
                     grace: float = ALL_JOINED_GRACE, all_of_them: bool = False) -> int:
    """Block until the workers the cluster starts with have joined (see the module);
    with ``all_of_them``, every one of them (worker groups).

    Returns
    -------
    int
        The workers joined when the start goes on.

    Raises
    ------
    InfrastructureError
        When every worker container has exited before one joined, or too few joined
        within ``timeout`` seconds; the message holds a worker's last log lines.
    """
    deadline = time.monotonic() + timeout
    first: float | None = None
    last_check = 0.0
    on_the_way = wanted
    while True:
        joined = len(cluster.scheduler_info.get("workers", {}))
        now = time.monotonic()
        if joined and first is None:
            first = now
        if enough_joined(joined, wanted, on_the_way, None if first is None else now - first, grace, all_of_them):
            return joined
        if now - last_check >= 0.5:  # asking the engine is slower than asking the scheduler
            last_check = now
            containers = cluster.worker_containers()
            for c in containers:
                c.reload()
            running = [c for c in containers if c.status not in ("exited", "dead")]
            on_the_way = len(running) - joined
            if containers and not running and (not joined or all_of_them):
                c = containers[0]
                raise InfrastructureError(
                    f"worker container {c.name} exited (code {c.attrs['State'].get('ExitCode')}) "
                    f"before joining the scheduler: {container_logs_tail(c)}"
                )
            if now > deadline:
                if joined and not all_of_them:
                    return joined
                tail = container_logs_tail(containers[0]) if containers else "no worker container"
                which = f"{joined} of {wanted} workers" if all_of_them and wanted > 1 else "no worker"
                raise InfrastructureError(f"{which} joined the scheduler within {timeout:.0f} s: {tail}")
        time.sleep(_POLL)
