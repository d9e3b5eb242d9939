"""Lost workers of a ``SpecCluster`` start again, so the cluster returns to its size.

distributed's :class:`~distributed.deploy.SpecCluster` notices a worker that left the
scheduler: when it has not come back under its name within
``distributed.deploy.lost-worker-timeout`` (15 s by default; a nanny that restarts
its worker process is back well within that), the cluster closes that worker's
process object (on the docker backend: removes its container). It does not start it
again, so a killed worker leaves the cluster a worker short for the rest of the run.

:func:`keep_size` adds that last step with distributed's public cluster API: every
second it compares the workers the cluster plans (:attr:`Cluster.plan`, its worker
specs) with those it has started (:attr:`Cluster.requested`). A worker that was
started, is still planned and is no longer started was lost; asking the cluster for
the size it plans already (:meth:`SpecCluster.scale`) starts it again, under its
name. Workers that adaptive scaling retires leave the plan first and are not
replaced. The local and docker backends use it; the cloud backends' pool replaces
its workers itself (:mod:`flowrig.backends.pool`).

A lost worker is thus replaced within ``lost-worker-timeout`` + 2 x :data:`CHECK_INTERVAL`
+ the time a worker takes to start (about a second on the local backend, a few on docker).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from distributed.core import Status
from tornado.ioloop import PeriodicCallback

logger = logging.getLogger("flowrig.keeper")

#: Seconds between two comparisons of the planned and the started workers.
CHECK_INTERVAL = 1.0
#: Seconds the scheduler has to answer before lost workers are started again.
SCHEDULER_ANSWER_TIMEOUT = 5.0
#: The name of the check among the cluster's periodic callbacks.
CALLBACK = "flowrig-keep-size"


class SizeKeeper:
    """Starts a ``SpecCluster``'s lost workers again (see the module's docstring)."""

    def __init__(self, cluster: Any) -> None:
        self.cluster = cluster
        self.started: set[Any] = set()
        self.pending: set[Any] = set()
        #: How many lost workers were started again.
        self.replaced = 0
        #: Set by :meth:`stop`: nothing is started again from then on.
        self.stopped = False

    def stop(self) -> None:
        """Start nothing again from now on (the cluster is being removed by force)."""
        self.stopped = True

    def lost(self) -> set[Any]:
        """Workers started once, still planned, and no longer started."""
        plan, requested = set(self.cluster.plan), set(self.cluster.requested)
        self.started = (self.started | requested) & plan
        return self.started - requested

    async def check(self) -> None:
        """Start the lost workers again (on the cluster's event loop)."""
        if self.stopped or self.cluster.status != Status.running:
            return
        # Lost at two checks in a row: the cluster's close of the lost worker (which
        # removes its container, whose name the new one takes) has had a second.
        now = self.lost()
        lost, self.pending = self.pending & now, now
        if not lost:
            return
        try:
            # Workers are lost with their scheduler too: then there is nothing to rejoin.
            await asyncio.wait_for(self.cluster.scheduler_comm.identity(), SCHEDULER_ANSWER_TIMEOUT)
        except (OSError, asyncio.TimeoutError) as exc:
            logger.debug("not replacing workers %s: the scheduler does not answer (%s)", sorted(map(str, lost)), exc)
            return
        self.started -= lost
        self.pending -= lost
        self.replaced += len(lost)
        logger.warning(
            "worker%s %s left the cluster and did not come back: starting %s again",
            "s" if len(lost) > 1 else "", ", ".join(sorted(map(str, lost))), "them" if len(lost) > 1 else "it",
        )
        # The size it plans already: the cluster starts what it planned and lacks.
        self.cluster.scale(len(self.cluster.worker_spec))


def keep_size(cluster: Any, interval: float = CHECK_INTERVAL) -> SizeKeeper:
    """Keep ``cluster`` (a started ``SpecCluster``) at its size; returns the keeper.

    The check is one of the cluster's periodic callbacks, so it stops when the
    cluster closes.
    """
    keeper = SizeKeeper(cluster)

    def install() -> None:
        callback = PeriodicCallback(keeper.check, interval * 1000)
        cluster.periodic_callbacks[CALLBACK] = callback
        callback.start()

    cluster.loop.add_callback(install)
    return keeper
