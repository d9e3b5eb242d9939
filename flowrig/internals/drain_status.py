"""What a draining worker asks its scheduler, answered from the scheduler's own state.

A worker that is stopped with notice (:mod:`flowrig.roles.drain`) asks the scheduler,
before it hands anything over, whether a drain is worth it: is the worker still known
(a scale-down may have retired it already), is the run's runner still connected (a
cluster torn down at a run's end must stop as fast as ever), and, while it drains, how
many tasks it is still executing.

Fenced here, checked by tests/e2e/local/test_internals_drain.py on a real TLS cluster:

- a handler put into ``Scheduler.handlers`` after the scheduler started (by a plugin)
  is served to an ``rpc`` over TLS, and called with the message's keywords;
- ``WorkerState.name``, ``.status`` (a ``Status``, ``.name`` its spelling) and
  ``.processing`` (the tasks the scheduler has sent it, started or not);
- the worker's ``call_stack`` handler answers with one entry per task it is executing
  right now (``Worker.active_threads``), so a task that waits in its queue is not
  counted: the scheduler's ``WorkerState.executing`` comes from heartbeats and lags.
- the worker's ``run`` handler (what ``Client.run`` reaches through the scheduler) runs a
  function pickled with ``distributed.protocol.pickle``, its arguments pickled the same
  way, and answers ``{"status": "OK", ...}``: a drained worker sends the task events its
  Prefect services still hold before it goes (a worker process that ends runs no exit
  handler, and an unsent final state would leave its task run RUNNING on the server).

May import: the standard library and distributed (lazily: the drain supervisor imports
this module for its names before it imports distributed).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Awaitable, Callable

logger = logging.getLogger("flowrig.drain")

#: The scheduler's handler that tells a draining worker where it stands.
STATUS_OP = "flowrig_drain_status"
#: The scheduler's handler a cluster's teardown calls first: from then on no worker drains.
CLOSING_OP = "flowrig_closing"
#: The scheduler's handler a drained worker reports to (its figures go to the events).
DRAINED_OP = "flowrig_drained"
#: The scheduler's handler that has a draining worker send its Prefect task events.
FLUSH_OP = "flowrig_drain_flush"
#: The scheduler's event topic of finished drains (``Scheduler.log_event``).
EVENT_TOPIC = "flowrig-drain"
#: Seconds the scheduler waits for a worker to say what it is executing.
CALL_STACK_TIMEOUT = 2.0


def add_handler(scheduler: Any, op: str, handler: Callable[..., Awaitable[Any] | Any]) -> None:
    """Serve ``handler`` for ``op`` on a running scheduler."""
    scheduler.handlers[op] = handler


def find_worker(scheduler: Any, name: object) -> Any | None:
    """The scheduler's ``WorkerState`` of the worker called ``name`` (``None``: unknown)."""
    wanted = str(name)
    return next((ws for ws in list(scheduler.workers.values()) if str(ws.name) == wanted), None)


async def executing(scheduler: Any, ws: Any, timeout: float = CALL_STACK_TIMEOUT) -> int:
    """How many tasks the worker ``ws`` is executing now; when it does not answer in
    time, every task the scheduler sent it counts (a drain then waits rather than
    cutting a task short)."""
    try:
        stacks = await asyncio.wait_for(scheduler.rpc(ws.address).call_stack(), timeout)
    except Exception as exc:
        logger.debug("asking worker %s what it executes: %s", ws.address, exc)
        return len(ws.processing)
    return len(stacks or {})


async def status(scheduler: Any, name: object, *, runner: bool) -> dict[str, Any]:
    """Where the worker ``name`` stands, for its drain.

    Returns
    -------
    dict
        ``known`` (the scheduler has it), ``runner`` (``runner`` and the scheduler is
        running), ``status`` (the worker's, e.g. ``running``, ``closing_gracefully``),
        ``processing`` (tasks sent to it) and ``executing`` (tasks it runs now).
    """
    running = getattr(scheduler.status, "name", str(scheduler.status)) == "running"
    ws = find_worker(scheduler, name)
    if ws is None:
        return {"known": False, "runner": runner and running, "status": "", "processing": 0, "executing": 0}
    return {
        "known": True,
        "runner": runner and running,
        "status": ws.status.name,
        "processing": len(ws.processing),
        "executing": await executing(scheduler, ws),
    }


def log_drain(scheduler: Any, name: object, facts: dict[str, Any]) -> None:
    """Record a finished drain in the scheduler's events (topic :data:`EVENT_TOPIC`)."""
    scheduler.log_event(EVENT_TOPIC, {"worker": str(name), **facts})


def _send_reporting(timeout: float) -> None:
    """On the worker: send what its Prefect log and event services hold."""
    from flowrig.internals.event_pacing import send_held

    send_held(timeout)


async def flush(scheduler: Any, name: object, timeout: float) -> bool:
    """Have the worker ``name`` send its Prefect task events (at most ``timeout`` s);
    whether it said it did."""
    from distributed.protocol.pickle import dumps

    ws = find_worker(scheduler, name)
    if ws is None:
        return False
    try:
        answer = await asyncio.wait_for(
            scheduler.rpc(ws.address).run(function=dumps(_send_reporting), args=dumps((timeout,)), wait=True),
            2 * timeout + 2,
        )
    except Exception as exc:
        logger.debug("worker %s did not send its events: %s", ws.address, exc)
        return False
    return isinstance(answer, dict) and answer.get("status") == "OK"
