"""What one run is given (:class:`RunConfig`) and how it ended (:class:`RunOutcome`)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Mapping

from flowrig.errors import FlowRunFailed
from flowrig.project.defaults import BACKEND, MAX_WORKERS, MIN_WORKERS, WORKER_THREADS

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
    no_client_timeout
        Seconds the scheduler stays up once no client is connected (its runner was
        lost); ``None``: the scheduler's default.
    on_start, on_exit
        Callbacks run after the cluster started and after it was torn down.
    flow_run_id
        Run the flow as this existing Prefect flow run (a deployment's run).
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
    no_client_timeout: float | None = None
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
    timings: dict[str, float | None]
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
            "timings": {k: (None if v is None else round(v, 3)) for k, v in self.timings.items()},
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
