"""The lives of a docker run's containers (:mod:`flowrig.backends.usage`), by the
engine's own clock: each container's ``State.StartedAt`` and ``FinishedAt``, read
before it is removed. Its shape is its limits where it has them, else the engine's
(a container without a CPU limit may use every CPU of the host). The host is the
user's own machine: nothing is priced.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from flowrig.backends.usage import LOCAL, LifeLog, Placement, RoleLife
from flowrig.common.routes import group_of_worker
from flowrig.containers.engine import lifetime, limits

if TYPE_CHECKING:
    from docker.models.containers import Container

#: Bytes in a GiB.
GIB = 1024**3


def placement(container: "Container", host: tuple[int, int]) -> Placement:
    """The shape of a started container: its limits, else the engine's ``host``
    (CPUs, memory bytes), and the GPUs its device requests asked for (a worker group's)."""
    cpus, memory = limits(container)
    return Placement(market=LOCAL, vcpu=float(cpus or host[0]), memory_gib=(memory or host[1]) / GIB,
                     gpus=_gpus(container))


def _gpus(container: "Container") -> int:
    try:
        requests = (container.attrs.get("HostConfig") or {}).get("DeviceRequests") or []
    except Exception:
        return 0
    return sum(max(0, int(r.get("Count") or 0)) for r in requests if ["gpu"] in (r.get("Capabilities") or []))


def log_start(lives: LifeLog, container: "Container", role: str, host: tuple[int, int]) -> None:
    """A started container's life begins, at its engine start time; a worker's in its
    worker group (its name after ``-worker-``: ``GROUP-N``)."""
    started, _ = lifetime(container)
    group = group_of_worker(container.name.partition("-worker-")[2]) if role == "worker" else ""
    lives.started(container.name, role, placement(container, host), group=group, at=started)


def log_end(lives: LifeLog, container: "Container") -> None:
    """A stopped container's life ends, at its engine finish time (read before removal)."""
    started, finished = lifetime(container)
    lives.ended(container.name, at=finished, started=started)


def container_life(container: "Container", role: str, host: tuple[int, int]) -> RoleLife:
    """The life of a running container so far (its end still open): the runner's,
    which only the host sees start."""
    started, _ = lifetime(container)
    # The engine not saying (it always does for a started container): from now.
    return RoleLife(role, container.name, started if started is not None else time.time(), None,
                    placement(container, host))
