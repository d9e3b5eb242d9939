"""The Dask side of a run, told to a Prefect server of the user's.

When a run reports to a Prefect server of the user's (``PREFECT_API_URL``), what only
its console saw so far goes to the flow run there too:

- **logs** of the flow run (logger ``flowrig``): the workers asked for, the cluster up
  with its scheduler and dashboard link, each worker started, joined, lost (with the
  reason the backend knows: an exit code, the kernel's OOM kill, a memory limit, a spot
  interruption), replaced or retired, and a start that failed, with its reason and hint;
- **events** ``flowrig.cluster.asked``, ``flowrig.cluster.started``,
  ``flowrig.cluster.start-failed``, ``flowrig.worker.started``, ``flowrig.worker.joined``,
  ``flowrig.worker.lost``, ``flowrig.worker.replaced``, ``flowrig.worker.retired``, each
  related to the flow run (``prefect.flow-run.<id>``), its flow and its deployment, so
  that automations can trigger on them;
- an **artifact** (markdown) on the flow run: the start-up timeline and the cluster's
  size over time.

A ``flowrig run`` creates its flow run here, while the cluster starts (the flow call
would create it only once the cluster is up), so the Dask side of the start, a failed
one included, has a flow run to belong to; a deployment's flow run exists already. What
comes before the flow run does is kept and sent once it does. A run whose flow never
ran (its cluster did not start, it was stopped) leaves its flow run Crashed (Failed for
bad input), with the reason as its message.

Sending is batched and bounded: at most one log request per :data:`FLUSH_INTERVAL`, and
per interval at most :data:`~flowrig.run.reporter_lines.PER_KIND` lines and events of
one kind, the rest of that kind told as one line and one event that counts them (a
burst of 500 workers joining is two requests, not 500). It all happens on a thread of
its own, and a server that does not answer costs the run's teardown at most
:data:`CLOSE_TIMEOUT` seconds; nothing here ever fails a run. The run's own embedded
API gets none of it (it would be deleted unread): :data:`NO_REPORTER` does nothing.

The lines, their batches and the artifact are made in :mod:`~flowrig.run.reporter_lines`
(pure); the Prefect calls are :class:`~flowrig.run.reporter_sink.PrefectSink`'s.
"""

from __future__ import annotations

import contextvars
import datetime
import logging
import threading
import time
from collections import Counter
from typing import TYPE_CHECKING, Any, Iterable, Mapping

from flowrig.errors import BadInput, InfrastructureError, one_line
from flowrig.run.reporter_lines import Size, Told, artifact_key, batch, render_artifact
from flowrig.run.reporter_sink import PrefectSink

if TYPE_CHECKING:
    from flowrig.backends.watch import ClusterNews

logger = logging.getLogger("flowrig.reporter")

#: Seconds between two sends.
FLUSH_INTERVAL = 1.0
#: Lines kept unsent at most (a server that does not keep up); the rest are counted.
MAX_PENDING = 5000
#: Seconds the run's teardown waits for the last sends.
CLOSE_TIMEOUT = 15.0
#: Seconds a flow run waits to be created before the run gives up on the server.
CREATE_TIMEOUT = 60.0
#: The logger name the lines carry in Prefect's UI.
LOGGER_NAME = "flowrig"


