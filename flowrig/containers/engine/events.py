"""The engine's events of one run's containers (an OOM kill, say), followed in a thread."""

from __future__ import annotations

import contextlib
import threading
from typing import TYPE_CHECKING, Any, Callable, Iterable

from flowrig.containers.engine.client import logger
from flowrig.containers.labels import LABEL_RUN_ID
from flowrig.errors import one_line

if TYPE_CHECKING:
    from docker import DockerClient


class EventWatch:
    """Docker events of one run's containers, handed to a callback in a thread.

    Call :meth:`stop` when the run ends (the engine's event stream is closed).
    """

    def __init__(self, client: "DockerClient", run_id: str, events: Iterable[str],
                 callback: "Callable[[dict[str, Any]], None]") -> None:
        filters = {"type": ["container"], "event": list(events), "label": [f"{LABEL_RUN_ID}={run_id}"]}
        try:
            self._stream = client.api.events(filters=filters, decode=True)
        except Exception as exc:  # the run does without: the engine shows no events
            logger.debug("no Docker events for run %s: %s", run_id, one_line(exc))
            self._stream = None
            return
        self._callback = callback
        threading.Thread(target=self._follow, name="flowrig-docker-events", daemon=True).start()

    def _follow(self) -> None:
        with contextlib.suppress(Exception):  # the stream ends when stopped
            for event in self._stream:
                try:
                    self._callback(event)
                except Exception as exc:
                    logger.debug("a Docker event was not handled: %s", one_line(exc))

    def stop(self) -> None:
        """Stop watching; safe to call more than once."""
        if self._stream is not None:
            with contextlib.suppress(Exception):
                self._stream.close()


def watch_events(client: "DockerClient", run_id: str, events: Iterable[str],
                 callback: "Callable[[dict[str, Any]], None]") -> EventWatch:
    """Follow ``events`` (e.g. ``oom``) of the containers labelled with ``run_id``."""
    return EventWatch(client, run_id, events, callback)
