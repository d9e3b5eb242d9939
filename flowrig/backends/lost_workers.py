"""Lost workers start again, so a cluster returns to its size: one rule, two detectors.

The rule is :class:`Replacements`: a worker that was lost after it joined is said so in
one warning line and started again; a worker that stopped before it joined, or that
could not be started, is a failure; and after as many failures as the cluster has
workers (at least three), nothing is started again, since a worker that dies at every
start would be replaced for ever.

Two detectors tell the rule what was lost, because the two kinds of cluster learn of a
lost worker in different ways:

- a ``SpecCluster`` (the local and docker backends) learns of it only through its
  scheduler, after ``distributed.deploy.lost-worker-timeout``, and has no launcher to
  ask why: :class:`SizeKeeper` below compares its plan with what it started;
- a :class:`~flowrig.backends.pool.cluster.PoolCluster` (ECS tasks, VMs) observes every
  role through its launcher, with the cloud's stop reason, seconds earlier; its plan is
  its launcher's handles, so the plan-vs-started test would never fire on it, and the
  pool's own watch is the detector there.

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
replaced. A ``SpecCluster`` records no failures (a worker process that dies before it
joins is its nanny's to restart), so its budget is never spent.

A lost worker is thus replaced within ``lost-worker-timeout`` + 2 x :data:`CHECK_INTERVAL`
+ the time a worker takes to start (about a second on the local backend, a few on docker).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Callable, Iterable

from distributed.core import Status
from tornado.ioloop import PeriodicCallback

logger = logging.getLogger("flowrig.keeper")

#: Seconds between two comparisons of the planned and the started workers.
CHECK_INTERVAL = 1.0
#: Seconds the scheduler has to answer before lost workers are started again.
SCHEDULER_ANSWER_TIMEOUT = 5.0
#: The name of the check among the cluster's periodic callbacks.
CALLBACK = "flowrig-keep-size"


class Replacements:
    """The one rule for lost workers, whichever detector noticed them.

    Parameters
    ----------
    desired
        The cluster's wanted size now (adaptive scaling changes it).
    """

    def __init__(self, desired: Callable[[], int]) -> None:
        self._desired = desired
        #: How many lost workers were started again.
        self.replaced = 0
        #: One line per worker that stopped before it joined or was never started, oldest first.
        self.failures: list[str] = []

    def lost(self, names: Iterable[Any], reason: str) -> None:
        """Workers ``names`` were lost after joining, for ``reason`` (a phrase such as
        ``stopped (SpotInterruption)``): the one warning line, and they count as replaced."""
        lost = sorted(map(str, names))
        if not lost:
            return
        self.replaced += len(lost)
        many = len(lost) > 1
        logger.warning(
            "worker%s %s %s: starting %s again", "s" if many else "", ", ".join(lost), reason, "them" if many else "it"
        )

    def failed(self, line: str) -> None:
        """A worker stopped before it joined, or was never started: ``line`` says which and why."""
        self.failures.append(line)

    def may_replace(self) -> bool:
        """Whether workers may still be started again: fewer failures than the cluster has
        workers (than three, when it has fewer)."""
        # A worker that never joins would be replaced for ever; a small cluster still
        # gets three tries.
        return len(self.failures) < max(3, self._desired())


class SizeKeeper:
    """Starts a ``SpecCluster``'s lost workers again (see the module's docstring)."""

    def __init__(self, cluster: Any) -> None:
        self.cluster = cluster
        self.started: set[Any] = set()
        self.pending: set[Any] = set()
        #: The rule: the warning line and the count of workers started again.
        self.replacements = Replacements(lambda: len(cluster.worker_spec))
        #: Set by :meth:`stop`: nothing is started again from then on.
        self.stopped = False

    @property
    def replaced(self) -> int:
        """How many lost workers were started again."""
        return self.replacements.replaced

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
        if self.stopped or self.cluster.status != Status.running or not self.replacements.may_replace():
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
        self.replacements.lost(lost, "left the cluster and did not come back")
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