class RunReporter:
    """Tells a run's Dask side to the Prefect server it reports to (see the module).

    Parameters
    ----------
    sink
        The Prefect calls (:class:`PrefectSink`).
    run_id, backend
        The run's id and its backend's name (in the events' resources).
    since
        When the run started (``time.time()``): the artifact counts from there.
    flow, parameters, tags
        The flow and its validated parameters: its flow run is created here, unless
    flow_run_id
        names one that exists (a deployment's).
    """

    def __init__(self, sink: Any, *, run_id: str, backend: str, since: float, flow: Any = None,
                 parameters: Mapping[str, Any] | None = None, tags: Iterable[str] = (),
                 flow_run_id: str | None = None) -> None:
        self.sink = sink
        self.run_id, self.backend, self.since = run_id, backend, since
        self._flow, self._parameters, self._tags = flow, dict(parameters or {}), list(tags)
        self._flow_run_id = flow_run_id
        self.flow_run: Any = None
        self._error: BaseException | None = None
        self._ready = threading.Event()
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._pending: list[Told] = []
        self._dropped: Counter[str] = Counter()
        self._sizes: list[Size] = []
        self._listening = True
        self._phase = "preparing"
        self._final: tuple[Mapping[str, float | None], BaseException | None] | None = None
        #: Calls made of the sink, by name (for tests and the benchmark).
        self.calls: Counter[str] = Counter()
        # The caller's context: Prefect's settings (a profile, temporary_settings) live there.
        context = contextvars.copy_context()
        self._thread = threading.Thread(target=context.run, args=(self._run,), name="flowrig-reporter", daemon=True)
        self._thread.start()

    # --- what the run says -------------------------------------------------------------
    @property
    def on_news(self) -> "Any":
        """What the cluster's watch calls (:attr:`ClusterSpec.on_news`)."""
        return self.news

    def news(self, news: "ClusterNews") -> None:
        """A worker's news (any thread; never blocks)."""
        payload: dict[str, Any] = {"workers_joined": news.joined}
        if news.reason:
            payload["reason"] = news.reason
        if news.replaces:
            payload["replaces"] = news.replaces
        with self._lock:
            if not self._listening:
                return  # teardown: workers leave on purpose
            self._sizes.append(Size(news.at, news.joined, news.message))
        self._keep(Told(news.kind, news.message, news.at, news.worker, payload))

    def tell(self, kind: str, message: str, **payload: Any) -> None:
        """One of the run's own lines (``cluster.asked``, ``cluster.started``...)."""
        if kind == "cluster.started":
            self._phase = "running"
        elif kind == "cluster.asked":
            self._phase = "starting"
        self._keep(Told(kind, message, time.time(), None, payload))

    def _keep(self, told: Told) -> None:
        with self._lock:
            if len(self._pending) >= MAX_PENDING:
                self._dropped[told.kind] += 1
                return
            self._pending.append(told)

    def flow_run_id(self) -> str:
        """The flow run's id, once it exists (waits for its creation).

        Raises
        ------
        InfrastructureError
            When the server did not create it.
        """
        if not self._ready.wait(CREATE_TIMEOUT):
            raise InfrastructureError(f"the Prefect API did not create the flow run within {CREATE_TIMEOUT:.0f} s")
        if self._error is not None:
            raise InfrastructureError(f"the Prefect API did not create the flow run: {one_line(self._error)}")
        return str(self.flow_run.id)

    def flow_started(self) -> None:
        """From here on the flow run's state is Prefect's engine's."""
        self._phase = "flow"

    def close(self, timeline: Mapping[str, float | None], failure: BaseException | None, usage: Any = None) -> None:
        """Send what is left, what the run used (a :class:`~flowrig.backends.usage.Usage`,
        when known), the artifact, and (a flow that never ran) the flow run's final
        state; waits at most :data:`CLOSE_TIMEOUT` seconds."""
        with self._lock:
            self._listening = False
        if failure is not None and self._phase != "flow":
            kind = "cluster.start-failed" if self._phase == "starting" else None
            text = _failure_text(failure)
            if kind:
                self.tell(kind, f"flowrig run {self.run_id}: the cluster did not start: {text}", error=text)
        if usage is not None:
            from flowrig.backends.usage import usage_line

            self.tell("run.usage", usage_line(self.run_id, usage), usage=usage.to_dict())
        self._final = (dict(timeline), failure, usage)
        self._wake.set()
        self._thread.join(CLOSE_TIMEOUT)
        if self._thread.is_alive():
            logger.warning("the Prefect server did not take the run's last lines within %.0f s", CLOSE_TIMEOUT)

    def stop_listening(self) -> None:
        """Workers leave on purpose from here on (teardown): their news is not told."""
        with self._lock:
            self._listening = False

    # --- the thread --------------------------------------------------------------------
    def _run(self) -> None:
        try:
            if self._flow_run_id:
                self.flow_run = self._call("read_flow_run", self._flow_run_id)
            else:
                self.flow_run = self._call("create_flow_run", self._flow, self._parameters, self._tags)
        except Exception as exc:
            self._error = exc
            logger.debug("no flow run to report to: %s", exc)
        finally:
            self._ready.set()
        while self._error is None:
            self._wake.wait(FLUSH_INTERVAL)
            self._wake.clear()
            self._flush()
            if self._final is not None:
                self._flush()  # what close() told after the send above
                self._finish(*self._final)
                break
        try:
            self.sink.close()
        except Exception as exc:
            logger.debug("closing the Prefect client failed: %s", exc)

    def _call(self, name: str, *args: Any) -> Any:
        self.calls[name] += 1
        return getattr(self.sink, name)(*args)

    def _flush(self) -> None:
        with self._lock:
            pending, self._pending = self._pending, []
            dropped, self._dropped = self._dropped, Counter()
        if not pending and not dropped:
            return
        lines = batch(pending, dropped)
        flow_run = self.flow_run
        try:
            self._call("send_logs", [self._log(told, flow_run.id) for told in lines])
        except Exception as exc:  # a server that refuses lines must not end the run
            logger.debug("sending %d lines to the Prefect API failed: %s", len(lines), exc)
        try:
            self._call("send_events", [self._event(told, flow_run) for told in lines])
        except Exception as exc:
            logger.debug("sending events to the Prefect API failed: %s", exc)

    def _log(self, told: Told, flow_run_id: Any) -> Any:
        from prefect.client.schemas.actions import LogCreate

        return LogCreate(
            name=LOGGER_NAME, level=told.level, message=told.message, flow_run_id=flow_run_id,
            timestamp=datetime.datetime.fromtimestamp(told.at, datetime.timezone.utc),
        )

    def _event(self, told: Told, flow_run: Any) -> dict[str, Any]:
        labels = {"flowrig.run-id": self.run_id, "flowrig.backend": self.backend}
        if told.worker is not None:
            resource = {"prefect.resource.id": f"flowrig.worker.{self.run_id}.{told.worker}",
                        "prefect.resource.name": told.worker, **labels}
        else:
            resource = {"prefect.resource.id": f"flowrig.cluster.{self.run_id}",
                        "prefect.resource.name": f"flowrig run {self.run_id}", **labels}
        related = [{"prefect.resource.id": f"prefect.flow-run.{flow_run.id}", "prefect.resource.role": "flow-run",
                    "prefect.resource.name": str(flow_run.name)}]
        if getattr(flow_run, "flow_id", None):
            related.append({"prefect.resource.id": f"prefect.flow.{flow_run.flow_id}", "prefect.resource.role": "flow"})
        if getattr(flow_run, "deployment_id", None):
            related.append({"prefect.resource.id": f"prefect.deployment.{flow_run.deployment_id}",
                            "prefect.resource.role": "deployment"})
        return {
            "event": f"flowrig.{told.kind}", "resource": resource, "related": related,
            "occurred": datetime.datetime.fromtimestamp(told.at, datetime.timezone.utc),
            "payload": {"message": told.message, **told.payload},
        }

    def _finish(self, timeline: Mapping[str, float | None], failure: BaseException | None, usage: Any) -> None:
        from prefect.client.schemas.actions import ArtifactCreate

        flow_run = self.flow_run
        with self._lock:
            sizes = list(self._sizes)
        try:
            self._call("create_artifact", ArtifactCreate(
                key=artifact_key(getattr(self._flow, "name", None) or str(getattr(flow_run, "name", "run"))),
                type="markdown",
                description=f"flowrig run {self.run_id} on {self.backend}: start-up timeline, cluster size "
                "and what the run used",
                data=render_artifact(self.run_id, self.backend, timeline, sizes, self.since, usage),
                flow_run_id=flow_run.id,
            ))
        except Exception as exc:
            logger.debug("creating the run's artifact failed: %s", exc)
        if failure is not None and self._phase != "flow":
            try:
                self._call("end_flow_run", flow_run.id, not isinstance(failure, BadInput),
                           f"flowrig: {_failure_text(failure)}")
            except Exception as exc:
                logger.debug("setting the flow run's final state failed: %s", exc)


