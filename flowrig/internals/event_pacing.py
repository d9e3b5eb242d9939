"""Task events at the pace a Prefect server records them, and the process's events client.

A self-hosted Prefect server without Redis passes each event to its consumers (the
task-run recorder, the event persister, the triggers) through an in-memory queue per
consumer that holds 10 000 messages and drops what comes on top, with a warning in the
server's log only (``prefect.server.utilities.messaging.memory.Subscription``). A task
run makes three events, and a run's workers send them all at once: 5000 quick tasks on
three workers fill those queues in seconds, and a third of the task runs are never
recorded, with the flow run Completed. Prefect's own task runners are too slow to meet
the limit.

So each worker process of a run that reports to a user's server sends its events
through one :class:`ServerPace`: Prefect's ``ProcessPoolForwardingEventsClient``
(``emit_event`` sends only through Prefect's own client classes, and this one hands each
event, its related resources attached, to any object with a ``put``) hands them to it,
and it sends them with Prefect's websocket client, keeping at most ``window`` task runs
whose final state it sent and the server has not recorded yet; beyond that it asks the
server (one count per poll, public API) until the oldest are recorded. A worker's share
of the run's window is :data:`RUN_WINDOW` over the workers the run may have, so a whole
run keeps at most ``3 * RUN_WINDOW`` of its events in those queues. What it holds waits
in Prefect's own events queue, and the run's end sends it all at that pace
(:func:`send_held`): a worker's cluster may go once it holds nothing, since what it sent
waits safely in the server's queues. A server that records nothing for
:data:`STALL_SECONDS` (its recorder switched off, say) is not waited for again.

Fenced here (checked by tests/e2e/local/test_internals.py on the locked versions):

1. ``EventsWorker.set_client_override(ProcessPoolForwardingEventsClient, event_queue=q)``
   making ``emit_event`` call ``q.put(("event", event))`` from the events service;
2. the server's in-memory subscription queue holding at least ``3 * RUN_WINDOW``
   messages beyond what other runs need (:data:`SERVER_QUEUE`).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from itertools import islice
from typing import Any

logger = logging.getLogger("flowrig.events")

#: Task runs of one run whose final event the server may not have recorded yet: three
#: events each, 6000 of the 10 000 a consumer's queue takes (:data:`SERVER_QUEUE`).
RUN_WINDOW = 2000
#: What a consumer's queue holds in the locked Prefect (checked by a test).
SERVER_QUEUE = 10_000
#: Seconds between two counts while a worker waits for the server (each count is a
#: request the server serves beside recording: few, for many workers).
POLL_SECONDS = 1.0
#: Seconds without one more task run recorded after which the server is not waited for.
STALL_SECONDS = 30.0
#: Seconds a worker's end of run may take to send what it held. The stall rule ends the
#: wait once the server stops recording; while it records, however slowly, the run waits
#: (what a worker still holds when its cluster goes is lost).
SEND_TIMEOUT = 3600.0

_FINAL = ("COMPLETED", "FAILED", "CRASHED", "CANCELLED")

#: Per process: events sent, waits, the most task runs in flight (for tests).
STATS = {"sent": 0, "waits": 0, "most_in_flight": 0, "gave_up": 0}


def worker_window(run_window: int, senders: int) -> int:
    """One worker process's share of ``run_window`` among ``senders`` processes (at least 1)."""
    return max(1, run_window // max(1, senders))


def share_of(client: Any, senders: int) -> int:
    """Each worker's share of :data:`RUN_WINDOW`: over the workers the run may have
    (``senders``), or has now when that is more (a cluster of the user's, or one that grew)."""
    try:
        workers = len(client.nthreads())
    except Exception:
        workers = 0
    return worker_window(RUN_WINDOW, max(senders, workers))


def _ended_task_run(event: Any) -> str | None:
    """The id of the task run whose final state ``event`` tells, else ``None``."""
    if not event.event.startswith("prefect.task-run."):
        return None
    intended = (event.payload or {}).get("intended") or {}
    if intended.get("to") not in _FINAL:
        return None
    resource = event.resource.id
    return resource.removeprefix("prefect.task-run.")


class ServerPace:
    """Sends one process's events to the server, at most ``window`` task runs unrecorded.

    Its ``put`` is called by Prefect's events service, on that service's thread, one
    event at a time; it blocks that thread (never a task's) while the server catches up.
    The websocket client and the API client live on an event loop thread of its own,
    started in the run's settings (API URL, credentials, CA).
    """

    def __init__(self, window: int) -> None:
        import contextvars

        self.window = max(1, window)
        self._waits_for_server = True
        self._in_flight: deque[str] = deque()
        self._lock = threading.Lock()
        # The run's settings as they are here: each call runs in a copy of them, whatever
        # thread asks (Prefect's events service has a context of its own).
        self._context = contextvars.copy_context()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._clients: tuple[Any, Any] | None = None

    def _call(self, coroutine: Any, timeout: float | None = None) -> Any:
        # Started on first use, and again after close(): Prefect's events service may
        # still hand over an event it held when the process's runs ended.
        if self._loop is None:
            self._loop = asyncio.new_event_loop()
            threading.Thread(target=self._loop.run_forever, name="flowrig-event-pace", daemon=True).start()
        loop = self._loop

        async def in_run_context() -> Any:
            return await loop.create_task(coroutine, context=self._context.copy())

        return asyncio.run_coroutine_threadsafe(in_run_context(), loop).result(timeout)

    async def _open(self) -> tuple[Any, Any]:
        if self._clients is None:
            from prefect.client.orchestration import get_client
            from prefect.events.clients import PrefectEventsClient

            events, api = PrefectEventsClient(), get_client()
            await events.__aenter__()
            await api.__aenter__()
            self._clients = (events, api)
        return self._clients

    async def _send(self, event: Any) -> None:
        events, _ = await self._open()
        await events.emit(event)

    async def _recorded(self, ids: list[str]) -> int:
        _, api = await self._open()
        body = {"task_runs": {"id": {"any_": ids}, "state": {"type": {"any_": list(_FINAL)}}}}
        response = await api.request("POST", "/task_runs/count", json=body)
        response.raise_for_status()
        return int(response.json())

    def put(self, item: tuple[str, Any]) -> None:
        """Send one event (``("event", event)``), first waiting for the server when
        ``window`` task runs are unrecorded."""
        _, event = item
        with self._lock:
            if self._waits_for_server and len(self._in_flight) >= self.window:
                self._wait_for_server()
            self._call(self._send(event))
            STATS["sent"] += 1
            ended = _ended_task_run(event)
            if ended is not None and self._waits_for_server:
                self._in_flight.append(ended)
                STATS["most_in_flight"] = max(STATS["most_in_flight"], len(self._in_flight))

    def _wait_for_server(self) -> None:
        STATS["waits"] += 1
        # The oldest half: the server records in about the order it was sent.
        batch = list(islice(self._in_flight, max(1, len(self._in_flight) // 2)))
        best, since = -1, time.monotonic()
        while True:
            try:
                recorded = self._call(self._recorded(batch), timeout=60)
            except Exception as exc:  # the count is advice: never lose an event for it
                logger.debug("counting recorded task runs failed: %s", exc)
                recorded = best
            if recorded >= len(batch):
                for _ in batch:
                    self._in_flight.popleft()
                return
            if recorded > best:
                best, since = recorded, time.monotonic()
            elif time.monotonic() - since > STALL_SECONDS:
                STATS["gave_up"] += 1
                logger.warning(
                    "the Prefect server recorded no task run of this run for %.0f s: sending the "
                    "rest without waiting for it (a server that records task runs keeps up)",
                    STALL_SECONDS,
                )
                self._in_flight.clear()
                self._waits_for_server = False
                return
            time.sleep(POLL_SECONDS)

    def close(self) -> None:
        """Close the clients and the loop thread; a later ``put`` opens them again."""

        async def close(clients: tuple[Any, ...]) -> None:
            for client in reversed(clients):
                try:
                    await client.__aexit__(None, None, None)
                except Exception:
                    pass

        with self._lock:
            if self._loop is None:
                return
            clients, self._clients = self._clients or (), None
            try:
                self._call(close(clients), timeout=30)
            except Exception as exc:
                logger.debug("closing the events clients failed: %s", exc)
            finally:
                loop, self._loop = self._loop, None
                loop.call_soon_threadsafe(loop.stop)


class EventsOverride:
    """What the process's events client is while its runs last.

    Prefect's events client belongs to the process, so a worker process that holds
    several runs (a cluster of threads in a user's own process) sends by the strictest
    of them: any run on its embedded API drops events (``NullEventsClient``), else any
    run to a user's server paces them (the smallest window), else Prefect's own client
    is back.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._runs: dict[str, int | None] = {}  # token -> window; None: dropping
        self._pace: ServerPace | None = None

    def add(self, token: str, *, drop: bool, window: int | None) -> None:
        """Run ``token`` drops its events (``drop``) or paces them (``window``) or neither."""
        with self._lock:
            if drop or window:
                self._runs[token] = None if drop else window
                self._apply()

    def remove(self, token: str) -> None:
        """Run ``token`` is gone from this process."""
        with self._lock:
            if self._runs.pop(token, 0) != 0:
                self._apply()

    def active(self) -> bool:
        with self._lock:
            return bool(self._runs)

    def _apply(self) -> None:
        from prefect.events.clients import NullEventsClient
        from prefect.events.worker import EventsWorker, ProcessPoolForwardingEventsClient

        windows = list(self._runs.values())
        if None in windows:
            EventsWorker.set_client_override(NullEventsClient)
        elif windows:
            window = min(w for w in windows if w is not None)
            if self._pace is None:
                self._pace = ServerPace(window)
            self._pace.window = window
            EventsWorker.set_client_override(ProcessPoolForwardingEventsClient, event_queue=self._pace)
        else:
            EventsWorker.set_client_override(None)
        if self._pace is not None and (not windows or None in windows):
            # Its clients and thread go; an event the events service still hands it
            # opens them again, in the settings of the run it belongs to.
            pace, self._pace = self._pace, None
            threading.Thread(target=pace.close, name="flowrig-event-pace-close", daemon=True).start()


#: The one override of this process.
OVERRIDE = EventsOverride()


def send_held(timeout: float = SEND_TIMEOUT) -> None:
    """Send what this process's events and log services hold, at the pace of the server
    (bounded by ``timeout`` and the stall rule)."""
    from flowrig.internals.prefect_engine import drain_reporting

    drain_reporting(timeout=timeout)
