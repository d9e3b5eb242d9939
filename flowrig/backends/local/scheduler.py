"""The local cluster's scheduler in a process of its own, as on every other backend.

In a plain ``LocalCluster`` the scheduler shares the runner's process: the flow's
Python code, Prefect's engine (about a millisecond of CPU per task) and the scheduler
take turns on one interpreter lock, and every task's scheduler state (a few KB) adds
to the runner's memory. Here the scheduler is a child of the fork server (which has
imported distributed already, so it starts in a fraction of a second), the way it is
its own container on docker and ECS: what a local run measures is what a deployed
run does.

The scheduler ends when the cluster closes it, when the runner's end of its pipe
closes, which the kernel does for the runner however it exits (``kill -9`` included),
or, as on every backend, once no client has been connected for a while
(:mod:`flowrig.roles.lifetime`). A runner killed before it removed the workers' scratch
folder leaves that to the scheduler. Workers lost on the way start again
(:mod:`flowrig.backends.lost_workers`).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import multiprocessing
import os
import signal
import threading
import time
from typing import Any, Callable

from distributed.core import Status
from distributed.deploy.spec import ProcessInterface, SpecCluster

from flowrig.backends.lost_workers import keep_size
from flowrig.common import runfolders
from flowrig.errors import InfrastructureError, one_line
from flowrig.roles.lifetime import NO_CLIENT_TIMEOUT

logger = logging.getLogger("flowrig.local")

#: Seconds the scheduler process may take to listen.
START_TIMEOUT = 60.0


def serve(
    options: dict[str, Any],
    conn: Any,
    no_client_timeout: float = NO_CLIENT_TIMEOUT,
    folder: str | None = None,
    private_http: bool = True,
) -> None:
    """Run a scheduler with ``options`` until it is closed, ``conn``'s other end goes,
    or no client has been connected for ``no_client_timeout`` seconds. With
    ``private_http`` its HTTP endpoints (the dashboard) answer only clients with the
    run's certificate (:mod:`flowrig.roles.private_http`).

    Sends ``("up", address)`` once it listens, or ``("error", message)``. Then removes
    the run's ``folder`` (:mod:`flowrig.common.runfolders`) if its runner is gone
    without removing it (``kill -9``): a live runner holds it, so it is left alone.
    """
    from distributed import Scheduler

    from flowrig.roles.lifetime import NoClientTimeout

    if private_http:
        import flowrig.roles.private_http  # noqa: F401  (its import is its effect)

    async def main() -> None:
        try:
            lifetime = NoClientTimeout(no_client_timeout)
            scheduler = await Scheduler(**options, plugins=[lifetime])
        except Exception as exc:
            conn.send(("error", one_line(exc)))
            return
        try:
            conn.send(("up", scheduler.address))
        except OSError:
            # The runner gave up on the start (its run was ended meanwhile): nobody
            # will connect, so there is nothing to serve and nothing to say.
            await scheduler.close()
            return
        loop = asyncio.get_running_loop()
        gone = loop.create_future()
        # EOF on the pipe (the runner has gone) makes it readable.
        loop.add_reader(conn.fileno(), lambda: gone.done() or gone.set_result(None))
        finished = asyncio.ensure_future(scheduler.finished())
        await asyncio.wait([gone, finished], return_when=asyncio.FIRST_COMPLETED)
        loop.remove_reader(conn.fileno())
        await scheduler.close()

    try:
        asyncio.run(main())
    finally:
        if folder is not None:
            runfolders.remove_leftover(folder)


async def _in_daemon_thread(function: Callable[..., Any], *args: Any) -> Any:
    """``function(*args)`` in a daemon thread of its own, awaited.

    Not ``asyncio.to_thread``: the interpreter waits at exit for every thread of the
    loop's executor, so a scheduler start given up in the middle of forking would hold
    up the exit of its run by seconds.
    """
    loop = asyncio.get_running_loop()
    future = loop.create_future()

    def settle(outcome: Callable[[], None]) -> None:
        if not future.done():
            outcome()

    def run() -> None:
        try:
            result = function(*args)
        except BaseException as exc:
            outcome = functools.partial(future.set_exception, exc)
        else:
            outcome = functools.partial(future.set_result, result)
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits
            loop.call_soon_threadsafe(settle, outcome)

    threading.Thread(target=run, name="flowrig-scheduler-start", daemon=True).start()
    return await future


#: Seconds between two looks at whether a start was abandoned.
_ABANDON_POLL = 0.05


def _receive(conn: Any, timeout: float, abandoned: threading.Event) -> tuple[str, str]:
    deadline = time.monotonic() + timeout
    while not conn.poll(_ABANDON_POLL):
        if abandoned.is_set():
            return "error", "its start was abandoned"
        if time.monotonic() > deadline:
            return "error", f"it did not listen within {timeout:.0f} s"
    try:
        return conn.recv()
    except EOFError:
        return "error", "it exited before it listened"


class SchedulerProcess(ProcessInterface):
    """A ``distributed.Scheduler`` forked from the fork server, for ``SpecCluster``.

    Parameters
    ----------
    no_client_timeout
        Seconds the scheduler stays up once its last client has gone.
    abandoned
        Set when the cluster gives up on its start (its run was ended meanwhile): the
        start stops waiting and the process is killed.
    folder
        The run's folder the scheduler removes once its runner is gone without doing so.
    private_http
        Serve the scheduler's HTTP endpoints (the dashboard) only to clients with the
        run's certificate.
    **options
        ``distributed.Scheduler`` keywords (they must pickle: a ``Security`` with its
        PEM text in memory does).
    """

    def __init__(
        self,
        no_client_timeout: float = NO_CLIENT_TIMEOUT,
        abandoned: threading.Event | None = None,
        folder: str | None = None,
        private_http: bool = True,
        **options: Any,
    ) -> None:
        super().__init__()
        self.options = options
        self.no_client_timeout = no_client_timeout
        self.folder = folder
        self.private_http = private_http
        self.abandoned = abandoned if abandoned is not None else threading.Event()
        #: Called on the cluster's loop when the scheduler process exits by itself.
        self.on_exit: Callable[[], None] | None = None
        self.process: Any = None
        self.up_at: float | None = None
        self._conn: Any = None

    async def start(self) -> None:
        context = multiprocessing.get_context("forkserver")
        here, there = context.Pipe()
        self.process = context.Process(
            target=serve,
            args=(self.options, there, self.no_client_timeout, self.folder, self.private_http),
            name="flowrig-scheduler",
            daemon=True,
        )
        try:
            await _in_daemon_thread(self.process.start)
        finally:
            there.close()
        self._conn = here
        status, value = await _in_daemon_thread(_receive, here, START_TIMEOUT, self.abandoned)
        if status != "up":
            await self.close()
            raise InfrastructureError(f"the local scheduler could not start: {value}")
        self.address = value
        self.up_at = time.perf_counter()
        # The scheduler sends nothing more: its end of the pipe closes when it exits
        # (it may stop itself, by the no-client rule), and the cluster then knows it
        # is gone rather than waiting on it when it closes.
        asyncio.get_running_loop().add_reader(here.fileno(), self._exited)
        await super().start()

    def _exited(self) -> None:
        if self._conn is not None:
            asyncio.get_running_loop().remove_reader(self._conn.fileno())
        self.status = Status.closed
        if self.on_exit is not None:
            self.on_exit()

    def kill(self) -> None:
        """Kill the process now, if it runs (any thread): for a start no one wants."""
        process = self.process
        if process is not None and process.pid is not None and process.exitcode is None:
            with contextlib.suppress(OSError, ValueError):
                os.kill(process.pid, signal.SIGKILL)

    async def close(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(RuntimeError, ValueError, OSError):
                asyncio.get_running_loop().remove_reader(self._conn.fileno())
            self._conn.close()  # the scheduler stops on EOF, if it is still running
            self._conn = None
        if self.process is not None and self.process.pid is not None:
            if self.up_at is None or self.abandoned.is_set():
                # It never listened: nothing depends on it, and it would notice the
                # closed pipe only once it listens.
                self.kill()
            await asyncio.to_thread(self.process.join, 10)
            if self.process.exitcode is None:
                self.process.kill()
                await asyncio.to_thread(self.process.join, 5)
        await super().close()


class SeparateScheduler(SpecCluster):
    """A ``SpecCluster`` base whose scheduler spec becomes a :class:`SchedulerProcess`.

    Put it after ``LocalCluster`` in a subclass's bases: ``LocalCluster.__init__``
    builds its ``{"cls": Scheduler, "options": ...}`` spec and hands it to the next
    ``__init__`` in line, which is this one (checked by tests/e2e/local/test_internals.py).
    """

    #: Seconds the scheduler stays up once its last client has gone.
    no_client_timeout: float = NO_CLIENT_TIMEOUT
    #: The run's folder the scheduler removes if the runner is gone without doing so.
    folder: str | None = None
    #: Whether the scheduler's HTTP endpoints need the run's certificate.
    private_http: bool = True

    def __init__(self, *args: Any, scheduler: dict[str, Any] | None = None, **kwargs: Any) -> None:
        if not isinstance(scheduler, dict) or "options" not in scheduler:
            raise TypeError(f"expected LocalCluster's scheduler spec, got {scheduler!r}")
        #: Set when the start is given up (see :meth:`LocalClusterWithSchedulerProcess.abandon`).
        self.abandoned = threading.Event()
        options = {
            **scheduler["options"], "no_client_timeout": self.no_client_timeout, "abandoned": self.abandoned,
            "folder": self.folder, "private_http": self.private_http,
        }
        super().__init__(*args, scheduler={"cls": SchedulerProcess, "options": options}, **kwargs)


from distributed import LocalCluster  # noqa: E402 - after the base it builds on


def _quiet_after_abandon(cluster: Any) -> None:
    """Errors the abandoned start raises from now on go to the debug log, not stderr.

    The killed workers fail their nannies' starts one by one; the loop stops before the
    start gathers them all, so asyncio reports each failure nobody retrieved as
    "Task exception was never retrieved" with its traceback when it is collected, after
    the run's own one-line error. The loop is the cluster's own (its own thread): nothing
    else reports through it.
    """
    loop = getattr(getattr(cluster, "loop", None), "asyncio_loop", None)
    if loop is None:
        return

    def report(_: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        message, error = context.get("message"), context.get("exception")
        logger.debug("after the cluster's start was given up: %s (%r)", message, error)

    loop.set_exception_handler(report)


class LocalClusterWithSchedulerProcess(LocalCluster, SeparateScheduler):
    """``distributed.LocalCluster`` (same keywords) whose scheduler is its own process,
    and whose lost workers start again.

    Parameters
    ----------
    no_client_timeout
        Seconds the scheduler stays up once its last client has gone.
    folder
        The run's folder (the workers' scratch space), which the scheduler removes when
        its runner is gone without removing it.
    private_http
        Serve the scheduler's HTTP endpoints (the dashboard) only to clients with the
        run's certificate (the workers' take ``preload``).
    **kwargs
        ``LocalCluster``'s keywords.
    """

    def __init__(
        self,
        *,
        no_client_timeout: float = NO_CLIENT_TIMEOUT,
        folder: str | None = None,
        private_http: bool = True,
        **kwargs: Any,
    ) -> None:
        self.no_client_timeout = no_client_timeout
        self.folder = folder
        self.private_http = private_http
        try:
            super().__init__(**kwargs)
        except BaseException:
            # Ended while starting (the run's timeout, SIGTERM, Ctrl-C) or failed: what
            # started so far goes now, not when the interpreter exits.
            self.abandon()
            raise
        #: Starts lost workers again (:mod:`flowrig.backends.lost_workers`).
        self.keeper = keep_size(self)
        self.scheduler.on_exit = self._scheduler_exited

    def abandon(self) -> None:
        """Give up a start in progress from another thread than the cluster's loop:
        kill the scheduler and whatever worker processes started, and stop the loop.

        The start itself is a coroutine on the cluster's loop that nobody waits for
        any more; the worker processes end with their nannies' kill, the scheduler
        before it ever serves. Nothing is left for the interpreter's exit to close.
        """
        from flowrig.internals.spec_cluster import let_loop_go, workers_made

        self.abandoned.set()
        _quiet_after_abandon(self)
        if isinstance(self.scheduler, SchedulerProcess):
            self.scheduler.kill()
        for nanny in workers_made(self):
            pid = getattr(nanny, "pid", None)
            if isinstance(pid, int):
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGKILL)
        # distributed closes every cluster at exit, waiting up to 10 s on one whose
        # start is still pending: this one has nothing left to close.
        self.shutdown_on_close = False
        with contextlib.suppress(Exception):
            let_loop_go(self)

    def _scheduler_exited(self) -> None:
        # A scheduler that stopped by itself cannot be asked to stop: closing the
        # cluster would wait for it to answer (30 s) instead.
        self.shutdown_scheduler = False

    def lost_reason(self, name: str) -> str | None:
        """Why worker ``name``'s process ended, as its nanny saw it
        (:mod:`flowrig.backends.watch`); ``None`` when it has not seen it end."""
        from dask.utils import format_bytes

        from flowrig.backends.watch import exit_text
        from flowrig.internals.forkserver import worker_exits

        nanny = next((w for n, w in list(self.workers.items()) if str(n) == name), None)
        exits = worker_exits(nanny) if nanny is not None else []
        if not exits:
            return None
        last = exits[-1]
        if last.memory:
            rss, limit = last.memory.get("rss"), last.memory.get("limit")
            used = format_bytes(rss) if isinstance(rss, int) else "more than allowed"
            of = f" of its memory limit of {format_bytes(limit)}" if isinstance(limit, int) else ""
            return f"out of memory: it used {used}{of} and its nanny ended it ({exit_text(last.code)})"
        return f"its process ended: {exit_text(last.code)}"

    @property
    def scheduler_up_at(self) -> float | None:
        """``time.perf_counter()`` when the scheduler listened."""
        return getattr(self.scheduler, "up_at", None)
