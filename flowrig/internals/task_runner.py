"""flowrig's task runner: prefect-dask's ``DaskTaskRunner`` with per-run, not per-task,
overhead. Every flowrig run uses it.

prefect-dask submits each task with no key (distributed then tokenises a cloudpickle
of every call), ships the flow, its parameters and the settings with every task, and
on the worker builds two Prefect clients and a task runner per task; Prefect's
``TaskRunner.map`` loops over ``submit``. Here:

Runner side
    * what is the same for every task of a run (the settings objects, the flow-run
      context with the flow and its parameters, the deployment context) goes into the
      graph once per run, as a tiny task whose result each worker keeps; each Task
      object likewise once per run; every task run depends on both keys;
    * each submission has an explicit key and ``pure=False``: nothing is tokenised;
    * ``map`` lets Prefect expand the mapping, then submits it through one public
      ``Client.map``, and its futures fetch finished states in batches.

Worker side
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
      events client of the worker process with Prefect's ``NullEventsClient``;
      ``"send"`` (a user's own server) keeps them;
    * each task's final state is reported to the runner as a Dask worker event (the
      progress display and the timeline), and the progress's ``task_logs`` (when it has
      them) are installed on each worker for as long as it keeps the run: its tasks'
      log lines go to the runner the same way;
    * with ``"send"``, at the run's end every worker sends what Prefect's log and event
      services still hold (a worker process ends with its cluster without running
      Prefect's exit handlers, and its last batch of task-run lines would be lost).

Fenced here (each checked by tests/e2e/local/test_internals.py on the locked versions):

1. ``DaskTaskRunner._optimize_futures``, ``._client``, ``._started``, ``duplicate()``
   rebuilding the runner from its constructor arguments, ``client`` made on first use
   into ``._exit_stack`` (with ``._connect_to`` and ``performance_report_path``), which
   this runner does itself, without adopting ``distributed.get_client()``'s client;
2. ``PrefectFuture._final_state``: a future whose final state is set is not waited on
   again (the batched fetch of ``map``);
3. ``TaskRunner.map`` calling ``self.submit(task=, parameters=, wait_for=, dependencies=)``
   once per item, in order, and only collecting what it returns;
4. the private context variables ``prefect.context._deployment_id`` and
   ``_deployment_parameters``, and the keys ``serialize_context`` ships;
5. ``SyncClientContext``'s only field being ``client`` (a context around an open client
   is entered without making one);
6. every field of ``FlowRunContext`` that ``serialize()`` leaves out having a default;
7. ``hydrated_context(None)`` rebuilding the run-context models (a fresh worker needs it);
8. ``EventsWorker.set_client_override`` replacing a process's events client;
9. the flow (and so its task runner) travelling in every task's context: the runner
   pickles without its run state.
"""

from __future__ import annotations

import asyncio
import os
import threading
import uuid
from collections import OrderedDict
from contextlib import ExitStack
from typing import TYPE_CHECKING, Any, Callable, Iterable

from prefect_dask import DaskTaskRunner
from prefect_dask.task_runners import PrefectDaskFuture

if TYPE_CHECKING:
    from typing import Protocol

    class TaskProgress(Protocol):
        topic: str
        report: Callable[[Any, Any, Any], dict[str, Any]]

        #: ``install(flow_run_id)`` run on each worker; returns what undoes it.
        task_logs: Any

        def submitted(self, name: str, count: int = 1) -> None: ...
        def event(self, event: Any) -> None: ...


EVENTS = ("send", "drop")


class _Collected:
    """What ``submit`` records while ``map`` lets Prefect expand a mapping."""

    __slots__ = ("parameters", "wait_for", "dependencies")

    def __init__(self, parameters: Any, wait_for: Any, dependencies: Any) -> None:
        self.parameters = parameters
        self.wait_for = wait_for
        self.dependencies = dependencies


