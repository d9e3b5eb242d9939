"""A worker's heartbeat that finds the scheduler gone is one line on the run's stderr."""

from __future__ import annotations

import io
import logging

import pytest
from distributed.comm.core import CommClosedError

from flowrig.run import heartbeat_lines


@pytest.fixture
def worker_log():
    """distributed.worker's logger writing to a buffer, with the filter as a run installs it."""
    logger = logging.getLogger("distributed.worker")
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    old_filters = list(logger.filters)
    logger.addHandler(handler)
    heartbeat_lines.install()
    heartbeat_lines.install()  # twice: still one filter
    yield logger, stream
    logger.removeHandler(handler)
    logger.filters[:] = old_filters


def _heartbeat_fails(logger):
    """What distributed's Worker.heartbeat does when the scheduler's connection closed."""
    try:
        try:
            raise OSError("Stream is closed")
        except OSError as exc:
            raise CommClosedError("in <TLS (closed) ConnectionPool.heartbeat_worker>: Stream is closed") from exc
    except OSError:
        logger.exception("Failed to communicate with scheduler during heartbeat.")


def test_a_failed_heartbeat_is_one_line_with_its_error_and_no_traceback(worker_log):
    logger, stream = worker_log
    _heartbeat_fails(logger)
    text = stream.getvalue()
    assert "Traceback" not in text
    assert text.strip().splitlines() == [
        "Failed to communicate with scheduler during heartbeat (CommClosedError: in <TLS (closed) "
        "ConnectionPool.heartbeat_worker>: Stream is closed)"
    ]
    assert sum(isinstance(f, heartbeat_lines.HeartbeatLines) for f in logger.filters) == 1


def test_every_other_worker_error_keeps_its_traceback(worker_log):
    logger, stream = worker_log
    try:
        raise ValueError("a task's own error")
    except ValueError:
        logger.exception("Compute Failed")
    assert "Traceback" in stream.getvalue() and "ValueError: a task's own error" in stream.getvalue()


def test_distributed_still_logs_the_failed_heartbeat_in_these_words():
    """The filter matches distributed's own message: if the locked version words it
    otherwise, the traceback would come back unnoticed."""
    import inspect

    from distributed import worker

    assert f'logger.exception("{heartbeat_lines.HEARTBEAT_FAILED}.")' in inspect.getsource(worker.Worker.heartbeat)
