"""What a cluster's workers do, as news a run can tell: started, joined, lost (and why),
replaced, retired.

:func:`follow` watches a started ``distributed`` cluster with its public API only: the
workers it plans (:attr:`Cluster.plan`), those it has started (:attr:`Cluster.requested`:
a process, a container, a cloud task) and those that joined its scheduler
(``Cluster.scheduler_info``, which the cluster keeps current from the scheduler's own
stream of changes). Each check runs on the cluster's event loop, like its other
periodic callbacks, and stops when the cluster closes.

Why a worker went is the backend's to say: a cluster may define
``lost_reason(name: str) -> str | None`` (the local cluster: the exit code of its
process, or its memory limit; the docker cluster: its container's exit code and the
kernel's OOM kill; the cloud pool: the stop reason of its task, which names a spot
interruption). It runs in a thread (it may call an engine or a cloud API). When it has
no answer, the scheduler may: a worker's nanny, wherever it runs, tells it when it ends
its worker for memory (:mod:`flowrig.internals.dask_events`). Both are asked again
every :data:`REASON_RETRY` seconds until one answers, for at most :data:`REASON_WAIT`
seconds: a cloud task's stop is seen a few seconds after its worker left.

Nothing is watched unless someone listens (``on_news`` is ``None`` for a run that
reports to its own throwaway API): the cost of a run that tells nobody is unchanged.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

from dask.utils import format_bytes
from distributed.core import Status
from tornado.ioloop import PeriodicCallback

from flowrig.errors import one_line

logger = logging.getLogger("flowrig.watch")

#: Seconds between two checks of the cluster.
CHECK_INTERVAL = 0.25
#: Seconds between two questions to the backend about why a worker went.
REASON_RETRY = 1.0
#: Seconds a lost worker waits for its reason before it is told without one.
REASON_WAIT = 20.0
#: The name of the check among the cluster's periodic callbacks.
CALLBACK = "flowrig-watch"
#: Seconds a joined worker the cluster does not list as started waits to be told
#: joined: its start is told first (a launcher starts a batch of tasks in one call), and
#: a worker the cluster never started (a scheduler of someone else's) after that.
UNSTARTED_WAIT = 5.0

#: What news can be about.
KINDS = ("worker.started", "worker.joined", "worker.lost", "worker.replaced", "worker.retired")
#: Longest reason a piece of news carries.
REASON_WIDTH = 400


@dataclass(frozen=True)
class ClusterNews:
    """One thing a worker of the cluster did.

    Parameters
    ----------
    kind
        One of :data:`KINDS`.
    worker
        The worker's name.
    message
        One line for a person.
    joined
        Workers joined to the scheduler once this happened.
    reason
        Why a worker was lost (``worker.lost``), when the backend knows it.
    replaces
        The lost worker a ``worker.replaced`` one stands in for.
    at
        When it happened (``time.time()``).
    """

    kind: str
    worker: str
    message: str
    joined: int
    reason: str | None = None
    replaces: str | None = None
    at: float = field(default_factory=time.time)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Any) -> "ClusterNews":
        """News from :meth:`to_dict` (another process's); raises ``ValueError`` when it is not."""
        if not isinstance(data, dict) or data.get("kind") not in KINDS:
            raise ValueError(f"not cluster news: {data!r:.200}")
        text = {k: data.get(k) for k in ("worker", "message", "reason", "replaces")}
        if not all(v is None or isinstance(v, str) for v in text.values()) or text["worker"] is None:
            raise ValueError(f"not cluster news: {data!r:.200}")
        joined, at = data.get("joined"), data.get("at")
        if not isinstance(joined, int) or isinstance(joined, bool) or not isinstance(at, (int, float)):
            raise ValueError(f"not cluster news: {data!r:.200}")
        return cls(kind=data["kind"], joined=joined, at=float(at), **{
            k: (one_line(v, REASON_WIDTH) if v is not None else None) for k, v in text.items()
        })


def exit_text(code: int) -> str:
    """A process's exit status as words: ``killed by SIGKILL`` (a negative code, as
    Python reports it, or 128 + N, as a shell or container does), ``exit code 3``."""
    number = -code if code < 0 else code - 128 if code > 128 else None
    if number is not None:
        try:
            name = signal.Signals(number).name
        except ValueError:
            name = f"signal {number}"
        return f"killed by {name}" + (f" (exit code {code})" if code > 0 else "")
    return f"exit code {code}"


@dataclass
class _Leaving:
    address: str
    since: float
    planned: bool
    asked_at: float = 0.0
    asking: bool = False


class ClusterWatch:
    """Turns changes of a cluster's workers into :class:`ClusterNews` (see the module)."""

    def __init__(self, cluster: Any, on_news: Callable[[ClusterNews], None]) -> None:
        self.cluster = cluster
        self.on_news = on_news
        self.started: set[str] = set()
        self.joined: dict[str, str] = {}
        #: Workers started and not told yet, oldest first.
        self.starting: list[str] = []
        #: When a worker the cluster has not started (yet) was first seen joined.
        self.unstarted: dict[str, float] = {}
        self.leaving: dict[str, _Leaving] = {}
        #: Lost workers no new worker stands in for yet, oldest first.
        self.unreplaced: list[str] = []
        #: Memory limit of each worker that joined, by address.
        self.limits: dict[str, int] = {}
        self._reason = getattr(cluster, "lost_reason", None)

    # --- what the cluster says ---------------------------------------------------------
    def _names(self, names: Any) -> set[str]:
        return {str(name) for name in names}

    def _scheduler_workers(self) -> dict[str, str]:
        workers = self.cluster.scheduler_info.get("workers", {})
        for address, info in list(workers.items()):
            if isinstance(info.get("memory_limit"), int) and info["memory_limit"] > 0:
                self.limits[address] = info["memory_limit"]
        return {str(info.get("name", address)): address for address, info in list(workers.items())}

    def _tell(self, kind: str, worker: str, message: str, **fields: Any) -> None:
        try:
            self.on_news(ClusterNews(kind=kind, worker=worker, message=message, joined=len(self.joined), **fields))
        except Exception as exc:  # telling is for people: never break the cluster's loop
            logger.debug("news of worker %s not taken: %s", worker, exc)

    # --- one check ----------------------------------------------------------------------
    async def check(self) -> None:
        if self.cluster.status != Status.running:
            return  # closing: workers leave on purpose now
        try:
            self._check()
        except Exception as exc:  # a cluster in an odd state: look again next time
            logger.debug("watching the cluster failed: %s", exc)

    def _check(self) -> None:
        plan = self._names(self.cluster.plan)
        requested = self._names(self.cluster.requested)
        workers = self._scheduler_workers()
        for name in sorted(requested - self.started):
            self.started.add(name)
            self.starting.append(name)
        self.started &= requested
        for name, address in list(self.joined.items()):
            if workers.get(name) != address:
                # Gone, or back at another address (its nanny restarted it) before we looked.
                del self.joined[name]
                self.leaving[name] = _Leaving(address, time.time(), planned=name in plan)
        for name, leaving in list(self.leaving.items()):
            self._ask(name, leaving)
        # A worker started while another is lost but its reason not in yet (a cloud task's
        # stop is seen after its worker left) is told once that loss is: as its replacement.
        while self.starting and (self.unreplaced or not any(w.planned for w in self.leaving.values())):
            self._started(self.starting.pop(0))
        now = time.time()
        for name in sorted(set(workers) - set(self.joined) - set(self.starting)):
            if name not in requested and now - self.unstarted.setdefault(name, now) < UNSTARTED_WAIT:
                continue  # its start is not told yet (the backend's call that started it still runs)
            self.unstarted.pop(name, None)
            if name in self.leaving:
                self._resolve(name, self.leaving.pop(name), reason=None)
            if name in self.unreplaced:
                # Back under its name, and the cluster did not start it again: its nanny did.
                self.unreplaced.remove(name)
                self._tell("worker.replaced", name, f"worker {name} restarted by its nanny", replaces=name)
            self.joined[name] = workers[name]
            self._tell("worker.joined", name, f"worker {name} joined at {workers[name]}")

    def _started(self, name: str) -> None:
        if name in self.unreplaced:
            self.unreplaced.remove(name)
            self._tell("worker.replaced", name, f"worker {name} started again", replaces=name)
        elif self.unreplaced:
            lost = self.unreplaced.pop(0)
            self._tell("worker.replaced", name, f"worker {name} started in place of worker {lost}", replaces=lost)
        else:
            self._tell("worker.started", name, f"worker {name} started")

    def _ask(self, name: str, leaving: _Leaving) -> None:
        now = time.time()
        if leaving.asking or now - leaving.asked_at < REASON_RETRY:
            return
        if now - leaving.since > REASON_WAIT:
            self._resolve(name, self.leaving.pop(name), reason=None)
            return
        leaving.asking, leaving.asked_at = True, now
        asyncio.ensure_future(self._answer(name, leaving))

    async def _answer(self, name: str, leaving: _Leaving) -> None:
        try:
            reason = await self._reason_for(name, leaving)
        except Exception as exc:
            logger.debug("why worker %s went is not known: %s", name, exc)
            reason = None
        finally:
            leaving.asking = False
        if self.leaving.get(name) is not leaving:
            return  # resolved meanwhile (it came back)
        if reason or not leaving.planned:
            self._resolve(name, self.leaving.pop(name), reason=reason or None)

    async def _reason_for(self, name: str, leaving: _Leaving) -> str | None:
        """The backend's reason, else the scheduler's word that a nanny ended the worker
        for memory (a nanny in a container or a cloud task, which the backend cannot see)."""
        if self._reason is not None:
            reason = await asyncio.get_running_loop().run_in_executor(None, self._reason, name)
            if reason:
                return reason
        from flowrig.internals.dask_events import memory_restarts

        comm = getattr(self.cluster, "scheduler_comm", None)
        rss = (await memory_restarts(comm)).get(leaving.address) if comm is not None else None
        if rss is None:
            return None
        limit = self.limits.get(leaving.address)
        of = f" of its memory limit of {format_bytes(limit)}" if limit else ""
        return f"out of memory: it used {format_bytes(rss)}{of} and its nanny ended it"

    def _resolve(self, name: str, leaving: _Leaving, reason: str | None) -> None:
        """Tell that ``name`` went: lost (planned, or the backend knows why), else retired."""
        if not leaving.planned and not reason:
            self._tell("worker.retired", name, f"worker {name} retired (the cluster scaled down)")
            return
        text = one_line(reason, REASON_WIDTH) if reason else None
        self.unreplaced.append(name)
        self._tell("worker.lost", name, f"worker {name} lost: {text or 'it left the scheduler; why is not known'}",
                   reason=text)


def follow(cluster: Any, on_news: Callable[[ClusterNews], None] | None,
           interval: float = CHECK_INTERVAL) -> ClusterWatch | None:
    """Watch ``cluster`` (a started ``distributed`` cluster) and call ``on_news`` with
    what its workers do, on the cluster's event loop; ``None`` watches nothing.

    The check is one of the cluster's periodic callbacks, so it stops when the cluster
    closes (and says nothing once the cluster is closing).
    """
    if on_news is None or not hasattr(cluster, "plan") or not hasattr(cluster, "loop"):
        return None
    watch = ClusterWatch(cluster, on_news)

    def install() -> None:
        callback = PeriodicCallback(watch.check, interval * 1000)
        cluster.periodic_callbacks[CALLBACK] = callback
        callback.start()

    cluster.loop.add_callback(install)
    return watch
