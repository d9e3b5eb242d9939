"""A whole run's deadline: past it, the run ends the way SIGTERM ends it, as timed out.

``[run] timeout`` (``flowrig run --timeout``) bounds a run from its command's start.
When it passes, this process sends itself SIGTERM: the one tested path that unwinds a
run at any point (cluster start, the flow, a busy runner) and tears everything down
(:mod:`flowrig.common.signals`). What then comes out of the run, however the
termination surfaced, becomes :class:`~flowrig.errors.RunTimedOut` (exit 124, as for
``timeout(1)``).
"""

from __future__ import annotations

import os
import signal
import threading
import time
from contextlib import contextmanager
from typing import Iterator

from flowrig.common import forksafe
from flowrig.errors import RunTimedOut


class RunDeadline:
    """The deadline of the run in progress; :meth:`arm` it once its timeout is known."""

    def __init__(self, started: float | None = None) -> None:
        #: The run's start on the monotonic clock: ``started`` (wall clock) if given.
        self.started = time.monotonic() - (time.time() - started if started is not None else 0.0)
        self.seconds: float | None = None
        self.fired = False
        self._timer: threading.Timer | None = None

    def arm(self, seconds: float | None) -> None:
        """End the run ``seconds`` after it started (``None``: never)."""
        if seconds is None or self._timer is not None:
            return
        self.seconds = float(seconds)
        remaining = max(self.started + self.seconds - time.monotonic(), 0.0)
        self._timer = threading.Timer(remaining, self._fire)
        self._timer.name = "flowrig-run-deadline"
        self._timer.daemon = True
        # It only waits: the local backend may still fork its fork server from this
        # process, which it does only while no other thread runs.
        forksafe.mark(self._timer).start()

    def _fire(self) -> None:
        from flowrig.common.signals import ending_as

        self.fired = True
        error = self.error()
        ending_as(error.exit_code, str(error))
        os.kill(os.getpid(), signal.SIGTERM)

    def cancel(self) -> None:
        if self._timer is not None:
            self._timer.cancel()

    def error(self) -> RunTimedOut:
        return RunTimedOut(
            f"the run went on for longer than its timeout of {self.seconds:g} s and was ended; "
            "everything it started is torn down (raise [run] timeout in flowrig.toml or --timeout)"
        )


@contextmanager
def run_deadline(started: float | None = None) -> Iterator[RunDeadline]:
    """A block whose run ends as :class:`~flowrig.errors.RunTimedOut` once its armed
    deadline passes, counted from ``started`` (wall clock; default: now). Put it outside
    :func:`~flowrig.common.signals.terminating`."""
    deadline = RunDeadline(started)
    try:
        yield deadline
    except BaseException:
        deadline.cancel()
        if deadline.fired:
            raise deadline.error() from None
        raise
    deadline.cancel()
    if deadline.fired:
        raise deadline.error()
