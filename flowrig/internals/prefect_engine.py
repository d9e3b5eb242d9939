"""Prefect's engine as a run drives it: what it imports, its reporting queues, a
deployment's existing flow run.

Fenced here:

- ``prefect.flow_engine.run_flow(flow, flow_run=..., parameters=..., return_type=...)``:
  the engine entry Prefect's own ``flow-run execute`` uses, to run a flow as an
  existing (deployment) flow run;
- ``APILogWorker.drain_all`` and ``EventsWorker.drain_all``: Prefect's background
  reporting services, drained so that nothing queued is sent to an API that is gone;
- ``EventsWorker.instance().wait_until_empty()``: the events a run emitted itself are
  sent before the service is drained (a drain that finds items still queued warns
  about them on the console);
- ``TagsContext.get().current_tags``: the tags (``with prefect.tags(...)``) a flow run
  created ahead of the flow call gets, as the engine would give it.

tests/e2e/local/test_internals.py checks both on the locked versions.
"""

from __future__ import annotations

import importlib
import logging
from typing import Any

logger = logging.getLogger("flowrig")

#: What a first flow call (runner) or first task run (worker) imports, found by
#: comparing ``sys.modules`` before and after one. The runner imports it while the
#: run's API is still starting; local workers fork from a server that imported it.
PREFECT_ENGINE_MODULES = (
    "prefect",
    "prefect.flow_engine",
    "prefect.task_engine",
    "prefect.client.orchestration",
    "prefect.events.clients",
    "prefect.logging.handlers",
    "prefect.results",
    "prefect_dask.task_runners",
    # Prefect serialises a flow's parameters with FastAPI's encoder: 0.6 s of imports
    # that would otherwise happen after the API is up, on the run's critical path.
    "fastapi.encoders",
)


#: Of those, what only a flow call imports: a worker's task runs never do (measured:
#: 0.3 s of CPU, a fifth of a worker container's imports, on the cluster's start).
#: A flow called inside a task imports them when it runs.
FLOW_ONLY_MODULES = ("prefect.flow_engine", "fastapi.encoders")
#: What a first task run on a worker imports.
TASK_ENGINE_MODULES = tuple(name for name in PREFECT_ENGINE_MODULES if name not in FLOW_ONLY_MODULES)


def import_flow_engine() -> None:
    """Import :data:`PREFECT_ENGINE_MODULES` (instant when done already)."""
    for name in PREFECT_ENGINE_MODULES:
        importlib.import_module(name)


def import_task_engine() -> None:
    """Import :data:`TASK_ENGINE_MODULES`: a worker's share (instant when done already)."""
    for name in TASK_ENGINE_MODULES:
        importlib.import_module(name)


def drain_reporting(timeout: float = 10) -> None:
    """Send what Prefect's log and event services still hold, before the API stops.

    Otherwise Prefect retries against a closed port at interpreter exit for a long
    time. A failure here never hides the flow's own outcome.
    """
    import asyncio
    import threading

    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    try:
        asyncio.get_running_loop()
    except RuntimeError:
        pass
    else:
        # On an event loop's thread (a Dask worker's, under Client.run) drain_all only
        # returns a coroutine, which would never run: wait for it from a thread instead.
        # The services send from a loop thread of Prefect's own, never this one.
        waiter = threading.Thread(target=drain_reporting, args=(timeout,), daemon=True)
        waiter.start()
        waiter.join(2 * timeout + 1)
        return
    for worker in (APILogWorker, EventsWorker):
        try:
            worker.drain_all(timeout=timeout)
        except Exception as exc:
            logger.debug("draining %s failed: %s", worker.__name__, exc)


def send_events(timeout: float = 10) -> None:
    """Wait (at most ``timeout`` seconds) until Prefect's events service in this process
    has sent what it holds, then drain it (:func:`drain_reporting`)."""
    import threading

    from prefect.events.worker import EventsWorker

    try:
        waiter = threading.Thread(target=EventsWorker.instance().wait_until_empty, daemon=True)
        waiter.start()
        waiter.join(timeout)
    except Exception as exc:
        logger.debug("waiting for the events service failed: %s", exc)
    drain_reporting(timeout)


def current_tags() -> set[str]:
    """The tags Prefect's engine would give a flow run created here, now."""
    from prefect.context import TagsContext

    return set(TagsContext.get().current_tags)


def run_existing_flow_run(flow: Any, flow_run_id: str, parameters: dict[str, Any]) -> Any:
    """Run ``flow`` as the existing flow run ``flow_run_id``; returns its final state."""
    from prefect.client.orchestration import get_client
    from prefect.flow_engine import run_flow

    with get_client(sync_client=True) as client:
        flow_run = client.read_flow_run(flow_run_id)
    return run_flow(flow, flow_run=flow_run, parameters=parameters, return_type="state")
