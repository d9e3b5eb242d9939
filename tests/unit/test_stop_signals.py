"""Signals at a run's end: a run being stopped shows no traceback of its cluster going
away under its client, and the signal reader ends as soon as it is closed."""

from __future__ import annotations

import logging
import os
import signal

from flowrig.common import signals


def test_the_first_ending_signal_quiets_the_cluster_loggers(monkeypatch):
    class NoThread:
        def __init__(self, *args, **kwargs) -> None:
            pass

        def start(self) -> None:  # the watchdog's own thread is not this test's subject
            pass

    monkeypatch.setattr(signals.threading, "Thread", NoThread)
    levels = {name: logging.getLogger(name).level for name in signals.CLUSTER_LOGGERS}
    try:
        client = logging.getLogger("distributed.client")
        assert client.isEnabledFor(logging.ERROR)
        signals._Watchdog().arm(signal.SIGTERM)
        for name in signals.CLUSTER_LOGGERS:
            assert not logging.getLogger(name).isEnabledFor(logging.ERROR), name
        # Not the run's own loggers, nor distributed's others (a worker lost for memory).
        assert logging.getLogger("flowrig").isEnabledFor(logging.ERROR)
        assert logging.getLogger("distributed.scheduler").isEnabledFor(logging.WARNING)
    finally:
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)


def test_the_signal_reader_ends_when_closed_though_a_fork_holds_its_pipe():
    """A local run's fork server is a fork of the runner and holds a copy of the signal
    pipe's write end: closing ours is no end of the pipe, yet the reader must end (it
    used to be waited for, a second at every run's end)."""
    record = signals.SignalRecord()
    copy = os.dup(record._write)  # what the fork holds
    try:
        record.watch()
        record.close()
        assert not record._reader.is_alive()
    finally:
        os.close(copy)
