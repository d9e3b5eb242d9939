"""One flow run on its own cluster.

:func:`execute` is the single code path behind ``flowrig run``, the in-image ``run``
role and :class:`flowrig.DaskCloudProviderEnvironment`:

1. take a run whose inputs are resolved (:class:`~flowrig.run.prepared.PreparedRun`;
   a :class:`RunConfig` is resolved first by :func:`~flowrig.run.prepared.prepare_config`,
   which starts the run's Prefect API, the slowest part of start-up);
2. validate the parameters against the flow, decide the cluster size;
3. start the cluster with mutual TLS, hand every worker the API's URL;
4. run the flow through prefect-dask;
5. always tear down, whatever happened, then report the flow's final state.
"""

from __future__ import annotations

import dataclasses
import inspect
import logging
import os
import threading
import time
from typing import TYPE_CHECKING, Any, Callable, Mapping

from flowrig.backends.usage import usage_line
from flowrig.common.routes import routes_of
from flowrig.common.runid import current_run_id
from flowrig.common.signals import shielded, stop_guard
from flowrig.errors import BadInput
from flowrig.run.config import RunConfig, RunOutcome, RunRecord
from flowrig.run.console import Console, base_worker_environment
from flowrig.run.flow_call import result_of, run_flow
from flowrig.run.prepared import PreparedRun, prepare_config
from flowrig.run.progress import ProgressDisplay, TaskProgress
from flowrig.run.reporter import NO_REPORTER
from flowrig.run.timings import timeline_line

if TYPE_CHECKING:
    from flowrig.api import EmbeddedPrefectAPI
    from flowrig.backends import Backend, ClusterSpec

logger = logging.getLogger("flowrig")


def execute(
    config: "PreparedRun | RunConfig",
    *,
    announce: Callable[[str], None] | None = None,
    console: Console | None = None,
    record: RunRecord | None = None,
) -> RunOutcome:
    """Run the flow once on a cluster of its own and tear the cluster down.

    Parameters
    ----------
    config
        The run: a :class:`~flowrig.run.prepared.PreparedRun`, whose inputs are
        resolved, or a :class:`RunConfig`, resolved here first
        (:func:`~flowrig.run.prepared.prepare_config`). The run's embedded API, when it
        has one, is stopped here in every case.
    announce
        Called with one human line once the cluster is up (scheduler and dashboard).
    console
        Where a person watches the run (``flowrig run``): flowrig's lines, the task
        progress display, the tasks' own log lines and the timeline go there. ``None``
        prints nothing.
    record
        Filled in as the run goes (its timings count from the command's start when the
        command made it): what a run that ends early reports. Default: a new one,
        whose timings count from this call.

    Returns
    -------
    RunOutcome
        Also when the flow failed: check :attr:`RunOutcome.ok`.

    Raises
    ------
    flowrig.errors.BadInput
        Bad parameters, sizing or certificates; raised before any cluster starts.
    flowrig.errors.InfrastructureError
        When the cluster or the Prefect API cannot start.
    """
    record = record if record is not None else RunRecord()
    timer = record.timer
    timer.begin_run()
    record.run_id = record.run_id or current_run_id()
    run = config
    state = _RunState(api=run.api if isinstance(run, PreparedRun) else None, on_exit=run.on_exit)
    stop_watching = threading.Event()
    progress = record.progress = TaskProgress(
        on_first_finished=lambda: timer.reached("first_task_finished"),
        task_logs=console.task_logs() if console is not None else None,
    )
    # Whatever the flow does with a SIGTERM, the run is torn down: by the finally block
    # below, or from outside the flow when that is not reached in time. The closure
    # sees the cluster and the API as they are when it is called.
    teardown = _Once(lambda: _teardown(state.started, state.api))
    guard = stop_guard(teardown)
    failure: BaseException | None = None
    try:
        if not isinstance(run, PreparedRun):
            run = prepare_config(run)
            state.api = run.api
        record.backend = run.backend.name
        state.prices = run.prices
        plan = _plan(run, state, record, console, progress)
        _start_cluster(run, state, plan, record, stop_watching, announce, console)
        outcome = _run_to_outcome(run, state, plan, record, console, progress)
    except BaseException as exc:
        failure = exc
        raise
    finally:
        guard.release()
        stop_watching.set()
        state.reporter.stop_listening()
        if state.display is not None:
            state.display.stop()
        _conclude(state, record, teardown, failure, console)
    # The timings as they ended, teardown included.
    outcome.timings = timer.as_dict()
    outcome.usage = record.usage
    return outcome


