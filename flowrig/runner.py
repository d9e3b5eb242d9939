"""One flow run on its own cluster: the ``run`` role.

:func:`execute` is the single code path behind ``flowrig run``, the in-image ``run``
role and :class:`flowrig.DaskCloudProviderEnvironment`:

1. start the run's Prefect API (unless ``PREFECT_API_URL`` names one), in the
   background, since it is the slowest part of start-up;
2. validate the parameters against the flow, decide the cluster size;
3. start the cluster with mutual TLS, hand every worker the API's URL;
4. run the flow through prefect-dask;
5. always tear down, whatever happened, then report the flow's final state.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Mapping

from flowrig import defaults
from flowrig.errors import FlowRunFailed

if TYPE_CHECKING:
    from flowrig.backends import Backend
    from flowrig.certs import TLSMaterial

logger = logging.getLogger("flowrig")


@dataclass
class RunConfig:
    """What one run needs, whichever front end asked for it.

    Parameters
    ----------
    flow
        The Prefect flow to run.
    parameters
        Raw parameters; validated against the flow before any cluster starts.
    backend
        Backend name, ``module:Class`` path, or a :class:`~flowrig.backends.Backend`.
    n_workers, adapt, min_workers, max_workers
        Declarative size and its bounds (see :func:`flowrig.sizing.decide`).
    sizing_hook, sizing_hook_name
        Optional ``on_execute(parameters, provider_kwargs)``.
    options
        Backend options, passed through.
    tls
        Certificates for every role; ``None`` uses the image's baked files when running
        in the image, else per-run certificates made in memory.
    image
        Image of the scheduler and workers (container backends).
    worker_threads
        Threads per worker.
    on_start, on_exit
        Callbacks run after the cluster started and after it was torn down.
    flow_run_id
        Run the flow as this existing Prefect flow run (a deployment's run).
    """

    flow: Any
    parameters: Mapping[str, Any] = field(default_factory=dict)
    backend: "str | Backend" = defaults.BACKEND
    n_workers: int | None = None
    adapt: tuple[int, int] | None = None
    min_workers: int = defaults.MIN_WORKERS
    max_workers: int = defaults.MAX_WORKERS
    sizing_hook: Callable[..., Any] | None = None
    sizing_hook_name: str = "sizing hook"
    options: Mapping[str, Any] = field(default_factory=dict)
    tls: "TLSMaterial | None" = None
    image: str | None = None
    worker_threads: int = defaults.WORKER_THREADS
    on_start: Callable[[], Any] | None = None
    on_exit: Callable[[], Any] | None = None
    flow_run_id: str | None = None


@dataclass
class RunOutcome:
    """How a run ended; ``--output json`` prints :meth:`to_json`."""

    state: str
    result: Any
    n_workers: int
    backend: str
    scheduler_address: str
    dashboard_link: str | None
    timings: dict[str, float]
    run_id: str
    message: str | None = None

    @property
    def ok(self) -> bool:
        """Whether the flow run completed."""
        return self.state == "Completed"

    def to_dict(self) -> dict[str, Any]:
        """The JSON-ready summary; ``result`` is left out when it is not JSON data."""
        data: dict[str, Any] = {
            "state": self.state,
            "n_workers": self.n_workers,
            "backend": self.backend,
            "scheduler_address": self.scheduler_address,
            "dashboard_link": self.dashboard_link,
            "timings": {k: round(v, 3) for k, v in self.timings.items()},
            "run_id": self.run_id,
        }
        try:
            json.dumps(self.result)
            data["result"] = self.result
        except (TypeError, ValueError):
            data["result_repr"] = repr(self.result)[:200]
        if self.message:
            data["message"] = self.message
        return data

    def to_json(self) -> str:
        """One line of JSON."""
        return json.dumps(self.to_dict(), sort_keys=True)

    def raise_for_state(self) -> None:
        """Raise :class:`FlowRunFailed` unless the run completed."""
        if not self.ok:
            raise FlowRunFailed(f"flow run ended {self.state}: {self.message or 'see the log above'}")


class _Timer:
    def __init__(self) -> None:
        self.start = time.perf_counter()
        self.marks: dict[str, float] = {}

    def mark(self, name: str, since: float) -> float:
        now = time.perf_counter()
        self.marks[name] = now - since
        return now


def _api_url_configured() -> bool:
    from prefect.settings import PREFECT_API_URL

    return bool(PREFECT_API_URL.value())


def _resolve_tls(tls: "TLSMaterial | None") -> "TLSMaterial":
    from flowrig.certs import TLSMaterial

    if tls is not None:
        return tls
    if os.environ.get("FLOWRIG_IN_IMAGE") and defaults.IMAGE_TLS_DIR.is_dir():
        return TLSMaterial.from_dir(defaults.IMAGE_TLS_DIR)
    return TLSMaterial.ephemeral()


def _backend_name(backend: "str | Backend") -> str:
    return backend if isinstance(backend, str) else backend.name


def start_prefect_api(backend: "str | Backend") -> Any:
    """Start the run's embedded Prefect API, or return ``None`` when one is configured.

    Call it as early as possible: the server's start-up then overlaps with loading
    the flow and starting the cluster. :func:`execute` stops it.
    """
    from flowrig.backends import get_backend
    from flowrig.prefect_api import EmbeddedPrefectAPI

    # Only the environment is read here: Prefect's own settings (profiles, .env) need
    # an import of prefect that takes seconds. execute() checks them once prefect is
    # imported anyway, and stops this server if they name an API after all.
    if os.environ.get("PREFECT_API_URL"):
        return None
    resolved = get_backend(backend) if isinstance(backend, str) else backend
    return EmbeddedPrefectAPI(*resolved.prefect_api_hosts()).start()


def execute(
    config: RunConfig,
    *,
    announce: Callable[[str], None] | None = None,
    api: Any = None,
) -> RunOutcome:
    """Run ``config.flow`` once on a cluster of its own and tear the cluster down.

    Parameters
    ----------
    config
        The run.
    announce
        Called with one human line once the cluster is up (scheduler and dashboard).
    api
        An embedded API from :func:`start_prefect_api`; started here when ``None`` and
        no ``PREFECT_API_URL`` is set. Stopped here in every case.

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
    from flowrig import parameters as params_mod
    from flowrig import sizing
    from flowrig.backends import ClusterSpec, get_backend
    from flowrig.gcpause import collector_paused

    timer = _Timer()
    run_id = os.environ.get("FLOWRIG_RUN_ID") or uuid.uuid4().hex[:10]
    started = None
    try:
        t = time.perf_counter()
        backend = get_backend(config.backend) if isinstance(config.backend, str) else config.backend
        if api is None:
            api = start_prefect_api(backend)
        if api is not None and _api_url_configured():
            api.stop()  # a Prefect profile names an API: use it, not a server of our own
            api = None
        parameters = params_mod.validate(config.flow, config.parameters)
        decided = sizing.decide(
            parameters,
            n_workers=config.n_workers,
            adapt=config.adapt,
            min_workers=config.min_workers,
            max_workers=config.max_workers,
            hook=config.sizing_hook,
            hook_name=config.sizing_hook_name,
            options=config.options,
        )
        tls = _resolve_tls(config.tls)
        with collector_paused():
            import_flow_engine()
        api_settings = _embedded_api_settings(api, tls) if api is not None else {}
        worker_env = {
            "FLOWRIG_RUN_ID": run_id,
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            **{name: str(value) for name, value in api_settings.items() if value is not None},
        }
        if api is None:
            from prefect.settings import PREFECT_API_URL

            worker_env["PREFECT_API_URL"] = str(PREFECT_API_URL.value())
        spec = ClusterSpec(
            run_id=run_id,
            size=decided.size,
            tls=tls,
            image=config.image,
            worker_env=worker_env,
            options=decided.options,
            worker_threads=config.worker_threads,
        )
        t = timer.mark("prepare", t)
        started = backend.start(spec)
        if announce:
            announce(
                f"flowrig run {run_id}: {decided.size.describe()} on {backend.name}, "
                f"scheduler at {started.scheduler_address}, "
                f"dashboard at {started.dashboard_link or 'none'}"
            )
        if config.on_start:
            config.on_start()
        t = timer.mark("cluster_start", t)
        if api is not None:
            api.wait_ready()
        t = timer.mark("api_wait", t)
        state = _run_flow(config, parameters, started.scheduler_address, tls, api_settings)
        t = timer.mark("flow", t)
        result, message = _result_of(state)
        return RunOutcome(
            state=state.name,
            result=result,
            n_workers=decided.size.n_workers,
            backend=backend.name,
            scheduler_address=started.scheduler_address,
            dashboard_link=started.dashboard_link,
            timings=timer.marks,
            run_id=run_id,
            message=message,
        )
    finally:
        t = time.perf_counter()
        held = _teardown(started, api)
        if config.on_exit:
            config.on_exit()
        timer.mark("teardown", t)
        timer.marks["total"] = time.perf_counter() - timer.start
        _redeliver(held)


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


def import_flow_engine() -> None:
    """Import :data:`PREFECT_ENGINE_MODULES`."""
    import importlib

    for name in PREFECT_ENGINE_MODULES:
        importlib.import_module(name)


def _teardown(started: Any, api: Any) -> list[int]:
    """Close the cluster, then the API; returns the signals held back meanwhile."""
    import signal

    # Ctrl-C or SIGTERM while tearing down must not leave half a cluster: such a
    # signal is held back and delivered again once teardown is done. A signal Prefect
    # re-sends after handling it itself lands here too, and must not be lost.
    previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    held: list[int] = []
    in_main = _in_main_thread()
    if in_main:
        for s in previous:
            signal.signal(s, lambda signum, frame: held.append(signum))
    try:
        if started is not None:
            try:
                started.close()
            except Exception as exc:  # teardown goes on: the API must stop too
                logger.warning("closing the cluster failed: %s", exc)
        if api is not None:
            api.stop()
    finally:
        if in_main:
            for s, handler in previous.items():
                signal.signal(s, handler)
    return list(dict.fromkeys(held))


def _redeliver(signals: list[int]) -> None:
    import signal

    for signum in signals:
        signal.raise_signal(signum)


def _in_main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


def _embedded_api_settings(api: Any, tls: Any) -> dict[str, Any]:
    """Prefect settings for a run on its own embedded API, by environment name.

    That API's database is deleted with the run. Heartbeats exist so that a server
    can notice a crashed run later, and logs sent there would be deleted unread: both
    are off, and the logs still go to the console. Cutting the heartbeat also saves
    the up to one second Prefect waits for its thread at the end of a flow. The API
    runs the very Prefect the clients do, so no process needs to ask for its version.
    """
    return {
        "PREFECT_API_URL": api.url,
        "PREFECT_API_SSL_CERT_FILE": api.small_ca_file(tls.ca_pem),
        "PREFECT_LOGGING_TO_API_ENABLED": "false",
        "PREFECT_CLIENT_SERVER_VERSION_CHECK_ENABLED": "false",
        # The API has CSRF protection off (no browser talks to it), so the token each
        # new client would fetch before its first write is only a wasted request.
        "PREFECT_CLIENT_CSRF_SUPPORT_ENABLED": "false",
        "PREFECT_FLOWS_HEARTBEAT_FREQUENCY": None,
    }


def _run_flow(
    config: RunConfig, parameters: dict[str, Any], address: str, tls: Any, settings: Mapping[str, Any]
) -> Any:
    import prefect.settings
    from prefect_dask import DaskTaskRunner

    from flowrig.prefect_settings import run_settings

    runner = DaskTaskRunner(address=address, client_kwargs={"security": tls.to_security()})
    flow = config.flow.with_options(task_runner=runner)
    # prefect-dask ships the runner's settings to every task on the workers, so the
    # workers use the same API (and the same cheap CA file) as the runner.
    updates = {getattr(prefect.settings, name): value for name, value in settings.items()}
    with run_settings(updates):
        try:
            if config.flow_run_id:
                return _run_existing_flow_run(flow, config.flow_run_id, parameters)
            return flow(**parameters, return_state=True)
        finally:
            _flush_to_api()


def _flush_to_api() -> None:
    # Logs and events still queued must reach the API before it stops; otherwise
    # Prefect retries against a closed port at interpreter exit for a long time.
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    for worker in (APILogWorker, EventsWorker):
        try:
            worker.drain_all(timeout=10)
        except Exception as exc:  # never let reporting hide the flow's own outcome
            logger.debug("draining %s failed: %s", worker.__name__, exc)


def _run_existing_flow_run(flow: Any, flow_run_id: str, parameters: dict[str, Any]) -> Any:
    from prefect.client.orchestration import get_client
    from prefect.flow_engine import run_flow

    with get_client(sync_client=True) as client:
        flow_run = client.read_flow_run(flow_run_id)
    return run_flow(flow, flow_run=flow_run, parameters=parameters, return_type="state")


def _result_of(state: Any) -> tuple[Any, str | None]:
    if state.is_completed():
        return state.result(raise_on_failure=False), None
    try:
        state.result(raise_on_failure=True)
    except BaseException as exc:  # the flow's own exception, reported as data
        return None, f"{type(exc).__name__}: {exc}"
    return None, state.message


def print_outcome(outcome: RunOutcome, output: str) -> None:
    """Print the outcome for ``--output text|json`` (JSON: the last stdout line)."""
    if output == "json":
        print(outcome.to_json(), flush=True)
    else:
        line = f"flowrig run {outcome.run_id}: {outcome.state}"
        if outcome.ok:
            line += f", result {outcome.to_dict().get('result', outcome.to_dict().get('result_repr'))}"
        elif outcome.message:
            line += f": {outcome.message}"
        print(line, file=sys.stdout, flush=True)
