"""The Prefect client calls a run's reporter (:mod:`flowrig.run.reporter`) makes."""

from __future__ import annotations

from typing import Any, Iterable, Mapping


class PrefectSink:
    """The Prefect client calls a reporter makes, all from its one thread.

    Only public APIs: ``SyncPrefectClient.create_flow_run``, ``read_flow_run``,
    ``create_logs``, ``create_artifact``, ``set_flow_run_state`` and
    ``prefect.events.emit_event``.
    """

    def __init__(self) -> None:
        self._client: Any = None
        self._emitted = False

    @property
    def client(self) -> Any:
        if self._client is None:
            from prefect.client.orchestration import get_client

            client = get_client(sync_client=True)
            client.__enter__()
            self._client = client
        return self._client

    def create_flow_run(self, flow: Any, parameters: Mapping[str, Any], tags: Iterable[str]) -> Any:
        """What Prefect's engine does when a flow is called, done ahead of the call."""
        from prefect.states import Pending

        return self.client.create_flow_run(
            flow=flow, parameters=flow.serialize_parameters(dict(parameters)), state=Pending(), tags=list(tags),
        )

    def read_flow_run(self, flow_run_id: str) -> Any:
        return self.client.read_flow_run(flow_run_id)

    def send_logs(self, logs: list[Any]) -> None:
        from prefect.settings import get_current_settings

        if get_current_settings().logging.to_api.enabled:  # PREFECT_LOGGING_TO_API_ENABLED
            self.client.create_logs(logs)

    def send_events(self, events: list[dict[str, Any]]) -> None:
        from prefect.events import emit_event

        self._emitted = self._emitted or bool(events)
        for event in events:
            emit_event(**event)

    def create_artifact(self, artifact: Any) -> None:
        self._emitted = True  # Prefect emits an event of its creation
        self.client.create_artifact(artifact)

    def end_flow_run(self, flow_run_id: Any, crashed: bool, message: str) -> None:
        """Put a flow run that never ran in its final state."""
        from prefect.states import Crashed, Failed

        state = Crashed(message=message) if crashed else Failed(message=message)
        self.client.set_flow_run_state(flow_run_id, state=state)

    def close(self) -> None:
        from flowrig.internals.prefect_engine import send_events

        if self._emitted:
            send_events()  # those emitted since the flow's own were drained, the artifact's among them
        if self._client is not None:
            client, self._client = self._client, None
            client.__exit__(None, None, None)
