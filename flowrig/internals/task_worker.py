"""The worker side of :class:`~flowrig.internals.task_runner.FlowrigTaskRunner`: what
a worker process keeps of a run, and the call that runs one task there.

Every name the runner ships to a worker by reference (:func:`payload`,
:func:`run_task`, :func:`run_chunk`, :class:`ChunkItem`, :func:`forget_runs`,
:func:`send_reporting`) lives here, so a
worker unpickles a task without the runner's module; runner and workers run the same
flowrig (one image), so the dotted paths always match.

    * per worker process and run: one Prefect client per thread (made inside the run's
      settings), one entered task runner, the validated flow-run context; each task
      gets fresh context objects around them and runs through Prefect's own
      ``run_task_sync``/``run_task_async``, so states, retries, ``wait_for``, caching,
      hooks, logs and events are Prefect's;
    * a task that submits tasks does so through that task runner, connected to the
      worker's own scheduler, and leaves the worker's thread pool (Dask's ``secede``)
      so that what it waits for gets a thread; its submissions share one payload per
      worker process, forgotten with the run's own when the runner exits, which
      never waits on a worker from a worker;
    * a task that raises ``KeyboardInterrupt`` or ``SystemExit`` is Crashed, and its
      worker lives on;
    * ``events="drop"`` (the run's embedded API, which records none) replaces the
      events client of the worker process with Prefect's ``NullEventsClient``, and the
      task engine's events are then not even built (:mod:`flowrig.internals.engine_events`);
      ``"send"`` (a user's own server) sends them at the pace the server records them
      (:mod:`flowrig.internals.event_pacing`), each worker within its share of the run's
      window;
    * the per-task costs that repeat the same work are paid once per worker process:
      the settings context validated once and copied per task, result-storage paths
      resolved against a base resolved once (:mod:`flowrig.internals.result_paths`),
      a task's source hashed once for its cache key (:mod:`flowrig.internals.cache_keys`);
    * each task's final state is reported to the runner as a Dask worker event (the
      progress display and the timeline), and the progress's ``task_logs`` (when it has
      them) are installed on each worker for as long as it keeps the run: its tasks'
      log lines go to the runner the same way;
    * with ``"send"``, at the run's end every worker sends what Prefect's log and event
      services still hold (a worker process ends with its cluster without running
      Prefect's exit handlers, and its last batch of task-run lines would be lost).

Fenced here (numbered as in :mod:`flowrig.internals.task_runner`, whose list has the
rest; each checked by tests/e2e/local/test_internals.py on the locked versions):

5. ``SyncClientContext``'s only field being ``client`` (a context around an open client
   is entered without making one);
6. every field of ``FlowRunContext`` that ``serialize()`` leaves out having a default;
7. ``hydrated_context(None)`` rebuilding the run-context models (a fresh worker needs it);
8. ``EventsWorker.set_client_override`` replacing a process's events client.
"""

from __future__ import annotations

import asyncio
import os
import threading
import uuid
from collections import OrderedDict
from contextlib import ExitStack
from typing import Any, Iterable

from flowrig.internals import cache_keys, engine_events, event_pacing, result_paths, upstream_states
from flowrig.internals.prefect_blocks import with_known_blocks


def payload(value: Any) -> Any:
    """An identity task: its result, kept once on each worker that needs it, is ``value``."""
    return value


#: Per worker thread: ``False`` while a task runs there, ``True`` once it left the
#: worker's thread pool, ``None`` outside tasks.
_IN_TASK = threading.local()


def leave_thread_pool() -> None:
    """Called when a task submits tasks: it leaves the worker's thread pool (Dask's
    ``secede``) before it can wait on them.

    Otherwise tasks that each submit tasks and wait for them can fill every thread of
    every worker, and what they wait for never gets a thread to run on. The task goes on
    in its thread; it just no longer counts against the worker's threads.
    """
    if getattr(_IN_TASK, "seceded", None) is False:
        from distributed import secede

        secede()
        _IN_TASK.seceded = True
        # Until the thread rejoins: the next task run of a chunk (run_chunk) waits for
        # a thread of the pool again, as a task of its own would.
        _IN_TASK.outside_pool = True


class ChunkItem:
    """In a task's arguments, in place of a future of one task run of a chunk
    (:func:`run_chunk`): the chunk's Dask key and the task run's place in it. The worker
    puts the task run's State there (:func:`_with_upstream`)."""

    __slots__ = ("key", "index")

    def __init__(self, key: str, index: int) -> None:
        self.key = key
        self.index = index

    def __reduce__(self) -> Any:
        return (ChunkItem, (self.key, self.index))

    def __repr__(self) -> str:
        return f"ChunkItem({self.key!r}, {self.index})"


