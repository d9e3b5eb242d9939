"""A worker's failed heartbeat in one line instead of a traceback.

distributed logs a heartbeat that finds the scheduler's connection closed with the
whole traceback of that connection (``logger.exception``). While a run is torn down
(its timeout, an interrupt) the scheduler goes first, so a heartbeat in flight is
expected to fail that way; a scheduler lost in the middle of a run is told in
flowrig's own words anyway. The line is kept, with the error's name and text, and
the traceback is dropped: a run's stderr carries no traceback that asks nothing of
the user.
"""

from __future__ import annotations

import logging

#: distributed.worker's message for a heartbeat whose connection failed.
HEARTBEAT_FAILED = "Failed to communicate with scheduler during heartbeat"


class HeartbeatLines(logging.Filter):
    """Turns distributed's failed-heartbeat record into one line (no ``exc_info``)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and str(record.msg).startswith(HEARTBEAT_FAILED):
            error = record.exc_info[1]
            record.msg = f"{HEARTBEAT_FAILED} ({type(error).__name__}: {error})"
            record.args = None
            record.exc_info = None
            record.exc_text = None
        return True


def install() -> None:
    """Add the filter to ``distributed.worker`` in this process (once); local workers
    fork from it and keep it."""
    worker = logging.getLogger("distributed.worker")
    if not any(isinstance(f, HeartbeatLines) for f in worker.filters):
        worker.addFilter(HeartbeatLines())