@dataclasses.dataclass
class _RunState:
    """What a run has made so far, as the teardown and the finally block find it."""

    #: The run's embedded API, stopped with the cluster.
    api: "EmbeddedPrefectAPI | None"
    #: Called once the run is torn down (RunConfig.on_exit).
    on_exit: Callable[[], Any] | None = None
    #: The started cluster, once :meth:`Backend.start` returned.
    started: Any = None
    #: Tells a Prefect server of the user's the Dask side of the run (flowrig.run.reporter).
    reporter: Any = NO_REPORTER
    display: ProgressDisplay | None = None
    #: The price table of what the run used (``None``: the shipped one).
    prices: Any = None


@dataclasses.dataclass(frozen=True)
class _Plan:
    """What the cluster and the flow are started with: the parameters validated, the
    size decided, the workers' environment."""

    parameters: dict[str, Any]
    decided: Any
    settings: Mapping[str, Any]
    secrets: Mapping[str, Any]
    spec: "ClusterSpec"


def _plan(
    run: "PreparedRun", state: _RunState, record: RunRecord, console: Console | None, progress: TaskProgress
) -> _Plan:
    """Parameters validated, size decided, the workers' environment: the cluster's spec."""
    from flowrig.backends import ClusterSpec
    from flowrig.internals import worker_security
    from flowrig.project import parameters as params_mod

    backend, api = run.backend, run.api
    parameters = params_mod.validate(run.flow, run.raw_parameters)
    decided = _decide(run, backend, parameters)
    settings = api.client_settings(run.tls) if api is not None else {}
    secrets = api.secret_settings() if api is not None else {}
    worker_env = {
        **base_worker_environment(record.run_id, console.verbosity if console is not None else None, api is None),
        **{name: str(value) for name, value in settings.items() if value is not None},
    }
    if api is None:
        worker_env["PREFECT_API_URL"] = str(run.api_url)
        state.reporter = _reporter(run, parameters, record.run_id, backend.name, record.timer)
        if console is not None:
            # A server of the user's gets every task run's lines; the console its own.
            progress.task_logs = console.task_logs(to_api=True)
    # A client a task opens on the run's cluster gets the run's credentials.
    worker_env.setdefault(worker_security.LOADER_ENV, worker_security.LOADER)
    spec = ClusterSpec(
        run_id=record.run_id,
        size=decided.size,
        tls=run.tls,
        image=run.image,
        worker_env=worker_env,
        options=decided.options,
        worker_threads=run.worker_threads,
        no_client_timeout=run.no_client_timeout,
        min_workers=run.min_workers,
        allowed_environment=frozenset(run.allow_environment),
        on_news=state.reporter.on_news,
        groups=_group_specs(run, decided.size),
    )
    return _Plan(parameters, decided, settings, secrets, spec)


def _group_specs(run: "PreparedRun", size: Any) -> tuple[Any, ...]:
    """The run's worker groups as its backend starts them: sized, with their resources."""
    from flowrig.backends.base import WorkerGroupSpec
    from flowrig.common.routes import worker_resources

    shapes = {group.name: group for group in run.worker_groups}
    specs = []
    for sized in size.groups:
        group = shapes[sized.name]
        threads = group.worker_threads or run.worker_threads
        specs.append(WorkerGroupSpec(
            sized.name, sized.n_workers, threads, worker_resources(sized.name, threads, group.resources, group.gpu),
            adapt=sized.adapt, cpu=None if group.cpu is None else float(group.cpu), memory_mib=group.memory_mib,
            gpu=group.gpu, market=group.market, options=dict(group.options),
        ))
    return tuple(specs)


