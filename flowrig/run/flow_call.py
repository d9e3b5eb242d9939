"""Calling a run's flow on its cluster, and reading the flow's final state.

:func:`run_flow` runs the flow with flowrig's task runner under the run's Prefect
settings; an ``async def`` flow and a notebook's running event loop are both handled
by :func:`run_to_completion`. :func:`result_of` turns the final state into the
outcome's result or message.
"""

from __future__ import annotations

import inspect
import threading
from typing import TYPE_CHECKING, Any, Mapping

from flowrig.run.progress import TaskProgress

if TYPE_CHECKING:
    from prefect.settings import Settings

    from flowrig.certs import TLSMaterial
    from flowrig.run.prepared import PreparedRun


def run_flow(
    config: "PreparedRun",
    parameters: dict[str, Any],
    address: str,
    tls: "TLSMaterial",
    settings: "Settings",
    progress: TaskProgress,
    events: str,
    senders: int = 1,
    routes: "Mapping[str, str] | None" = None,
    chunk: int | None = None,
    worker_threads: int = 1,
) -> Any:
    """Run ``config.flow`` on the cluster at ``address``; its final state.

    ``events`` is ``"send"`` or ``"drop"``: what the workers do with task events;
    ``senders``: the most workers the cluster may have (they share the pace of events);
    ``routes``: task tag -> worker group (:mod:`flowrig.common.routes`);
    ``chunk``: the most task runs of a map per Dask task (``None``: the runner's default);
    ``worker_threads``: threads of the run's largest worker.
    """
    from flowrig.internals import prefect_engine
    from flowrig.internals.prefect_settings import run_settings
    from flowrig.internals.task_runner import FlowrigTaskRunner

    runner = FlowrigTaskRunner(
        address=address, client_kwargs={"security": tls.to_security()}, events=events, progress=progress,
        senders=senders, routes=routes, chunk=chunk, worker_threads=worker_threads,
    )
    flow = config.flow.with_options(task_runner=runner)
    # prefect-dask ships the runner's settings (built by settings_with) to every task on
    # the workers, so they use the same API, with its credentials, over the TLS channel.
    with run_settings(settings):
        try:
            if config.flow_run_id:
                state = prefect_engine.run_existing_flow_run(flow, config.flow_run_id, parameters)
            else:
                state = flow(**parameters, return_state=True)
            # An ``async def`` flow gives a coroutine of its final state: run it to the end.
            return run_to_completion(state) if inspect.isawaitable(state) else state
        finally:
            prefect_engine.drain_reporting()


def run_to_completion(awaitable: Any) -> Any:
    """Await ``awaitable`` from synchronous code and return its result.

    In the main thread of a command (no event loop running) it runs right here, so
    that SIGTERM and Ctrl-C reach the flow as they reach a synchronous one. Where an
    event loop already runs in this thread (a notebook calling
    :class:`flowrig.DaskCloudProviderEnvironment`), it runs on a loop of its own in a
    helper thread, with this thread's context (the run's Prefect settings) copied.
    """
    import asyncio
    import contextvars

    async def main() -> Any:
        return await awaitable

    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(main())
    outcome: dict[str, Any] = {}
    context = contextvars.copy_context()

    def target() -> None:
        try:
            outcome["value"] = context.run(asyncio.run, main())
        except BaseException as exc:  # re-raised in the caller's thread
            outcome["error"] = exc

    thread = threading.Thread(target=target, name="flowrig-async-flow", daemon=True)
    thread.start()
    thread.join()
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


def result_of(state: Any) -> tuple[Any, str | None]:
    """``(result, None)`` of a completed state, else ``(None, why it did not complete)``."""
    if state.is_completed():
        return _state_result(state, raise_on_failure=False), None
    try:
        _state_result(state, raise_on_failure=True)
    except BaseException as exc:  # the flow's own exception, reported as data
        return None, f"{type(exc).__name__}: {exc}"
    return None, state.message


def _state_result(state: Any, raise_on_failure: bool) -> Any:
    # Prefect gives a coroutine where an event loop runs in this thread (a notebook).
    value = state.result(raise_on_failure=raise_on_failure)
    return run_to_completion(value) if inspect.isawaitable(value) else value
