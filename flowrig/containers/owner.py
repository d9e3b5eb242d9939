"""Which process owns a run's containers, and whether it still runs.

Every container and network flowrig creates carries the label :data:`LABEL_OWNER`:
the machine (host name and boot time), the process id and the process's start time of
the process that created it (the docker backend's host process, or the Python process
that made a ``DockerCluster``). Docker labels cannot change after creation, so a
heartbeat label is not possible; the process itself is the lease: while it runs, the
run is live, and a leftovers command never touches it. Its start time tells a reused
process id apart.

A process on another machine (an engine shared through ``DOCKER_HOST``) or in another
process namespace cannot be checked from here: :func:`alive` says ``None`` then, and
callers treat such a run as live while any of its containers runs.
"""

from __future__ import annotations

import functools
import json
import os
import socket
from dataclasses import dataclass
from typing import Any

#: The label that names a container's or network's owning process.
LABEL_OWNER = "flowrig.owner"
#: Start times agree to this many seconds (they are computed from clock ticks).
START_TOLERANCE = 0.05


@dataclass(frozen=True)
class Owner:
    """A process, as the owner label records it."""

    host: str
    boot: int
    pid: int
    started: float

    def label(self) -> str:
        """The label's value."""
        return json.dumps(
            {"host": self.host, "boot": self.boot, "pid": self.pid, "started": round(self.started, 2)},
            separators=(",", ":"), sort_keys=True,
        )

    def describe(self) -> str:
        """E.g. ``flowrig process 1234 on laptop``."""
        return f"flowrig process {self.pid} on {self.host}"


def parse(value: str | None) -> Owner | None:
    """The owner in a label's value; ``None`` when absent or not flowrig's."""
    if not value:
        return None
    try:
        data: Any = json.loads(value)
        return Owner(
            host=str(data["host"]), boot=int(data["boot"]), pid=int(data["pid"]), started=float(data["started"])
        )
    except (ValueError, TypeError, KeyError):
        return None


def _machine() -> tuple[str, int]:
    import psutil

    return socket.gethostname(), int(psutil.boot_time())


def process(pid: int) -> Owner | None:
    """The owner record of a running process of this machine (``None`` when gone)."""
    import psutil

    host, boot = _machine()
    try:
        started = psutil.Process(pid).create_time()
    except (psutil.NoSuchProcess, psutil.ZombieProcess):
        return None
    return Owner(host=host, boot=boot, pid=pid, started=started)


@functools.lru_cache(maxsize=1)
def _current(pid: int) -> str:
    me = process(pid)
    assert me is not None
    return me.label()


def current_label() -> str:
    """This process's owner label (a forked child gets its own)."""
    return _current(os.getpid())


def alive(owner: Owner) -> bool | None:
    """Whether ``owner`` still runs: ``None`` when this machine cannot tell (another
    machine or boot, or a process it may not inspect)."""
    import psutil

    if (owner.host, owner.boot) != _machine():
        return None
    if not psutil.pid_exists(owner.pid):
        return False
    try:
        found = psutil.Process(owner.pid)
        if found.status() == psutil.STATUS_ZOMBIE:
            return False  # killed, not yet reaped by its parent
        started = found.create_time()
    except (psutil.NoSuchProcess, psutil.ZombieProcess):
        return False
    except psutil.AccessDenied:
        return None  # it exists; whose it is, this user cannot see
    return abs(started - owner.started) <= START_TOLERANCE