def _decide(config: "PreparedRun", backend: "Backend", parameters: dict[str, Any]) -> Any:
    """The cluster's size and options (the sizing hook's say included)."""
    from flowrig.project import sizing
    from flowrig.project.groups import check_groups

    backend.check_worker_groups(config.worker_groups, config.options)
    if config.worker_groups:
        try:
            check_groups(config.worker_groups, n_workers=config.n_workers, adapt=config.adapt,
                         max_workers=config.max_workers)
        except ValueError as exc:
            raise BadInput(str(exc)) from None
    decided = sizing.decide(
        parameters,
        n_workers=config.n_workers,
        adapt=config.adapt,
        min_workers=config.min_workers,
        max_workers=config.max_workers,
        hook=config.sizing_hook,
        hook_name=config.sizing_hook_name,
        options=config.options,
        groups={group.name: group.sizing() for group in config.worker_groups},
        group_bounds={group.name: group.bounds(config.max_workers) for group in config.worker_groups},
    )
    if backend.roles_use_image_certificates(decided.options) != backend.roles_use_image_certificates(
        config.options
    ):
        raise BadInput(
            "the sizing hook changed options that decide whether the run's roles use the image's baked "
            "certificates (task definitions or a scheduler of your own, tls): set them in flowrig.toml"
        )
    return decided


def _start_cluster(
    config: "PreparedRun",
    run: _RunState,
    plan: _Plan,
    record: RunRecord,
    stop_watching: threading.Event,
    announce: Callable[[str], None] | None,
    console: Console | None,
) -> None:
    """Start the cluster and say where it is."""
    timer, run_id, backend, size = record.timer, record.run_id, config.backend, plan.decided.size
    record.n_workers = size.n_workers
    timer.phase("prepare")
    run.reporter.tell("cluster.asked", f"flowrig run {run_id}: asking the {backend.name} backend for "
                      f"{size.describe()}", n_workers=size.n_workers)
    started = run.started = backend.start(plan.spec)
    record.scheduler_address, record.dashboard_link = started.scheduler_address, started.dashboard_link
    if run.api is not None:
        run.api.watch()  # the cluster has started its threads anyway
    for key, at in started.marks.items():  # marks of the start only some backends know
        timer.reached(key, at)
    timer.reached("scheduler_up", started.scheduler_up)
    timer.watch_workers(started, size.n_workers, stop_watching)
    line = (
        f"flowrig run {run_id}: {size.describe()} on {backend.name}, "
        f"scheduler at {started.scheduler_address}, "
        f"{dashboard_words(started.dashboard_link, started.dashboard_reach)}"
    )
    run.reporter.tell("cluster.started", line, scheduler_address=started.scheduler_address,
                      dashboard_link=started.dashboard_link)
    if announce:
        announce(line)
    if console is not None:
        console.line(line)
    if config.on_start:
        config.on_start()
    timer.phase("cluster_start")


def _run_to_outcome(
    config: "PreparedRun",
    run: _RunState,
    plan: _Plan,
    record: RunRecord,
    console: Console | None,
    progress: TaskProgress,
) -> RunOutcome:
    """Run the flow on the started cluster once the API is ready; its outcome."""
    from flowrig.internals.prefect_settings import settings_with

    timer, api = record.timer, run.api
    # Built while the API may still be starting: the runner has nothing else to do.
    flow_settings = settings_with({**plan.settings, **plan.secrets})
    if api is not None:
        api.wait_ready()
        timer.reached("api_ready", api.ready_at)
    timer.phase("api_wait")
    if console is not None:
        # With --quiet only failed tasks are shown (with their tracebacks).
        run.display = ProgressDisplay(
            progress, console.stream, prefix=f"flowrig run {record.run_id}", counts=console.shows_progress,
            code_file=_code_file(config.flow),
        ).start()
    # Events to the run's own API would be deleted unread: the workers drop them.
    events = "drop" if api is not None else "send"
    flow_run_id = run.reporter.flow_run_id()  # made while the cluster started
    if flow_run_id is not None:
        config = dataclasses.replace(config, flow_run_id=flow_run_id)
    run.reporter.flow_started()
    size = plan.decided.size
    state = run_flow(
        config, plan.parameters, run.started.scheduler_address, config.tls, flow_settings, progress, events,
        senders=size.most, chunk=config.map_chunk,
        worker_threads=max([config.worker_threads, *(group.threads for group in plan.spec.groups)]),
        routes=routes_of((group.name, group.routed_tags) for group in config.worker_groups),
    )
    timer.reached("flow_finished")
    timer.phase("flow")
    result, message = result_of(state)
    if not state.is_completed() and (note := progress.memory_note()):
        # The cause first: distributed's own message (KilledWorker) does not name it.
        message = f"{note}; {message}" if message else note
    return record.outcome(state.name, result, message=message)