def _swap(value: Any, chunks: dict[str, list[Any]]) -> Any:
    """``value`` with each :class:`ChunkItem` in it replaced by its State."""
    if isinstance(value, ChunkItem):
        return chunks[value.key][value.index]
    if type(value) is list and all(isinstance(item, ChunkItem) for item in value):
        return [chunks[item.key][item.index] for item in value]  # a mapped list, as passed on
    from prefect.utilities.collections import visit_collection

    # The same walk as the runner's, which found the items (FlowrigTaskRunner._optimize).
    return visit_collection(
        value, visit_fn=lambda expr: chunks[expr.key][expr.index] if isinstance(expr, ChunkItem) else expr,
        return_data=True,
    )


def _with_upstream(parameters: Any, wait_for: Any, upstream: Any) -> tuple[Any, Any]:
    """``parameters`` and ``wait_for`` with their chunk items as States.

    ``upstream`` is ``None`` or ``(chunks, names, in_wait_for)``: each chunk's States by
    its key (Dask resolved the futures), the parameters that hold items, and whether
    ``wait_for`` does. Only those are walked: the rest reaches Prefect as it came.
    """
    if upstream is None:
        return parameters, wait_for
    chunks, names, in_wait_for = upstream
    if names:
        parameters = dict(parameters)
        for name in names:
            parameters[name] = _swap(parameters[name], chunks)
    if in_wait_for:
        wait_for = _swap(wait_for, chunks)
    return parameters, wait_for


_SHARED_CONTEXT: type | None = None


def _shared_client_context(client: Any) -> Any:
    """A ``SyncClientContext`` around an open client: entering it only sets the variable."""
    global _SHARED_CONTEXT
    if _SHARED_CONTEXT is None:
        from prefect.context import ContextModel, SyncClientContext

        class SharedSyncClientContext(SyncClientContext):
            def __init__(self, client: Any) -> None:
                ContextModel.__init__(self, client=client)

            def __enter__(self) -> Any:
                return ContextModel.__enter__(self)

            def __exit__(self, *exc_info: Any) -> None:
                return ContextModel.__exit__(self, *exc_info)

        _SHARED_CONTEXT = SharedSyncClientContext
    return _SHARED_CONTEXT(client)


class _RunState:
    """What one worker process keeps of one run."""

    __slots__ = ("token", "root", "profile", "settings", "settings_context", "clients", "clients_lock",
                 "task_runner", "flow_run_fields", "rest", "progress", "undo_task_logs")

    def close(self) -> None:
        event_pacing.OVERRIDE.remove(self.token)
        if self.undo_task_logs is not None:
            try:
                self.undo_task_logs()
            except Exception:
                pass
        try:
            if self.task_runner is not None:
                self.task_runner.__exit__(None, None, None)
        except Exception:
            pass
        for client in list(self.clients.values()):
            try:
                client.__exit__(None, None, None)
            except Exception:
                pass


#: Prefect clients and run states made in this worker process (for tests).
STATS = {"builds": 0, "clients": 0}
_RUNS: OrderedDict[str, _RunState] = OrderedDict()
_RUNS_LOCK = threading.Lock()
_MAX_RUNS = 8


def _client_for(state: _RunState) -> Any:
    """This thread's open client of the run (httpx clients are not shared by threads);
    call it with the run's settings in force."""
    thread = threading.get_ident()
    client = state.clients.get(thread)
    if client is not None:
        return client
    from prefect.client.orchestration import get_client
    from prefect.settings import get_current_settings

    with state.clients_lock:
        client = get_client(sync_client=True)
        client.__enter__()
        if get_current_settings().client.server_version_check_enabled:
            client.raise_for_api_version_mismatch_once()
        state.clients[thread] = client
        STATS["clients"] += 1
    return client


def local_ca_settings(settings: Any) -> Any:
    """``settings`` with a CA file this machine has, when the runner's is not here.

    The runner names the run's CA file for its API clients, at a path of its own
    machine. A worker on another machine (a cloud VM's container) has the same CA at
    the run's delivered path (``FLOWRIG_TLS_DIR``) or the image's baked one: that file
    is used instead. A file that exists here is kept.
    """
    from flowrig import layout

    path = settings.api.ssl_cert_file if settings is not None else None
    if not path or os.path.isfile(path):
        return settings
    for directory in (os.environ.get(layout.TLS_DIR_ENV), layout.IMAGE_TLS_DIR if layout.in_image() else None):
        candidate = os.path.join(str(directory), layout.CA_CERT) if directory else ""
        if candidate and os.path.isfile(candidate):
            from prefect.settings import PREFECT_API_SSL_CERT_FILE

            return settings.copy_with_update(updates={PREFECT_API_SSL_CERT_FILE: candidate})
    return settings


