"""Giving up a ``SpecCluster``'s start from another thread.

``SpecCluster.__init__`` starts the cluster on its own event loop thread and waits for
it (``sync``). When the waiting thread is interrupted (the run's timeout, SIGTERM),
the start goes on in the loop, nobody waits for it, and at exit distributed waits up to
10 s to close a cluster whose start it can no longer finish. flowrig kills what was
started instead and lets the loop go.

Fenced here (tests/e2e/local/test_internals.py checks both on the locked distributed):

- ``SpecCluster._created``: every worker (nanny) made so far, started or starting,
  whose ``pid`` is its worker process's once that runs;
- ``Cluster._loop_runner``, whose ``stop(timeout)`` asks the cluster's own loop to end,
  waits at most ``timeout`` seconds for its thread, and raises ``TimeoutError`` (the
  loop ending meanwhile) when the thread did not end in time.
"""

from __future__ import annotations

import contextlib
from typing import Any


def workers_made(cluster: Any) -> list[Any]:
    """The workers (nannies) ``cluster`` has made so far, started or not."""
    return list(getattr(cluster, "_created", ()))


def let_loop_go(cluster: Any) -> None:
    """Ask ``cluster``'s own event loop to stop, without waiting for its thread (a
    daemon thread, which ends with its pending start)."""
    runner = getattr(cluster, "_loop_runner", None)
    if runner is not None:
        with contextlib.suppress(TimeoutError):  # it ends on its own
            runner.stop(timeout=0)
