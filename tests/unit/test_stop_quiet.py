"""A run being stopped by a signal: its cluster goes away under its client on purpose,
and distributed's tracebacks about the lost connection are not shown."""

from __future__ import annotations

import logging
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
