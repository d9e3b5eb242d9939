"""Workers that run out of memory, told to the person running the flow.

A docker worker that uses too much memory goes one of two ways, and neither reaches
the run's output by itself (the worker containers' logs are not shown):

- its nanny restarts it past 95 % of its memory limit (``worker_memory``), and logs an
  event on the scheduler (:mod:`flowrig.internals.dask_events`);
- the kernel kills a process of its container for going over the container's limit:
  the Docker engine reports an ``oom`` event, and the container's ``OOMKilled`` state.

Either way the scheduler runs the worker's tasks again elsewhere, and a task that takes
workers down this way three times ends the run with ``KilledWorker``, which names no
cause. :class:`MemoryWatch` follows both sources on the host and says, as it happens
and again at the end, which worker ran out of memory, against which limit, and the fix.
"""

from __future__ import annotations

import re
import threading
from collections import Counter
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

from flowrig.backends.docker.naming import container_name
from flowrig.containers.engine import watch_events
from flowrig.containers.labels import LABEL_ROLE

if TYPE_CHECKING:
    from docker import DockerClient

    from flowrig.backends.docker.cluster import DockerCluster

#: What a person does when the machine's memory, not a limit, ran out.
NO_LIMIT = (
    "the workers have no worker_memory limit, so this was the machine's memory: run fewer or smaller "
    "tasks per worker, or on a machine with more memory"
)


def fix(limit: str | None) -> str:
    """What a person changes when workers run out of memory."""
    if not limit:
        return NO_LIMIT
    return f"raise [cluster.options] worker_memory (now {limit}) in flowrig.toml, or give each worker fewer threads"


@dataclass(frozen=True)
class MemoryKill:
    """One worker (or role) that ran out of memory.

    ``who`` names it (``worker 0``), ``container`` is its container's name, ``how``
    is ``restarted`` (by its nanny) or ``killed`` (by the kernel), ``rss`` the bytes
    it used when the nanny stopped it.
    """

    who: str
    container: str
    how: str
    rss: int | None = None


def _mib(size: int) -> str:
    return f"{size / 2**20:.0f} MiB"


def render_kill(kill: MemoryKill, limit: str | None) -> str:
    """The line said when a worker runs out of memory."""
    budget = f"its memory limit of {limit}" if limit else "the memory Dask gave it"
    if kill.how == "restarted":
        used = f"it used {_mib(kill.rss)}, " if kill.rss else ""
        return (
            f"{kill.who} (container {kill.container}) ran out of memory: {used}over 95% of {budget}, and it "
            f"was restarted (its tasks run again); {fix(limit)}"
        )
    return f"{kill.who} (container {kill.container}) was killed by the kernel for going over {budget}; {fix(limit)}"


def render_summary(kills: list[MemoryKill], limit: str | None) -> str | None:
    """The run's last word on memory, when something ran out of it."""
    if not kills:
        return None
    counts = Counter(kill.who for kill in kills)
    each = ", ".join(f"{who}: {n} time{'s' if n > 1 else ''}" for who, n in sorted(counts.items()))
    return (
        f"workers ran out of memory during the run ({each}); a task that takes more than 3 workers down "
        f"this way fails the run with KilledWorker: {fix(limit)}"
    )


_WORKER_CONTAINER = re.compile(r"-worker-(?P<name>[^/]+)$")


def _who(container: str, role: str | None) -> str:
    if role == "worker":
        found = _WORKER_CONTAINER.search(container)
        return f"worker {found['name']}" if found else "a worker"
    return f"the {role or 'run'}'s container"


class MemoryWatch:
    """Follows a run's memory kills on the host (Docker ``oom`` events, the scheduler's
    restart events) and says each once, through ``say``.

    Parameters
    ----------
    client, run_id
        The engine and the run whose containers are watched.
    say
        Writes one line to the run's output.
    """

    def __init__(self, client: "DockerClient", run_id: str, say: Callable[[str], None]) -> None:
        self.run_id = run_id
        self.say = say
        #: The workers' memory limit as the project gives it (e.g. ``"400m"``).
        self.limit: str | None = None
        self.kills: list[MemoryKill] = []
        self._lock = threading.Lock()
        self._names: dict[str, str] = {}
        self._seen: set[tuple[float, Any]] = set()
        self._events = watch_events(client, run_id, ("oom",), self._oom)

    def _record(self, kill: MemoryKill) -> None:
        with self._lock:
            self.kills.append(kill)
        self.say(render_kill(kill, self.limit))

    def _oom(self, event: dict[str, Any]) -> None:
        attributes = (event.get("Actor") or {}).get("Attributes") or {}
        name = str(attributes.get("name") or event.get("id", "?")[:12])
        role = attributes.get(LABEL_ROLE)
        self._record(MemoryKill(_who(name, role), name, "killed"))

    def note_workers(self, workers: dict[str, Any]) -> None:
        """Remember each worker's name by its address (``scheduler_info["workers"]``):
        a restart event names the address of a process that has gone."""
        for address, info in workers.items():
            name = (info or {}).get("name")
            if name is not None:
                self._names[address] = str(name)

    def poll(self, cluster: "DockerCluster") -> None:
        """Say the memory restarts the cluster's scheduler recorded since the last poll."""
        from flowrig.internals.dask_events import memory_restart_events

        try:
            found = cluster.sync(memory_restart_events, cluster.scheduler_comm, callback_timeout=5)
        except Exception:  # the scheduler is gone or busy: the next poll, or nothing
            return
        for when, event in found:
            key = (when, event.get("pid"))
            if key in self._seen:
                continue
            self._seen.add(key)
            address = str(event.get("worker") or "")
            name = self._names.get(address)
            who = f"worker {name}" if name is not None else f"the worker at {address}"
            container = container_name(self.run_id, "worker", name) if name is not None else "?"
            rss = event.get("rss")
            self._record(MemoryKill(who, container, "restarted", int(rss) if isinstance(rss, (int, float)) else None))

    def summary(self) -> str | None:
        """The last line on memory, if anything ran out of it."""
        with self._lock:
            return render_summary(list(self.kills), self.limit)

    def stop(self) -> None:
        """Stop following the engine's events (safe twice)."""
        self._events.stop()