def _batched_future_list() -> type:
    import distributed
    from prefect.futures import PrefectFutureList
    from prefect.states import State

    class BatchedFutureList(PrefectFutureList):
        """Prefect futures of one ``map``, whose finished states arrive in batches."""

        def _prefetch(self, stop_on_failure: bool) -> None:
            by_key: dict[Any, list[PrefectDaskFuture]] = {}
            for future in self:
                if isinstance(future, PrefectDaskFuture) and not future._final_state:
                    by_key.setdefault(future.wrapped_future.key, []).append(future)
            if not by_key:
                return
            first = [group[0].wrapped_future for group in by_key.values()]
            client = first[0].client
            for batch in distributed.as_completed(first, with_results=False, loop=client.loop).batches():
                done = [f for f in batch if f.status == "finished"]
                failed = len(done) != len(batch)
                if done:
                    for wrapped, state in zip(done, client.gather(done, errors="skip")):
                        if isinstance(state, State):
                            for future in by_key[wrapped.key]:
                                future._final_state = state
                            failed = failed or not state.is_completed()
                if stop_on_failure and failed:
                    return  # Prefect's own code raises it now, as it would without batches

        def wait(self, timeout: float | None = None) -> None:
            if timeout is None:
                self._prefetch(stop_on_failure=False)
            super().wait(timeout=timeout)

        def result(self, timeout: float | None = None, raise_on_failure: bool = True) -> Any:
            if timeout is None:
                self._prefetch(stop_on_failure=raise_on_failure)
            return super().result(timeout=timeout, raise_on_failure=raise_on_failure)

    return BatchedFutureList


