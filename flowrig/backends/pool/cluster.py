"""A cluster whose scheduler and workers a :class:`~flowrig.backends.pool.launcher.Launcher` starts: ECS tasks, VMs.

:class:`PoolCluster` is flowrig's own cluster manager on distributed's public API (the
:class:`distributed.deploy.Cluster` base, its scheduler RPC and ``Adaptive``). A backend
supplies only a :class:`~flowrig.backends.pool.launcher.Launcher`: how to start the scheduler and a batch of workers,
how to observe all of them in one call, and how to stop them. The pool owns what every
cloud backend needs the same way:

- a start deadline: the scheduler and the first workers either come up in time or the
  start fails with what was still pending;
- stop reasons: a role that stops is reported with the launcher's one-line reason;
- one observation of every role per poll, at a rate that backs off while nothing changes
  (from :data:`POLL_MIN` to :data:`POLL_MAX` seconds, and back to the minimum on a change);
- partial starts: the start goes on when at least the minimum of workers joined, and
  fails at once, with the reasons, when too few of the workers asked for are left;
- workers that stop after joining are replaced, so the cluster returns to its size, by
  the rule every backend shares (:class:`~flowrig.backends.lost_workers.Replacements`).

Worker names are chosen by the launcher (an ECS worker is named after its task), so the
scheduler's view (workers by name) and the pool's match, and adaptive scaling retires
by name.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

from distributed.core import Status, rpc
from distributed.deploy import Cluster
from distributed.utils import LoopRunner, NoOpAwaitable

from flowrig.backends.lost_workers import Replacements
from flowrig.backends.pool.adaptive import PoolAdaptive
from flowrig.backends.pool.groups import NO_GROUP, GroupBook, count_by_group
from flowrig.backends.pool.launcher import Endpoint, Launcher, Observed, StartTimeout
from flowrig.backends.pool.start_wait import reasons as _reasons
from flowrig.backends.pool.start_wait import wait_for_workers
from flowrig.backends.usage import LifeLog, Placement
from flowrig.errors import FlowrigError, InfrastructureError, one_line

logger = logging.getLogger("flowrig.pool")

#: Seconds between two observations of the roles, at first and at most.
#: The maximum bounds how late a stopped role is noticed (the start fails within it).
POLL_MIN = 1.0
#: The scheduler's name among the roles' lives.
SCHEDULER = "scheduler"
POLL_MAX = 5.0


@dataclass
class _Worker:
    handle: str
    since: float
    joined: bool = False
    #: The worker group it was started for (``""``: the cluster has none).
    group: str = NO_GROUP
    #: Being retired by adaptive scaling: its stop is no loss to replace.
    retiring: bool = False
    state: Observed = field(default_factory=lambda: Observed("pending"))


async def _in_thread(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(None, functools.partial(fn, *args, **kwargs))


class PoolCluster(Cluster):
    """A Dask cluster whose roles a :class:`Launcher` starts.

    Parameters
    ----------
    launcher
        Starts, observes and stops the roles.
    security
        The run's :class:`distributed.security.Security` (mutual TLS).
    n_workers
        Workers to start with; :meth:`scale` and :meth:`adapt` work as usual.
    start_timeout
        Seconds the scheduler may take until it answers; the clock starts here.
    scheduler_address
        A running scheduler to use instead of starting one (it is left running).
    name
        Name of the cluster (shown by distributed).
    """

    def __init__(
        self,
        launcher: Launcher,
        *,
        security: Any,
        n_workers: int = 0,
        start_timeout: float = 600.0,
        scheduler_address: str | None = None,
        name: str | None = None,
    ) -> None:
        self.launcher = launcher
        self.security = security
        self.deadline = time.monotonic() + start_timeout
        self.start_timeout = start_timeout
        self.workers: dict[str, _Worker] = {}
        #: Lost workers replaced, and one line per worker that stopped before it joined or
        #: was never started, oldest first; whether the pool may still replace.
        self.replacements = Replacements(lambda: self.book.total)
        #: Workers asked of the launcher, and how many of those it started.
        self.asked = 0
        self.started = 0
        # While :meth:`wait_for_start` decides, workers that did not start are not
        # replaced: the start goes on with the others or fails at once.
        self._deciding = False
        #: Why the launcher refused to start workers (permissions, parameters): waiting
        #: does not change that, so :meth:`wait_for_start` raises it at once.
        self.start_error: FlowrigError | None = None
        # Why each worker that stopped stopped, by name.
        self._lost: dict[str, str] = {}
        #: Workers wanted, by group; lost ones are replaced in their own group, and (by
        #: the launcher) in their own market.
        self.book = GroupBook()
        self.book.set_total(n_workers)
        #: The roles' lives (:mod:`flowrig.backends.usage`), by this process's clock: from
        #: the start asked to the stop asked or seen.
        self.life_log = LifeLog()
        self._existing = scheduler_address
        self._scheduler_handle: str | None = None
        self._endpoint: Endpoint | None = None
        self._watcher: asyncio.Task | None = None
        #: When the scheduler answered (``time.perf_counter()``).
        self.scheduler_up_at: float | None = None
        self._lock: asyncio.Lock | None = None
        #: The scaling of each adaptive worker group (:mod:`flowrig.backends.pool.adaptive`).
        self.group_adaptives: list[Any] = []
        # A loop of our own, so that a failed start can stop it (distributed's clusters
        # leave theirs running when their start fails).
        self._own_loop = LoopRunner(asynchronous=False)
        self._own_loop.start()
        super().__init__(asynchronous=False, loop=self._own_loop.loop, name=name)
        try:
            self.sync(self._start)
        except BaseException:
            self._own_loop.stop()
            raise

    # --- start ---------------------------------------------------------------------
    async def _start(self) -> None:
        self.status = Status.starting
        self._lock = asyncio.Lock()
        try:
            if self._existing:
                self._endpoint = Endpoint(self._existing)
            else:
                self._scheduler_handle = await _in_thread(self.launcher.start_scheduler)
                self._log_started(SCHEDULER, self._scheduler_handle, "scheduler")
                await self._wait_running(self._scheduler_handle, "scheduler")
                self._endpoint = await _in_thread(self.launcher.scheduler_endpoint, self._scheduler_handle)
            address = self._endpoint.client_address or self._endpoint.contact_address
            self.scheduler_comm = rpc(address, connection_args=self.security.get_connection_args("client"))
            await self._connect()
            self.scheduler_up_at = time.perf_counter()
            self.status = Status.running
            self._watcher = asyncio.ensure_future(self._watch())
            await self._reconcile()
        except BaseException:
            self.status = Status.failed
            await self._stop_all("the cluster's start failed")
            raise

    def _remaining(self) -> float:
        return self.deadline - time.monotonic()

    async def _wait_running(self, handle: str, role: str) -> None:
        interval = POLL_MIN
        while True:
            try:
                states = await _in_thread(self.launcher.observe, [handle])
            except InfrastructureError as exc:  # throttled past its retries: ask again, later
                if self._remaining() <= 0:
                    raise
                logger.debug("observing the %s failed: %s", role, one_line(exc))
                states = {}
            state = states.get(handle, Observed("pending"))
            if state.status == "running":
                return
            if state.status == "stopped":
                raise InfrastructureError(f"the {role} {self.launcher.kind} stopped: {state.reason}")
            if self._remaining() <= 0:
                raise StartTimeout(f"{role} {self.launcher.kind} {state.status.upper()}")
            await asyncio.sleep(min(interval, max(self._remaining(), 0.05)))
            interval = min(interval * 1.5, POLL_MAX)

    async def _connect(self) -> None:
        """Cluster's own start (its worker-status subscription), retried until the
        scheduler answers or the deadline passes."""
        while True:
            try:
                await asyncio.wait_for(super()._start(), timeout=max(self._remaining(), 0.1))
                return
            except (OSError, asyncio.TimeoutError) as exc:
                if self._remaining() <= 0:
                    raise StartTimeout(f"scheduler not answering at {self.scheduler_comm.address}") from exc
                await asyncio.sleep(1)

    # --- scaling ---------------------------------------------------------------------
    @property
    def _desired(self) -> int:
        return self.book.total

    def scale(self, n: int) -> Any:
        """Scale to ``n`` workers (started in the background).

        Raises
        ------
        ValueError
            For a cluster of worker groups, which :meth:`scale_groups` sizes.
        """
        self.book.set_total(n)
        self.loop.add_callback(self._reconcile)
        return NoOpAwaitable()

    def scale_groups(self, sizes: dict[str, int]) -> Any:
        """Scale each worker group ``name`` to ``sizes[name]`` workers (in the background);
        each group's workers are started through the launcher with the group's name."""
        self.book.set_sizes(sizes)
        self.loop.add_callback(self._reconcile)
        return NoOpAwaitable()

    def adapt(self, Adaptive: type = PoolAdaptive, **kwargs: Any) -> Any:  # noqa: N803 (distributed's name)
        """Scale with the scheduler's load (distributed's ``Adaptive`` arguments); the
        workers it retires are told retired, not lost, and are not replaced
        (:class:`~flowrig.backends.pool.adaptive.PoolAdaptive`)."""
        return super().adapt(Adaptive=Adaptive, **kwargs)

    async def scale_down(self, workers: Iterable[str]) -> None:
        """Stop the named workers (``Adaptive`` retired them on the scheduler first)."""
        names = [name for name in workers if name in self.workers]
        if not names:
            return
        for group, n in count_by_group(self.workers[name].group for name in names).items():
            self.book.shrink(group, n)
        handles = [self.workers.pop(name).handle for name in names]
        await _in_thread(self.launcher.stop, handles, "scaled down")
        for name in names:
            self.life_log.ended(name)

    def _log_started(self, name: str, handle: str, role: str, group: str = NO_GROUP) -> None:
        try:
            placement = self.launcher.placement(handle, role) or Placement()
        except Exception as exc:  # a report must not fail a start
            logger.debug("no placement of %s: %s", name, exc)
            placement = Placement()
        self.life_log.started(name, role, placement, group)

    def __await__(self):  # Adaptive awaits its cluster before recommending
        async def _() -> "PoolCluster":
            return self

        return _().__await__()

    @property
    def plan(self) -> set[str]:
        # A worker being retired leaves the scheduler before the pool stops it: it is no
        # longer planned, so its going is told as retired, not lost.
        return {name for name, worker in self.workers.items() if not worker.retiring}

    @property
    def requested(self) -> set[str]:
        return set(self.workers)

    async def _reconcile(self) -> None:
        if self.status != Status.running or self._lock is None:
            return
        async with self._lock:
            have = count_by_group(worker.group for worker in self.workers.values())
            for group in self.book.groups():
                missing = self.book.wanted(group) - have.get(group, 0)
                if missing > 0 and not await self._start_missing(group, missing):
                    return
                if missing < 0:
                    await self._shrink(group, -missing)

    async def _start_missing(self, group: str, missing: int) -> bool:
        """Start ``missing`` workers of ``group``; false when the launcher refused the call."""
        contact = self._endpoint.contact_address if self._endpoint else ""
        replacing = self.book.take_lost(group, missing)
        # A launcher of a cluster without groups is asked as it always was.
        by_group = {"group": group} if group else {}
        try:
            result = await _in_thread(self.launcher.start_workers, contact, missing, replacing, **by_group)
        except FlowrigError as exc:
            self.start_error = exc
            return False
        now = time.monotonic()
        self.asked += missing
        self.started += len(result.started)
        for name, handle in result.started.items():
            self.workers[name] = _Worker(handle=handle, since=now, group=group)
            self._log_started(name, handle, "worker", group)
        of_group = f" of group {group}" if group else ""
        for reason in result.refused:
            self.replacements.failed(f"worker {self.launcher.kind}{of_group} not started: {reason}")
        if result.refused:
            logger.warning(
                "asked for %d worker %ss%s, %d started; not started: %s",
                missing, self.launcher.kind, of_group, len(result.started), _reasons(result.refused),
            )
        return True

    async def _shrink(self, group: str, count: int) -> None:
        """Stop ``count`` workers of ``group``, those not joined yet first (they hold no data)."""
        self.book.forget_lost(group)
        own = [name for name, worker in self.workers.items() if worker.group == group]
        extra = sorted(own, key=lambda n: (self.workers[n].joined, n))[:count]
        handles = [self.workers.pop(name).handle for name in extra]
        if self.scheduler_comm is not None:
            try:
                await self.scheduler_comm.retire_workers(names=extra, remove=True, close_workers=True)
            except Exception as exc:
                logger.debug("retiring %s failed: %s", extra, exc)
        await _in_thread(self.launcher.stop, handles, "scaled down")
        for name in extra:
            self.life_log.ended(name)

    # --- watching -----------------------------------------------------------------------
    async def _watch(self) -> None:
        """Observe every role at a backing-off rate; replace workers that stop."""
        interval = POLL_MIN
        while self.status == Status.running:
            await asyncio.sleep(interval)
            try:
                changed = await self._observe_once()
            except Exception as exc:  # a poll that fails is tried again, more slowly
                logger.debug("observing the cluster failed: %s", one_line(exc))
                changed = False
            interval = POLL_MIN if changed else min(interval * 1.5, POLL_MAX)

    async def _observe_once(self) -> bool:
        joined = {info.get("name") for info in self.scheduler_info.get("workers", {}).values()}
        records = dict(self.workers)
        if not records:
            return False
        states = await _in_thread(self.launcher.observe, [w.handle for w in records.values()])
        changed = moved = False
        for name, worker in records.items():
            state = states.get(worker.handle, worker.state)
            if state != worker.state:
                changed = True
            worker.state = state
            worker.joined = worker.joined or name in joined
            if state.status != "stopped" or self.workers.get(name) is not worker or worker.retiring:
                continue
            del self.workers[name]
            if state.moved:  # it never ran: its worker's life is the one asked in the other market
                self.life_log.discard(name)
            else:
                self.life_log.ended(name)
            self._lost[name] = state.reason
            self.book.lost(worker.group, worker.handle)
            if worker.joined:
                self.replacements.lost([name], f"stopped ({state.reason})" if state.reason else "stopped")
            elif state.moved:
                moved = True
            else:
                self.replacements.failed(f"worker {self.launcher.kind} {name} stopped: {state.reason}")
        may_replace = self.replacements.may_replace()
        # A worker moved to another market is replaced during the start's wait too: it is no failure.
        if changed and self._desired > len(self.workers) and may_replace and (moved or not self._deciding):
            await self._reconcile()
        return changed

    def lost_reason(self, name: str) -> str | None:
        """Why worker ``name``'s role stopped, once the pool has seen it stop
        (:mod:`flowrig.backends.watch`): the launcher's reason (an ECS stop code such as
        ``SpotInterruption``, a container's exit code or ``OutOfMemoryError``)."""
        return self._lost.get(name)

    # --- waiting for workers ---------------------------------------------------------------
    def wait_for_start(self, minimum: int, timeout: float) -> int:
        """Block until at least ``minimum`` workers joined; the number that joined.

        The rest keep starting in the background. A worker that stops before joining, or
        that the launcher could not start, is reported in ``replacements.failures``; the start goes
        on while enough workers are left to reach ``minimum``, and the log says how many
        were asked for, how many started and why the others did not.

        Raises
        ------
        InfrastructureError
            At once when fewer than ``minimum`` workers are left that can join: the
            message holds the first reason. :class:`StartTimeout` when ``timeout`` passes.
        FlowrigError
            The launcher's own error when it refused to start workers.
        """
        self._deciding = True
        try:
            joined = wait_for_workers(self, minimum, time.monotonic() + timeout)
        finally:
            self._deciding = False
        # The workers that did not start are asked for again, while the pool may.
        self.loop.add_callback(self._reconcile)
        return joined

    # --- close -----------------------------------------------------------------------
    async def _stop_all(self, reason: str) -> None:
        handles = [w.handle for w in self.workers.values()]
        self.workers.clear()
        if self._scheduler_handle:
            handles.append(self._scheduler_handle)
            self._scheduler_handle = None
        try:
            if handles:
                await _in_thread(self.launcher.stop, handles, reason)
        finally:
            now = time.time()
            for name in self.life_log.open_names():
                self.life_log.ended(name, at=now)
            await _in_thread(self.launcher.close)

    async def _close(self) -> None:
        if self.status == Status.closed:
            return
        self.status = Status.closing
        for adaptive in self.group_adaptives:
            adaptive.stop("cluster-closing")
        if self._watcher is not None:
            self._watcher.cancel()
        try:
            await self._stop_all("flowrig teardown")
        finally:
            await super()._close()

    def close(self, timeout: float | None = None) -> Any:
        """Stop every role and release the cluster's loop; safe to call more than once."""
        try:
            return super().close(timeout)
        finally:
            self._own_loop.stop()

    @property
    def dashboard_link(self) -> str:
        """The dashboard's URL when it is reachable from here, else ``""``."""
        return (self._endpoint.dashboard_link if self._endpoint else None) or ""