def _build_run_state(payload: dict[str, Any]) -> _RunState:
    import prefect
    from prefect.context import FlowRunContext, SettingsContext, hydrated_context
    from prefect.logging.configuration import ensure_logging_setup

    if payload.get("prefect_version") != prefect.__version__:
        raise RuntimeError(
            f"the runner has Prefect {payload.get('prefect_version')} and this worker {prefect.__version__}: "
            "run both from the same image or environment"
        )
    ensure_logging_setup()
    engine_events.install()
    result_paths.install()
    cache_keys.install()
    with hydrated_context(None):  # Prefect's own model_rebuild() of the run contexts
        pass
    state = _RunState()
    state.token = payload["token"]
    state.root = payload.get("root") or state.token
    state.profile, state.settings = payload["settings"] or (None, None)
    state.settings = local_ca_settings(state.settings)
    # Validated once: each task enters a copy (Prefect's ContextModel.model_copy, which
    # validates nothing), not a new context that validates all of Settings again.
    state.settings_context = (
        SettingsContext(profile=state.profile, settings=state.settings) if state.settings is not None else None
    )
    state.progress = payload.get("progress")
    state.clients, state.clients_lock = {}, threading.Lock()
    state.task_runner, state.flow_run_fields = None, None
    with ExitStack() as stack:
        if state.settings_context is not None:
            stack.enter_context(state.settings_context.model_copy())
        event_pacing.OVERRIDE.add(state.token, drop=payload["events"] == "drop", window=payload.get("event_window"))
        client = _client_for(state)
        # Its storage block built here when Prefect knows its type: validating the dict
        # would import every installed Prefect collection first (prefect_blocks).
        flow_run = with_known_blocks(payload["flow_run_context"])
        if flow_run:
            runner = flow_run["flow"].task_runner.duplicate()
            if hasattr(runner, "_root"):  # a FlowrigTaskRunner (this side imports no runner)
                runner._root = state.root
            state.task_runner = runner.__enter__()
            base = FlowRunContext(**flow_run, client=client, task_runner=state.task_runner, detached=True)
            # Validated once (FlowRun, ResultStore... as models), the keys as shipped.
            state.flow_run_fields = {key: getattr(base, key) for key in flow_run}
    state.rest = {k: payload[k] for k in ("deployment_id", "deployment_parameters") if payload.get(k)}
    state.undo_task_logs = None
    if payload.get("task_logs") is not None:
        flow_run = (state.flow_run_fields or {}).get("flow_run")
        try:
            state.undo_task_logs = payload["task_logs"].install(getattr(flow_run, "id", None))
        except Exception:  # lines for a person never fail a task
            pass
    STATS["builds"] += 1
    return state


def _run_state_for(payload: dict[str, Any]) -> _RunState:
    token = payload["token"]
    state = _RUNS.get(token)
    if state is not None:
        return state
    evicted: list[_RunState] = []
    with _RUNS_LOCK:
        state = _RUNS.get(token)
        if state is None:
            state = _RUNS[token] = _build_run_state(payload)
            while len(_RUNS) > _MAX_RUNS:
                evicted.append(_RUNS.popitem(last=False)[1])
    _close_later(evicted)
    return state


def _close_later(states: list[_RunState]) -> None:
    """Close run states in a thread of their own: closing waits on clients, which a
    task's thread or the worker's event loop must not do."""
    if states:
        threading.Thread(
            target=lambda: [state.close() for state in states], name="flowrig-close-runs", daemon=True
        ).start()


def _forget_runs(tokens: Iterable[str]) -> list[_RunState]:
    """Drop the runs ``tokens`` and the runs nested in them; returns them, to be closed."""
    wanted = set(tokens)
    with _RUNS_LOCK:
        gone = [token for token, state in _RUNS.items() if token in wanted or state.root in wanted]
        return [_RUNS.pop(token) for token in gone]


async def forget_runs(tokens: Iterable[str]) -> None:
    """Forget the runs ``tokens`` and those nested in them (the runner's exit)."""
    # On the worker's event loop (Client.run): it must return at once.
    _close_later(_forget_runs(tokens))