class FlowrigTaskRunner(DaskTaskRunner):
    """A ``DaskTaskRunner`` whose cost per task is close to plain Dask's.

    Parameters
    ----------
    events
        ``"send"`` (Prefect's behaviour: task events reach the API) or ``"drop"`` (the
        run's own API, which records none).
    progress
        Where task states are counted (``None``: not counted): its ``report`` makes
        the message a worker sends on its ``topic`` when a task ends
        (:class:`flowrig.run.progress.TaskProgress`).
    **kwargs
        As for ``DaskTaskRunner`` (``address``, ``client_kwargs``...).
    """

    _TASK_CACHE_SIZE = 256
    #: Attributes that belong to one run in this process and never travel.
    _RUNTIME = ("_lock", "_run_future", "_task_futures", "_pinned", "_collecting", "progress", "_subscribed",
                "_root")

    def __init__(self, *args: Any, events: str = "send", progress: "TaskProgress | None" = None, **kwargs: Any):
        if events not in EVENTS:
            raise ValueError(f"events must be one of {EVENTS}, got {events!r}")
        super().__init__(*args, **kwargs)
        self.events = events
        self.progress = progress
        self._reset()

    def _reset(self) -> None:
        self._lock = threading.RLock()
        self._collecting: list[_Collected] | None = None
        self._run_ident: Any = None
        self._run_token: str | None = None
        self._run_future: Any = None
        self._pinned: tuple[Any, Any] | None = None
        self._task_futures: OrderedDict[int, tuple[Any, Any]] = OrderedDict()
        self._tokens: list[str] = []
        self._subscribed = False
        #: On a worker, the token of the run whose tasks submit through this runner
        #: (``None`` in the runner's own process).
        self._root: str | None = None

    def __getstate__(self) -> dict[str, Any]:
        # The flow travels with every task's context, and carries this (unstarted)
        # runner: what belongs to the run in this process stays here.
        state = {k: v for k, v in self.__dict__.items() if k not in self._RUNTIME}
        state.update(_run_ident=None, _tokens=[])
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self.progress = None
        self._reset()

    def duplicate(self) -> "FlowrigTaskRunner":
        twin = super().duplicate()
        twin.events = self.events
        twin.progress = self.progress
        return twin

    def __eq__(self, other: object) -> bool:
        return isinstance(other, FlowrigTaskRunner) and super().__eq__(other) and self.events == other.events

    __hash__ = DaskTaskRunner.__hash__

    # --- the client ----------------------------------------------------------------------
    @property
    def client(self) -> Any:
        """The runner's Dask client, connected on first use to the run's own scheduler.

        Unlike prefect-dask, a default client of this process (a notebook's, or a
        worker's own) is never adopted: its scheduler may be another cluster's. Inside a
        task (a task that submits tasks) the client connects to the scheduler of the
        worker it runs on, whatever name the runner knows that scheduler by, with the
        runner's credentials or, failing those, the worker's own; no default client is
        made or changed on the way.
        """
        if self._client is None and self._cluster is None:
            from flowrig.internals.worker_security import client_security, current_worker

            worker = current_worker()
            if worker is not None:
                kwargs = dict(self.client_kwargs)
                kwargs.setdefault("security", client_security(worker.security))
                self._connect(worker.scheduler.address, kwargs)
            elif self.address:
                self._connect(self.address, self.client_kwargs)
        return super().client

    def _connect(self, address: str, client_kwargs: dict[str, Any]) -> None:
        import distributed
        from prefect_dask.client import PrefectDaskClient

        self._connect_to = address
        self._client = self._exit_stack.enter_context(PrefectDaskClient(address, **client_kwargs))
        if self.performance_report_path:
            self._exit_stack.enter_context(distributed.Client.as_current(self._client))
            self._exit_stack.enter_context(distributed.performance_report(self.performance_report_path))

    # --- what is the same for every task of a run ------------------------------------------
    def _run_payload(self) -> tuple[str, Any]:
        import prefect
        from prefect.context import FlowRunContext, SettingsContext, _deployment_id, _deployment_parameters

        flow_run = FlowRunContext.get()
        settings = SettingsContext.get()
        settings_object = settings.settings if settings else None
        deployment_id, deployment_parameters = _deployment_id.get(), _deployment_parameters.get()
        # One payload per flow run and settings: on a worker every task has context
        # objects of its own around the same flow run and Settings, and its nested
        # submissions share one payload.
        flow_run_key = flow_run.flow_run.id if flow_run is not None and flow_run.flow_run is not None else None
        ident = (flow_run_key or id(flow_run), id(settings_object), deployment_id, id(deployment_parameters))
        with self._lock:
            if self._run_ident == ident and self._run_future is not None:
                return self._run_token, self._run_future
            token = uuid.uuid4().hex
            payload = {
                "token": token,
                # What the runner's exit makes every worker forget, nested runs included.
                "root": self._root or token,
                # Settings travel as their objects: the worker must run the same Prefect.
                "prefect_version": prefect.__version__,
                "events": self.events,
                "settings": (settings.profile, settings.settings) if settings else None,
                "flow_run_context": flow_run.serialize() if flow_run else {},
                "deployment_id": str(deployment_id) if deployment_id else None,
                "deployment_parameters": deployment_parameters,
                "progress": (self.progress.topic, self.progress.report) if self.progress else None,
                "task_logs": getattr(self.progress, "task_logs", None),
            }
            future = self.client.submit(_payload, payload, key=f"flowrig-run-{token}", pure=False)
            self._run_ident, self._run_token, self._run_future = ident, token, future
            # Their ids are the cache key: held, so that no other object takes them.
            self._pinned = (flow_run, settings_object, deployment_parameters)
            self._task_futures.clear()
            self._tokens.append(token)
            return token, future

    def _task_payload(self, task: Any, token: str) -> Any:
        with self._lock:
            hit = self._task_futures.get(id(task))
            if hit is not None and hit[0] is task:
                self._task_futures.move_to_end(id(task))
                return hit[1]
            future = self.client.submit(
                _payload, task, key=f"flowrig-task-{token}-{uuid.uuid4().hex[:12]}", pure=False
            )
            self._task_futures[id(task)] = (task, future)
            while len(self._task_futures) > self._TASK_CACHE_SIZE:
                self._task_futures.popitem(last=False)
            return future

    def _subscribe(self) -> None:
        if self.progress is None or self._subscribed:
            return
        self._subscribed = True
        subscriptions = getattr(self.progress, "subscriptions", None)
        topics = subscriptions() if subscriptions is not None else {self.progress.topic: self.progress.event}
        for topic, handler in topics.items():
            self.client.subscribe_topic(topic, handler)

    # --- what differs between tasks ---------------------------------------------------------
    @staticmethod
    def _needs_asset_context(task: Any) -> bool:
        from prefect.context import FlowRunContext
        from prefect.tasks import MaterializingTask

        flow_run = FlowRunContext.get()
        return bool(
            getattr(task, "asset_deps", None)
            or isinstance(task, MaterializingTask)
            or (flow_run is not None and flow_run.task_run_assets)
        )

    @staticmethod
    def _extra(task: Any, task_run_id: uuid.UUID, task_inputs: Any, need_assets: bool) -> dict[str, Any] | None:
        """What ``serialize_context`` would add that may differ between submissions."""
        from prefect.context import AssetContext, TagsContext, TaskRunContext

        extra: dict[str, Any] = {}
        if (task_run := TaskRunContext.get()) is not None:
            extra["task_run_context"] = task_run.serialize()
        if (tags := TagsContext.get()) is not None and tags.current_tags:
            extra["tags_context"] = tags.serialize()
        if need_assets:
            extra["asset_context"] = AssetContext.from_task_and_inputs(
                task=task, task_run_id=task_run_id, task_inputs=task_inputs, copy_to_child_ctx=True
            ).serialize()
        return extra or None

    def _prepare(self, task: Any, parameters: Any, wait_for: Any, dependencies: Any, memo: dict, need_assets: bool):
        from prefect.utilities.engine import collect_task_run_inputs_sync

        task_run_id = uuid.uuid4()
        inputs: dict[str, set[Any]] = {}
        for name, value in parameters.items():
            # One visit of an argument shared by every item of a map (a big list, say).
            seen = memo.get((name, id(value)))
            if seen is None or seen[0] is not value:
                seen = memo[(name, id(value))] = (value, collect_task_run_inputs_sync(value))
            inputs[name] = seen[1]
        if dependencies:
            inputs = {name: found.union(dependencies.get(name, set())) for name, found in inputs.items()}
        return (
            task_run_id,
            self._optimize_futures(parameters),
            self._optimize_futures(wait_for) if wait_for else None,
            inputs,
            self._extra(task, task_run_id, inputs, need_assets),
        )

    @staticmethod
    def _key(task: Any, task_run_id: uuid.UUID) -> str:
        return f"{task.name}-{task_run_id.hex}"

    # --- the TaskRunner API -----------------------------------------------------------
    def submit(self, task: Any, parameters: Any, wait_for: Any = None, dependencies: Any = None) -> Any:
        if not self._started:
            raise RuntimeError("The task runner must be started before submitting work.")
        if self._collecting is not None:
            collected = _Collected(parameters, wait_for, dependencies)
            self._collecting.append(collected)
            return collected
        _leave_thread_pool()
        self._subscribe()
        token, run = self._run_payload()
        task_future = self._task_payload(task, token)
        task_run_id, params, waits, inputs, extra = self._prepare(
            task, parameters, wait_for, dependencies, {}, self._needs_asset_context(task)
        )
        future = self.client.submit(
            _run_task_remote, task_run_id, params, waits, inputs, extra,
            run=run, task=task_future, key=self._key(task, task_run_id), pure=False,
        )
        future.task_run_id = task_run_id
        if self.progress is not None:
            self.progress.submitted(task.name)
        return PrefectDaskFuture(wrapped_future=future, task_run_id=task_run_id)

    def map(self, task: Any, parameters: Any, wait_for: Any = None) -> Any:
        if not self._started:
            raise RuntimeError("The task runner must be started before submitting work.")
        collected: list[_Collected] = []
        self._collecting = collected
        try:
            # Prefect expands the mapping exactly as for every task runner; submit() only
            # records the calls meanwhile.
            super().map(task, parameters, wait_for)
        finally:
            self._collecting = None
        futures = _batched_future_list()()
        if not collected:
            return futures
        _leave_thread_pool()
        self._subscribe()
        token, run = self._run_payload()
        task_future = self._task_payload(task, token)
        need_assets = self._needs_asset_context(task)
        memo: dict[Any, Any] = {}
        prepared = [
            self._prepare(task, c.parameters, c.wait_for, c.dependencies, memo, need_assets) for c in collected
        ]
        del memo
        task_run_ids, params, waits, inputs, extras = (list(column) for column in zip(*prepared))
        wrapped = self.client.map(
            _run_task_remote, task_run_ids, params, waits, inputs, extras,
            run=run, task=task_future, key=[self._key(task, t) for t in task_run_ids], pure=False,
        )
        for task_run_id, future in zip(task_run_ids, wrapped):
            future.task_run_id = task_run_id
            futures.append(PrefectDaskFuture(wrapped_future=future, task_run_id=task_run_id))
        if self.progress is not None:
            self.progress.submitted(task.name, len(task_run_ids))
        return futures

    #: Seconds the runner waits for the workers to take its last message: they answer
    #: in milliseconds, unless the scheduler's event loop is busy (it imports Prefect
    #: when it unpickles a run's first tasks, seconds on a loaded machine), and a run
    #: ended by a signal must not wait for that.
    FORGET_TIMEOUT = 1.0

    def __exit__(self, *args: Any) -> None:
        tokens, self._tokens = self._tokens, []
        self._run_future = self._run_ident = self._pinned = None
        self._task_futures.clear()
        # A runner on a worker (nested submissions) asks nobody: the runner's own exit
        # makes every worker forget the run with everything nested in it. Asking from
        # here would wait on the very worker this runs on.
        if tokens and self._client is not None and self._root is None:
            if self.events == "send":
                # A server of the user's: the workers' last task-run lines are still in
                # their log service's batch, which a worker process ending with its
                # cluster would never send (a multiprocessing child runs no exit handlers).
                try:
                    self._client.run(_send_reporting, on_error="ignore")
                except Exception:
                    pass
            _forget_everywhere(self._client, tokens, self.FORGET_TIMEOUT)
        super().__exit__(*args)