class _NoReporter:
    """A run that tells nobody (its own embedded API): every call does nothing."""

    on_news = None

    def tell(self, kind: str, message: str, **payload: Any) -> None:
        pass

    def flow_run_id(self) -> None:
        return None

    def flow_started(self) -> None:
        pass

    def stop_listening(self) -> None:
        pass

    def close(self, timeline: Mapping[str, float | None], failure: BaseException | None, usage: Any = None) -> None:
        pass


#: The reporter of a run that reports to its own embedded API.
NO_REPORTER = _NoReporter()


def _failure_text(failure: BaseException) -> str:
    from flowrig.errors import Terminated

    if isinstance(failure, Terminated):
        import signal

        return f"stopped by {signal.Signals(failure.signum).name}"
    if isinstance(failure, KeyboardInterrupt):
        return "interrupted"
    return one_line(failure)


def for_run(*, flow: Any, parameters: Mapping[str, Any], run_id: str, backend: str, since: float,
            flow_run_id: str | None = None) -> RunReporter:
    """A reporter of a run that reports to the configured Prefect server, whose flow run
    (``flow_run_id``, else a new one of ``flow``) starts being created now."""
    from flowrig.internals.prefect_engine import current_tags

    tags = current_tags()  # read here: the reporter's thread has not this one's context
    return RunReporter(PrefectSink(), run_id=run_id, backend=backend, since=since, flow=flow,
                       parameters=parameters, tags=tags, flow_run_id=flow_run_id)
