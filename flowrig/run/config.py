"""What one run is given (:class:`RunConfig`) and how it ended (:class:`RunOutcome`)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Mapping

from flowrig.errors import SIGNAL_BASE, FlowRunFailed
from flowrig.project.defaults import BACKEND, MAP_CHUNK, MAX_WORKERS, MIN_WORKERS, WORKER_THREADS
from flowrig.run.timings import RunTimer

if TYPE_CHECKING:
    from flowrig.backends import Backend
    from flowrig.certs import TLSMaterial


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
        Declarative size and its bounds (see :func:`flowrig.project.sizing.decide`).
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
    map_chunk
        The most task runs of one ``.map()`` that one Dask task runs (``[cluster]
        map_chunk``; 1: one Dask task per task run).
    no_client_timeout
        Seconds the scheduler stays up once no client is connected (its runner was
        lost); ``None``: the scheduler's default.
    on_start, on_exit
        Callbacks run after the cluster started and after it was torn down.
    flow_run_id
        Run the flow as this existing Prefect flow run (a deployment's run).
    allow_environment
        ``[build] allow_environment``: variables whose values are no secret.
    worker_groups
        Worker groups (:class:`flowrig.project.groups.WorkerGroup`), as
        ``[[cluster.worker_groups]]``; then ``n_workers`` and ``adapt`` stay unset.
    """

    flow: Any
    parameters: Mapping[str, Any] = field(default_factory=dict)
    backend: "str | Backend" = BACKEND
    n_workers: int | None = None
    adapt: tuple[int, int] | None = None
    min_workers: int = MIN_WORKERS
    max_workers: int = MAX_WORKERS
    sizing_hook: Callable[..., Any] | None = None
    sizing_hook_name: str = "sizing hook"
    options: Mapping[str, Any] = field(default_factory=dict)
    tls: "TLSMaterial | None" = None
    image: str | None = None
    worker_threads: int = WORKER_THREADS
    map_chunk: int = MAP_CHUNK
    no_client_timeout: float | None = None
    on_start: Callable[[], Any] | None = None
    on_exit: Callable[[], Any] | None = None
    flow_run_id: str | None = None
    allow_environment: tuple[str, ...] = ()
    worker_groups: tuple[Any, ...] = ()


#: The ``state`` of a run that ended before its flow reached a final state, by exit code
#: (signals: 128 + N).
EARLY_STATES = {2: "BadInput", 3: "InfrastructureError", 124: "TimedOut"}
TERMINATED_STATE = "Terminated"


def no_failed_tasks() -> dict[str, Any]:
    """``failed_tasks`` of a run in which no task failed."""
    return {"count": 0, "by_task": {}, "names": []}


@dataclass
class RunOutcome:
    """How a run ended; ``--output json`` prints :meth:`to_json`.

    ``state`` is the flow run's final Prefect state (``Completed``, ``Failed``,
    ``Crashed``...), or, when the run ended before its flow did, one of
    :data:`EARLY_STATES` or ``Terminated``. ``exit_code`` and ``error`` (the one line
    on stderr) are those of the command; ``failed_tasks`` counts the task runs that
    ended failed, also in a flow that completed; ``usage`` is what the run's roles used
    (:class:`flowrig.backends.usage.Usage`) once its cluster is down: ``None`` when the
    backend logs no roles or no cluster started.
    """

    state: str
    result: Any
    n_workers: int | None
    backend: str | None
    scheduler_address: str | None
    dashboard_link: str | None
    timings: dict[str, float | None]
    run_id: str | None
    message: str | None = None
    exit_code: int = 0
    error: str | None = None
    failed_tasks: dict[str, Any] = field(default_factory=no_failed_tasks)
    usage: Any = None

    @property
    def ok(self) -> bool:
        """Whether the flow run completed."""
        return self.state == "Completed"

    @property
    def tasks_failed(self) -> int:
        """How many task runs ended failed."""
        return int(self.failed_tasks.get("count", 0))

    def failed_tasks_text(self) -> str:
        """``3 tasks failed (step 2, load 1)``."""
        count = self.tasks_failed
        by_task = ", ".join(f"{name} {n}" for name, n in self.failed_tasks.get("by_task", {}).items())
        return f"{count} task{'s' if count != 1 else ''} failed" + (f" ({by_task})" if by_task else "")

    def failure(self, strict: bool = False) -> FlowRunFailed | None:
        """The error the run ends with, if any: the flow did not complete, or (with
        ``strict``) it completed while tasks failed."""
        if not self.ok:
            return FlowRunFailed(f"flow run ended {self.state}: {self.message or 'see the log above'}")
        if strict and self.tasks_failed:
            return FlowRunFailed(
                f"flow run ended Completed, but {self.failed_tasks_text()}; the run fails because of "
                "--strict or [run] fail_on_task_failure"
            )
        return None

    def conclude(self, strict: bool = False) -> FlowRunFailed | None:
        """Set ``exit_code`` and ``error`` from :meth:`failure`, and return it."""
        failure = self.failure(strict)
        self.exit_code = failure.exit_code if failure is not None else 0
        self.error = str(failure) if failure is not None else None
        return failure

    def to_dict(self) -> dict[str, Any]:
        """The JSON-ready summary; ``result`` is left out when it is not JSON data."""
        data: dict[str, Any] = {
            "state": self.state,
            "exit_code": self.exit_code,
            "error": self.error,
            "n_workers": self.n_workers,
            "backend": self.backend,
            "scheduler_address": self.scheduler_address,
            "dashboard_link": self.dashboard_link,
            "timings": {k: (None if v is None else round(v, 3)) for k, v in self.timings.items()},
            "run_id": self.run_id,
            "failed_tasks": self.failed_tasks,
            "usage": self.usage.to_dict() if self.usage is not None else None,
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

    def raise_for_state(self, strict: bool = False) -> None:
        """Raise :class:`FlowRunFailed` unless the run completed (and, with ``strict``,
        no task failed)."""
        failure = self.failure(strict)
        if failure is not None:
            raise failure


@dataclass
class RunRecord:
    """What a run has reached so far, filled in as it goes: what its outcome says when
    it ends before its flow does (bad input, its timeout, a signal).

    Parameters
    ----------
    timer
        The run's timings.
    run_id
        The run's id, once known.
    """

    timer: RunTimer = field(default_factory=RunTimer)
    run_id: str | None = None
    backend: str | None = None
    n_workers: int | None = None
    scheduler_address: str | None = None
    dashboard_link: str | None = None
    #: The run's task counts (:class:`flowrig.run.progress.TaskProgress`), once it has them.
    progress: Any = None
    #: What the run's roles used (:class:`flowrig.backends.usage.Usage`), once torn down.
    usage: Any = None

    def outcome(self, state: str, result: Any = None, *, message: str | None = None) -> RunOutcome:
        """The outcome of the run as far as it got."""
        return RunOutcome(
            state=state,
            result=result,
            n_workers=self.n_workers,
            backend=self.backend,
            scheduler_address=self.scheduler_address,
            dashboard_link=self.dashboard_link,
            timings=self.timer.as_dict(),
            run_id=self.run_id,
            message=message,
            failed_tasks=self.progress.failed_tasks() if self.progress is not None else no_failed_tasks(),
            usage=self.usage,
        )

    def ended_early(self, exit_code: int, error: str | None) -> RunOutcome:
        """The outcome of a run ended by an error or a signal before its flow's end."""
        state = EARLY_STATES.get(exit_code, TERMINATED_STATE if exit_code > SIGNAL_BASE else "Failed")
        outcome = self.outcome(state)
        outcome.exit_code, outcome.error = exit_code, error
        return outcome