def send_reporting() -> None:
    """Send what Prefect's log and event services of this worker process hold (on the
    worker, at the end of a run that reports to a server of the user's): the task events
    it held back for the server (:mod:`flowrig.internals.event_pacing`) included."""
    event_pacing.send_held()


def _report(state: _RunState, task: Any, task_run_id: uuid.UUID, final: Any) -> None:
    """Send a task's final state to the runner (never fails the task)."""
    if state.progress is None:
        return
    topic, report = state.progress
    try:
        from distributed import get_worker

        get_worker().log_event(topic, report(task, task_run_id, final))
    except Exception:  # counting is for people; the task's outcome is what matters
        pass


def run_chunk(items: list[tuple[Any, ...]], chunks: dict[str, list[Any]] | None, *,
              run: dict[str, Any], task: Any) -> list[Any]:
    """Run the task runs ``items`` of one map in turn, each as :func:`run_task` runs one;
    their final states, in order.

    Each item is ``(task_run_id, parameters, wait_for, dependencies, extra, refs)``, with
    ``refs`` ``None`` or ``(names, in_wait_for)`` into the chunks of ``chunks``. A task run
    that left the worker's thread pool (it submitted tasks) has the next one wait for a
    thread of the pool again. An error of flowrig's or Prefect's own around one task run
    ends that one Crashed, not the others.
    """
    states = []
    _IN_TASK.outside_pool = False
    for i, (task_run_id, parameters, wait_for, dependencies, extra, refs) in enumerate(items):
        if i and getattr(_IN_TASK, "outside_pool", False):
            from distributed import rejoin

            rejoin()
            _IN_TASK.outside_pool = False
        upstream = (chunks, *refs) if refs is not None else None
        try:
            states.append(run_task(task_run_id, parameters, wait_for, dependencies, extra, upstream,
                                   run=run, task=task))
        except Exception as exc:
            from prefect.states import exception_to_crashed_state

            states.append(asyncio.run(exception_to_crashed_state(exc)))
    _IN_TASK.outside_pool = False
    return states


def run_task(task_run_id: Any, parameters: Any, wait_for: Any, dependencies: Any, extra: Any,
             upstream: Any = None, *, run: dict[str, Any], task: Any) -> Any:
    """Run one task of the run ``run`` (its payload) through Prefect's task engine; its
    final state, reported to the runner, is the result. ``upstream``: the States of
    chunk items in its arguments (:func:`_with_upstream`)."""
    from prefect.context import FlowRunContext, hydrated_context
    from prefect.task_engine import run_task_async, run_task_sync

    parameters, wait_for = _with_upstream(parameters, wait_for, upstream)
    state = _run_state_for(run)
    _IN_TASK.seceded = False
    with ExitStack() as stack:
        stack.callback(setattr, _IN_TASK, "seceded", None)
        if state.settings_context is not None:
            stack.enter_context(state.settings_context.model_copy())
        client = _client_for(state)
        if state.flow_run_fields is not None:
            # A fresh context object per task (fresh results and keys), from values
            # validated once: what hydrated_context builds, minus the per-task client,
            # task runner and validation.
            stack.enter_context(
                FlowRunContext(**state.flow_run_fields, client=client, task_runner=state.task_runner, detached=True)
            )
        rest = dict(state.rest, **extra) if extra else state.rest
        if rest:
            stack.enter_context(hydrated_context(rest, client=client))  # task run, tags, assets
        stack.enter_context(_shared_client_context(client))
        kwargs = dict(
            # Completed upstream States as their values: Prefect's two walks of each cost
            # about a millisecond (upstream_states); its inputs come from ``dependencies``.
            task=task, task_run_id=task_run_id, parameters=upstream_states.resolve_completed(parameters),
            wait_for=wait_for,
            return_type="state", dependencies=dependencies, context=None,
        )
        try:
            final = asyncio.run(run_task_async(**kwargs)) if task.isasync else run_task_sync(**kwargs)
        except Exception:
            raise
        except BaseException as exc:
            # The task raised KeyboardInterrupt or SystemExit itself (no signal reaches a
            # worker's task thread). Prefect has reported it Crashed and re-raised it:
            # out of here it would stop the worker's event loop, and with it the worker
            # (every in-process worker, on a thread-pool cluster) and the future would
            # never finish. The task's future gets the crash as its state instead.
            from prefect.states import exception_to_crashed_state

            final = asyncio.run(exception_to_crashed_state(exc))
    _report(state, task, task_run_id, final)
    return final