def _forget_everywhere(client: Any, tokens: list[str], timeout: float) -> None:
    """Ask every worker to forget the runs ``tokens``, waiting ``timeout`` seconds at most.

    Workers also forget old runs on their own (a bounded cache), so a worker that does
    not answer (its event loop blocked by a task, say) must not hold up the flow's end.
    """

    def ask() -> None:
        try:
            client.run(_forget_runs_async, tokens, wait=False)
        except Exception:
            pass

    asking = threading.Thread(target=ask, name="flowrig-forget-runs", daemon=True)
    asking.start()
    asking.join(timeout)


def _payload(value: Any) -> Any:
    """An identity task: its result, kept once on each worker that needs it, is ``value``."""
    return value


# --- worker side -----------------------------------------------------------------------------


#: Per worker thread: ``False`` while a task runs there, ``True`` once it left the
#: worker's thread pool, ``None`` outside tasks.
_IN_TASK = threading.local()


def _leave_thread_pool() -> None:
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

    __slots__ = ("token", "root", "profile", "settings", "clients", "clients_lock", "task_runner",
                 "flow_run_fields", "rest", "progress", "undo_task_logs", "drops_events")

    def close(self) -> None:
        if self.drops_events:
            _keep_events(self.token)
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


#: Seconds a worker waits for its Prefect log and event services to send what they hold
#: at the end of a run.
WORKER_DRAIN_TIMEOUT = 5.0

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
    with hydrated_context(None):  # Prefect's own model_rebuild() of the run contexts
        pass
    state = _RunState()
    state.token = payload["token"]
    state.drops_events = False
    state.root = payload.get("root") or state.token
    state.profile, state.settings = payload["settings"] or (None, None)
    state.settings = local_ca_settings(state.settings)
    state.progress = payload.get("progress")
    state.clients, state.clients_lock = {}, threading.Lock()
    state.task_runner, state.flow_run_fields = None, None
    with ExitStack() as stack:
        if state.settings is not None:
            stack.enter_context(SettingsContext(profile=state.profile, settings=state.settings))
        state.drops_events = payload["events"] == "drop"
        if state.drops_events:
            _drop_events(state.token)
        client = _client_for(state)
        flow_run = payload["flow_run_context"]
        if flow_run:
            runner = flow_run["flow"].task_runner.duplicate()
            if isinstance(runner, FlowrigTaskRunner):
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


