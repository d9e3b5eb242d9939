"""A local cluster start given up (the run's timeout) reports no traceback afterwards.

``abandon`` kills the starting workers and lets the cluster's loop stop; a nanny start
that failed before the loop stopped is a task nobody retrieves, which asyncio reports
with its traceback when it is collected, after the run's one-line error. The real race
is timing-dependent (tests/e2e/local/test_lost_roles.py runs it whole); here the same
unretrieved failure is made on purpose on a real loop, once as distributed leaves it and
once after ``abandon``'s quieting.
"""

from __future__ import annotations

import asyncio
import gc
import logging
from types import SimpleNamespace

from tornado.ioloop import IOLoop

from flowrig.backends.local.scheduler import _quiet_after_abandon


def _drop_a_failed_start(loop: asyncio.AbstractEventLoop) -> None:
    async def nanny_start() -> None:
        raise RuntimeError("ForkserverNanny failed to start.")

    task = loop.create_task(nanny_start())
    loop.run_until_complete(asyncio.wait([task]))  # done, its exception never asked for
    del task
    gc.collect()


def test_a_failure_nobody_retrieves_after_abandon_goes_to_the_debug_log_only(caplog):
    caplog.set_level(logging.DEBUG)
    plain, quiet = IOLoop(make_current=False), IOLoop(make_current=False)
    try:
        _drop_a_failed_start(plain.asyncio_loop)
        reported = [r for r in caplog.records if r.name == "asyncio" and r.levelno >= logging.ERROR]
        # What a run's stderr showed before: the failure, its traceback attached.
        [error] = reported
        assert error.getMessage().startswith("Task exception was never retrieved"), caplog.text
        assert error.exc_info is not None
        caplog.clear()

        _quiet_after_abandon(SimpleNamespace(loop=quiet))
        _drop_a_failed_start(quiet.asyncio_loop)
        assert not [r for r in caplog.records if r.levelno >= logging.WARNING], caplog.text
        [debug] = [r for r in caplog.records if r.name == "flowrig.local"]
        assert debug.levelno == logging.DEBUG and "ForkserverNanny failed to start." in debug.getMessage()
        assert debug.exc_info is None  # no traceback, even at debug level
    finally:
        plain.close(all_fds=True)
        quiet.close(all_fds=True)


def test_a_cluster_without_a_loop_yet_is_left_as_it_is():
    # A start abandoned before distributed made the loop: nothing to quiet, no error.
    _quiet_after_abandon(SimpleNamespace(loop=None))
    _quiet_after_abandon(SimpleNamespace())