def _conclude(
    run: _RunState,
    record: RunRecord,
    teardown: Callable[[], None],
    failure: BaseException | None,
    console: Console | None,
) -> None:
    """Tear the run down and close its timeline, whatever happened."""
    timer = record.timer
    # A run that ended early: the time until now belongs to the step it was in.
    timer.end_open_phase(before="teardown")
    # A signal during teardown must not leave half a cluster: it is held back and
    # delivered once everything is down.
    with shielded():
        teardown()
        if run.on_exit:
            run.on_exit()
        timer.phase("teardown")
        timer.reached("teardown_done")
        timer.finish()
        record.usage = _usage(run)
        run.reporter.close(timer.timeline, failure, record.usage)
        if console is not None and console.timeline and run.started is not None:
            console.line(timeline_line(record.run_id, timer.timeline))
            if record.usage is not None:
                console.line(usage_line(record.run_id, record.usage))


def _usage(run: _RunState) -> Any:
    """What the run's roles used, from the lives its backend logged (``None`` when it
    logs none). Never fails the run: it is a report."""
    from flowrig.backends.usage import summarize

    lives = getattr(run.started, "lives", None)
    if lives is None:
        return None
    try:
        return summarize(lives(), time.time(), run.prices)
    except Exception as exc:
        logger.warning("what the run used could not be summed up: %s", exc)
        return None


def _reporter(config: "PreparedRun", parameters: dict[str, Any], run_id: str, backend: str, timer: Any) -> Any:
    """The reporter of a run whose API is a server of the user's."""
    from flowrig.run.reporter import for_run

    return for_run(flow=config.flow, parameters=parameters, run_id=run_id, backend=backend,
                   since=timer.start_wall, flow_run_id=config.flow_run_id)


def dashboard_words(link: str | None, reach: str | None) -> str:
    """The dashboard part of the line that announces the cluster: the link (on local
    and docker, one that opens in this machine's browser), and where it opens from
    when that is somewhere else."""
    words = f"dashboard at {link or 'none'}"
    return f"{words} ({reach})" if reach else words


def _code_file(flow: Any) -> str | None:
    """The file of the flow's function, as a person would open it."""
    try:
        path = inspect.getsourcefile(flow.fn)
    except (TypeError, AttributeError):
        return None
    if not path:
        return None
    # Relative where that is shorter (the project below the current directory).
    relative = os.path.relpath(path)
    return path if relative.startswith("..") else relative


class _Once:
    """Call ``function`` once, from whichever thread comes first; later callers wait
    for that call to finish (unlike :class:`~flowrig.backends.base.CloseOnce`): a run
    torn down from outside its flow exits only once everything is down, whichever
    thread got there first."""

    def __init__(self, function: Callable[[], None]) -> None:
        self._function: Callable[[], None] | None = function
        self._lock = threading.Lock()

    def __call__(self) -> None:
        with self._lock:
            function, self._function = self._function, None
            if function is not None:
                function()


def _teardown(started: Any, api: Any) -> None:
    """Close the cluster, then the API; a failure of one never skips the other."""
    if started is not None:
        try:
            started.close()
        except Exception as exc:
            logger.warning("closing the cluster failed: %s", exc)
    if api is not None:
        api.stop()
