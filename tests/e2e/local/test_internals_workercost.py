"""What flowrig.internals.engine_events assumes of the locked Prefect: each test fails
when that version stops behaving so."""

from __future__ import annotations

import inspect
import uuid

import pytest


@pytest.fixture
def override():
    """Prefect's events client override of this process, put back afterwards."""
    from prefect.events.worker import EventsWorker

    before = EventsWorker._client_override
    yield EventsWorker
    EventsWorker._client_override = before


def _task_run_and_states():
    from prefect.client.schemas.objects import TaskRun
    from prefect.states import Completed, Running

    task_run = TaskRun(id=uuid.uuid4(), name="double-abc", task_key="double", dynamic_key="0", flow_run_id=None)
    return task_run, Running(), Completed(data=4)


def test_the_task_engine_calls_the_state_change_event_by_its_module_level_name():
    """Both engines' ``set_state`` (and every other call in the module) look the name up
    in ``prefect.task_engine``'s globals, which is what install() replaces."""
    import re

    import prefect.task_engine as engine
    import prefect.utilities.engine as utilities

    name = "emit_task_run_state_change_event"
    assert getattr(engine, name) is getattr(utilities, name) or getattr(engine, name).__wrapped__ is getattr(
        utilities, name)
    for method in (engine.SyncTaskRunEngine.set_state, engine.AsyncTaskRunEngine.set_state):
        source = inspect.getsource(method)
        assert f"{name}(" in source and f"utilities.engine.{name}" not in source
    calls = re.findall(rf"([\w.]*){name}\(", inspect.getsource(engine))
    assert calls and set(calls) == {""}, calls


def test_set_client_override_keeps_the_client_type_first(override):
    from prefect.events.clients import NullEventsClient, PrefectEventsClient

    override.set_client_override(NullEventsClient)
    assert override._client_override == (NullEventsClient, ())
    override.set_client_override(PrefectEventsClient, api_url="http://127.0.0.1:1/api")
    assert override._client_override[0] is PrefectEventsClient
    override.set_client_override(None)
    assert override._client_override is None


def test_emit_event_sends_nothing_through_the_null_client(override):
    """With ``NullEventsClient`` as the override, Prefect's ``emit_event`` returns
    ``None`` and its events worker is handed nothing, even where it would emit."""
    from prefect.events.clients import NullEventsClient
    from prefect.events.utilities import emit_event
    from prefect.events.worker import EventsWorker
    from prefect.settings import PREFECT_API_URL, temporary_settings

    override.set_client_override(NullEventsClient)
    sent = []
    worker = EventsWorker.instance()
    original_send = worker.send
    worker.send = sent.append
    try:
        with temporary_settings({PREFECT_API_URL: "http://127.0.0.1:1/api"}):
            assert emit_event(event="prefect.task-run.Completed",
                              resource={"prefect.resource.id": f"prefect.task-run.{uuid.uuid4()}"}) is None
    finally:
        worker.send = original_send
    assert sent == []


def test_a_dropped_event_is_not_built_and_any_other_is_prefects(override, monkeypatch):
    """install()'s wrapper answers ``None`` before building anything when the events are
    dropped, and otherwise is Prefect's own function (same arguments, same event)."""
    import prefect.task_engine as engine
    import prefect.utilities.engine as utilities
    from prefect.events.clients import AssertingEventsClient, NullEventsClient

    from flowrig.internals import engine_events

    engine_events.install()
    wrapped = engine.emit_task_run_state_change_event
    assert wrapped is not utilities.emit_task_run_state_change_event
    task_run, running, completed = _task_run_and_states()

    built = []
    truncated_to = utilities.truncated_to
    monkeypatch.setattr(utilities, "truncated_to", lambda length, text: built.append(text) or truncated_to(length, text))
    override.set_client_override(NullEventsClient)
    assert wrapped(task_run=task_run, initial_state=running, validated_state=completed) is None
    assert built == []

    AssertingEventsClient.reset()
    override.set_client_override(AssertingEventsClient)
    try:
        from prefect.settings import PREFECT_API_URL, temporary_settings

        with temporary_settings({PREFECT_API_URL: "http://127.0.0.1:1/api"}):
            event = wrapped(task_run=task_run, initial_state=running, validated_state=completed)
        assert built, "Prefect's own function built the event"
        assert event is not None and event.event == "prefect.task-run.Completed"
        assert event.resource.id == f"prefect.task-run.{task_run.id}"
        assert event.payload["intended"] == {"from": "RUNNING", "to": "COMPLETED"}
    finally:
        override.set_client_override(None)
