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
      ``Client.map``; a big map runs several task runs per Dask task (chunks of at
      most ``chunk``; :func:`~flowrig.internals.task_worker.run_chunk`), each with
      its own future, which picks its State out of the chunk's;
    * the futures fetch finished states in batches however the flow waits on them
      (:mod:`flowrig.internals.task_futures`).

Worker side
    :mod:`flowrig.internals.task_worker`: what a worker keeps of a run, and the call
    that runs one task there.

Fenced here and in :mod:`~flowrig.internals.task_worker` (items 5-8), each checked by
tests/e2e/local/test_internals.py on the locked versions:

1. ``DaskTaskRunner._optimize_futures``, ``._client``, ``._started``, ``duplicate()``
   rebuilding the runner from its constructor arguments, ``client`` made on first use
   into ``._exit_stack`` (with ``._connect_to`` and ``performance_report_path``), which
   this runner does itself, without adopting ``distributed.get_client()``'s client;
2. ``PrefectFuture._final_state``: a future whose final state is set is not waited on
   again (the batched fetches of :mod:`~flowrig.internals.task_futures`, fenced there);
3. ``TaskRunner.map`` calling ``self.submit(task=, parameters=, wait_for=, dependencies=)``
   once per item, in order, and only collecting what it returns;
4. the private context variables ``prefect.context._deployment_id`` and
   ``_deployment_parameters``, and the keys ``serialize_context`` ships;
5. to 8. the worker side's, listed in :mod:`~flowrig.internals.task_worker`: ``SyncClientContext``,
   ``FlowRunContext``'s defaults, ``hydrated_context(None)``, ``EventsWorker.set_client_override``;
9. the flow (and so its task runner) travelling in every task's context: the runner
   pickles without its run state.