#: Runs of this worker process whose task events are dropped, and the lock over them.
_DROPPING: set[str] = set()
_DROPPING_LOCK = threading.Lock()


def _drop_events(token: str) -> None:
    """Give the process's events service Prefect's ``NullEventsClient`` while run
    ``token`` lasts. The override is the process's: a worker thread in a user's own
    process (a cluster of threads) must get its events back once the run is gone."""
    from prefect.events.clients import NullEventsClient
    from prefect.events.worker import EventsWorker

    with _DROPPING_LOCK:
        if not _DROPPING:
            EventsWorker.set_client_override(NullEventsClient)
        _DROPPING.add(token)


def _keep_events(token: str) -> None:
    """Run ``token`` is gone: the last dropping run gone, events are sent again."""
    from prefect.events.worker import EventsWorker

    with _DROPPING_LOCK:
        if token not in _DROPPING:
            return
        _DROPPING.discard(token)
        if not _DROPPING:
            EventsWorker.set_client_override(None)


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


async def _forget_runs_async(tokens: Iterable[str]) -> None:
    # On the worker's event loop (Client.run): it must return at once.
    _close_later(_forget_runs(tokens))


def _send_reporting() -> None:
    """Send what Prefect's log and event services of this worker process hold (on the
    worker, at the end of a run that reports to a server of the user's)."""
    from flowrig.internals.prefect_engine import drain_reporting

    drain_reporting(timeout=WORKER_DRAIN_TIMEOUT)


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


def _run_task_remote(task_run_id: Any, parameters: Any, wait_for: Any, dependencies: Any, extra: Any, *,
                     run: dict[str, Any], task: Any) -> Any:
    from prefect.context import FlowRunContext, SettingsContext, hydrated_context
    from prefect.task_engine import run_task_async, run_task_sync

    state = _run_state_for(run)
    _IN_TASK.seceded = False
    with ExitStack() as stack:
        stack.callback(setattr, _IN_TASK, "seceded", None)
        if state.settings is not None:
            stack.enter_context(SettingsContext(profile=state.profile, settings=state.settings))
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
            task=task, task_run_id=task_run_id, parameters=parameters, wait_for=wait_for,
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
