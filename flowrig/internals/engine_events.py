"""Task-run events that nobody records are not built.

Prefect's task engine calls ``emit_task_run_state_change_event`` three times per task
run. It builds the whole event first (the task run and two state details dumped as
JSON, a pydantic ``Event``'s worth of work) and only then asks ``emit_event``, which
returns ``None`` without sending when the process's events client is not one of
Prefect's operational clients. On a worker of a run on its embedded API (which records
no events, :mod:`flowrig.internals.event_pacing`), that client is ``NullEventsClient``
and every one of those events is built to be thrown away: about a tenth of a quick
task's time on its worker.

:func:`install` wraps the name the task engine calls with a function that returns
``None`` at once when the process's events override is ``NullEventsClient`` (what
``emit_event`` would have returned), and otherwise calls Prefect's own function. The
check runs per call, so a process whose override changes between runs (a thread cluster
holding runs of both kinds) behaves as before.

Fenced by tests/e2e/local/test_internals_workercost.py: ``prefect.task_engine`` calling
``emit_task_run_state_change_event`` by its module-level name;
``EventsWorker._client_override`` holding ``(client_type, kwargs)`` as
``set_client_override`` sets it; ``emit_event`` returning ``None`` (sending nothing)
when that client type is ``NullEventsClient``.
"""

from __future__ import annotations

import functools
import threading
from typing import Any

_INSTALLED = False
_LOCK = threading.Lock()


def _dropping() -> bool:
    """Whether ``emit_event`` would drop every event of this process now."""
    from prefect.events.clients import NullEventsClient
    from prefect.events.worker import EventsWorker

    override = EventsWorker._client_override
    return override is not None and override[0] is NullEventsClient


def install() -> None:
    """Wrap the task engine's ``emit_task_run_state_change_event`` (once per process)."""
    global _INSTALLED
    with _LOCK:
        if _INSTALLED:
            return
        import prefect.task_engine as engine

        original = engine.emit_task_run_state_change_event

        @functools.wraps(original)
        def emit_task_run_state_change_event(*args: Any, **kwargs: Any) -> Any:
            if _dropping():
                return None
            return original(*args, **kwargs)

        engine.emit_task_run_state_change_event = emit_task_run_state_change_event
        _INSTALLED = True