"""

from __future__ import annotations

import functools
import threading
import uuid
from collections import OrderedDict
from typing import TYPE_CHECKING, Any, Callable, Mapping

from prefect.futures import PrefectFutureList
from prefect_dask import DaskTaskRunner
from prefect_dask.task_runners import PrefectDaskFuture

from flowrig.common.routes import resources_for
from flowrig.internals import event_pacing, task_worker
from flowrig.internals.task_futures import Chunk, FetchGroup, FlowrigFuture, SubmitGroups

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
    senders
        Worker processes the run may have (its maximum size): with ``"send"`` each paces
        its task events to its share of the run's window.
    routes
        Task tag -> worker group (:mod:`flowrig.common.routes`): a task with a group's
        tag is submitted asking for that group's Dask resource, so only its workers
        run it; ``None``: every task runs anywhere.
    worker_threads
        Threads of the run's largest worker: with ``senders``, the threads the cluster
        may have before its workers joined (what sizes chunks).
    chunk
        The most task runs of one ``map`` that one Dask task runs, in turn, on one
        worker thread (default :attr:`CHUNK`; 1: one Dask task per task run, as
        prefect-dask). Only a map big enough to leave :attr:`CHUNKS_PER_THREAD` Dask
        tasks per thread of the cluster's largest size is chunked. Each task run keeps
        its own future, state, retries and logs; a chunk that Dask gives up on (a task
        run that took its worker down) is split, and its task runs run again one each.
    **kwargs
        As for ``DaskTaskRunner`` (``address``, ``client_kwargs``...).
    """

    _TASK_CACHE_SIZE = 256
    #: A map runs its task runs several to a Dask task only while that leaves at least
    #: this many Dask tasks per thread the cluster may have (work for every thread to
    #: the end, and for workers that join late).
    CHUNKS_PER_THREAD = 8
    #: The most task runs of a map one Dask task runs (``chunk``): Dask's own cost per
    #: task (the scheduler's, a worker's, the messages between them) is paid once per
    #: chunk. Measured at n = 5000 on 3 workers: see benchmarks/bench_scale.py. The
    #: same as ``[cluster] map_chunk``'s default (flowrig.project.defaults.MAP_CHUNK).
    CHUNK = 16
    #: Attributes that belong to one run in this process and never travel.
    _RUNTIME = ("_lock", "_run_future", "_task_futures", "_pinned", "_collecting", "progress", "_subscribed",
                "_root", "_submitted")

    def __init__(self, *args: Any, events: str = "send", progress: "TaskProgress | None" = None,
                 senders: int = 1, routes: "Mapping[str, str] | None" = None, chunk: int | None = None,
                 worker_threads: int = 1, **kwargs: Any):
        if events not in EVENTS:
            raise ValueError(f"events must be one of {EVENTS}, got {events!r}")
        super().__init__(*args, **kwargs)
        self.events = events
        self.progress = progress
        self.senders = senders
        self.routes = dict(routes or {})
        self.chunk = self.CHUNK if chunk is None else int(chunk)
        self.worker_threads = max(1, int(worker_threads))
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
        self._submitted = SubmitGroups()
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
        twin.senders = self.senders
        twin.routes = self.routes
        twin.chunk = self.chunk
        twin.worker_threads = self.worker_threads
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
                "event_window": event_pacing.share_of(self.client, self.senders) if self.events == "send" else None,
                "settings": (settings.profile, settings.settings) if settings else None,
                "flow_run_context": flow_run.serialize() if flow_run else {},
                "deployment_id": str(deployment_id) if deployment_id else None,
                "deployment_parameters": deployment_parameters,
                "progress": (self.progress.topic, self.progress.report) if self.progress else None,
                "task_logs": getattr(self.progress, "task_logs", None),
            }
            future = self.client.submit(task_worker.payload, payload, key=f"flowrig-run-{token}", pure=False)
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
                task_worker.payload, task, key=f"flowrig-task-{token}-{uuid.uuid4().hex[:12]}", pure=False
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

    def _optimize_futures(self, expr: Any, chunks: dict[str, Any] | None = None) -> Any:
        """``expr`` with each Prefect future as its Dask future (prefect-dask's), or, for
        a task run of a chunk, as a :class:`~flowrig.internals.task_worker.ChunkItem`
        whose chunk goes into ``chunks`` (the worker picks the task run's State out)."""
        from prefect.utilities.collections import visit_collection

        def visit(value: Any) -> Any:
            if isinstance(value, PrefectDaskFuture):
                wrapped = value.wrapped_future
                index = getattr(value, "_index", None)
                if index is None or chunks is None:
                    return wrapped
                chunks[wrapped.key] = wrapped
                if isinstance(chunks, _Chunks):
                    chunks.seen += 1
                return task_worker.ChunkItem(wrapped.key, index)
            return value

        return visit_collection(expr, visit_fn=visit, return_data=True)

    def _with_chunks(self, parameters: Any, wait_for: Any) -> tuple[Any, Any, Any]:
        """Parameters and ``wait_for`` as Dask takes them, and what the worker needs of
        the chunks they name: ``None``, or ``(chunks, names, in_wait_for)``."""
        chunks = _Chunks()
        names = []
        params = {}
        for name, value in parameters.items():
            seen = chunks.seen
            params[name] = self._optimize_futures(value, chunks)
            if chunks.seen != seen:
                names.append(name)
        seen = chunks.seen
        waits = self._optimize_futures(wait_for, chunks) if wait_for else None
        return params, waits, ((dict(chunks), tuple(names), chunks.seen != seen) if chunks else None)

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
        params, waits, upstream = self._with_chunks(parameters, wait_for)
        return (task_run_id, params, waits, inputs, self._extra(task, task_run_id, inputs, need_assets), upstream)

    def _resources(self, task: Any) -> dict[str, float] | None:
        """The worker group's resource a task asks for, by its tags and the tags of
        its ``with tags(...)`` block, as its task run's tags are."""
        if not self.routes:
            return None
        from prefect.context import TagsContext

        context = TagsContext.get()
        tags = set(task.tags or ()) | set(context.current_tags if context is not None else ())
        return resources_for(task.name, tags, self.routes)

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
        resources = self._resources(task)  # a task of two groups fails before anything is sent
        task_worker.leave_thread_pool()
        self._subscribe()
        token, run = self._run_payload()
        task_future = self._task_payload(task, token)
        task_run_id, params, waits, inputs, extra, upstream = self._prepare(
            task, parameters, wait_for, dependencies, {}, self._needs_asset_context(task)
        )
        future = self.client.submit(
            task_worker.run_task, task_run_id, params, waits, inputs, extra, upstream,
            run=run, task=task_future, key=self._key(task, task_run_id), pure=False, resources=resources,
        )
        future.task_run_id = task_run_id
        if self.progress is not None:
            self.progress.submitted(task.name)
        return FlowrigFuture(future, task_run_id, self._submitted.current())

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
        futures = PrefectFutureList()
        if not collected:
            return futures
        resources = self._resources(task)
        task_worker.leave_thread_pool()
        self._subscribe()
        token, run = self._run_payload()
        task_future = self._task_payload(task, token)
        need_assets = self._needs_asset_context(task)
        memo: dict[Any, Any] = {}
        prepared = [
            self._prepare(task, c.parameters, c.wait_for, c.dependencies, memo, need_assets) for c in collected
        ]
        del memo
        group = FetchGroup()
        size = self._chunk_size(len(prepared))
        if size > 1:
            self._submit_chunks(task, prepared, size, run, task_future, resources, group, futures)
        else:
            for item, future in zip(prepared, self._submit_each(task, prepared, run, task_future, resources)):
                futures.append(FlowrigFuture(future, item[0], group))
        if self.progress is not None:
            self.progress.submitted(task.name, len(prepared))
        return futures

    def _submit_each(self, task: Any, prepared: list[tuple[Any, ...]], run: Any, task_future: Any,
                     resources: Any) -> list[Any]:
        """One Dask task per task run of ``prepared`` (as :meth:`_prepare` gives them)."""
        task_run_ids, params, waits, inputs, extras, upstreams = (list(column) for column in zip(*prepared))
        wrapped = self.client.map(
            task_worker.run_task, task_run_ids, params, waits, inputs, extras, upstreams,
            run=run, task=task_future, key=[self._key(task, t) for t in task_run_ids], pure=False,
            resources=resources,
        )
        for task_run_id, future in zip(task_run_ids, wrapped):
            future.task_run_id = task_run_id
        return wrapped

    def _submit_chunks(self, task: Any, prepared: list[tuple[Any, ...]], size: int, run: Any, task_future: Any,
                       resources: Any, group: FetchGroup, futures: list[Any]) -> None:
        """``prepared`` in Dask tasks of ``size`` task runs each (:func:`task_worker.run_chunk`)."""
        slices = [prepared[start:start + size] for start in range(0, len(prepared), size)]
        items, upstreams = [], []
        for piece in slices:
            chunks: dict[str, Any] = {}
            rows = []
            for task_run_id, params, waits, inputs, extra, upstream in piece:
                if upstream is not None:
                    chunks.update(upstream[0])
                rows.append((task_run_id, params, waits, inputs, extra, upstream[1:] if upstream else None))
            items.append(rows)
            upstreams.append(chunks or None)
        wrapped = self.client.map(
            task_worker.run_chunk, items, upstreams, run=run, task=task_future,
            key=[f"{task.name}-chunk-{uuid.uuid4().hex}" for _ in slices], pure=False, resources=resources,
        )
        for piece, future in zip(slices, wrapped):
            chunk = Chunk(future, functools.partial(self._submit_each, task, piece, run, task_future, resources))
            for index, item in enumerate(piece):
                futures.append(FlowrigFuture(future, item[0], group, index=index, chunk=chunk))

    def _chunk_size(self, n: int) -> int:
        """Task runs per Dask task for a map of ``n``: 1 (each its own) unless the map
        leaves at least :attr:`CHUNKS_PER_THREAD` Dask tasks for every thread the
        cluster may have, at most :attr:`chunk` task runs each."""
        if self.chunk <= 1 or n < 2 * self.CHUNKS_PER_THREAD:
            return 1
        try:
            per_worker = self.client.nthreads()
        except Exception:
            return 1
        # Workers that have not joined yet (an adaptive cluster's) count at the most.
        most = self.senders * max(self.worker_threads, max(per_worker.values(), default=1))
        threads = max(sum(per_worker.values()), most, 1)
        return max(1, min(self.chunk, n // (self.CHUNKS_PER_THREAD * threads)))

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
                    self._client.run(task_worker.send_reporting, on_error="ignore")
                except Exception:
                    pass
            _forget_everywhere(self._client, tokens, self.FORGET_TIMEOUT)
        super().__exit__(*args)


class _Chunks(dict):
    """Chunks by their Dask key, and how many chunk items were made so far."""

    seen = 0


def _forget_everywhere(client: Any, tokens: list[str], timeout: float) -> None:
    """Ask every worker to forget the runs ``tokens``, waiting ``timeout`` seconds at most.

    Workers also forget old runs on their own (a bounded cache), so a worker that does
    not answer (its event loop blocked by a task, say) must not hold up the flow's end.
    """

    def ask() -> None:
        try:
            client.run(task_worker.forget_runs, tokens, wait=False)
        except Exception:
            pass

    asking = threading.Thread(target=ask, name="flowrig-forget-runs", daemon=True)
    asking.start()
    asking.join(timeout)
