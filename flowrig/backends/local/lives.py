"""The lives of a local cluster's processes (:mod:`flowrig.backends.usage`).

The scheduler's process lives from its start (the operating system's record of it)
to the cluster's close. A worker lives from when the cluster lists it as started to
when it no longer does (retired, lost, or closed with the cluster), looked at every
:data:`CHECK_INTERVAL` seconds on the cluster's loop with its public ``workers``. Every
process may use the whole machine, so each one's shape is the host's CPUs and memory;
the machine is the user's own, so nothing is priced.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from tornado.ioloop import PeriodicCallback

from flowrig.backends.usage import LOCAL, LifeLog, Placement
from flowrig.common.routes import group_of_worker

logger = logging.getLogger("flowrig.local")

#: Seconds between two looks at the cluster's workers.
CHECK_INTERVAL = 0.5
#: The check among the cluster's periodic callbacks.
CALLBACK = "flowrig-lives"
#: Bytes in a GiB.
GIB = 1024**3


def host_placement() -> Placement:
    """This machine's CPUs and memory, as the shape of a local process."""
    import psutil

    return Placement(market=LOCAL, vcpu=float(psutil.cpu_count() or 0), memory_gib=psutil.virtual_memory().total / GIB)


def process_started(pid: int | None) -> float | None:
    """When process ``pid`` started (wall clock), as the operating system recorded it."""
    import psutil

    if pid is None:
        return None
    try:
        return float(psutil.Process(pid).create_time())
    except (psutil.Error, OSError):
        return None


class LocalLives:
    """Logs the lives of ``cluster``'s scheduler and workers in :attr:`log`.

    Parameters
    ----------
    cluster
        A started local cluster.
    began
        When its start was asked (wall clock): the start of the workers it started with.
    """

    def __init__(self, cluster: Any, began: float) -> None:
        self.cluster = cluster
        self.log = LifeLog()
        self.placement = host_placement()
        self._workers: set[str] = set()
        process = getattr(getattr(cluster, "scheduler", None), "process", None)
        scheduler_start = process_started(getattr(process, "pid", None)) or began
        self.log.started("scheduler", "scheduler", self.placement, at=scheduler_start)
        for name in self._names():
            self.log.started(name, "worker", self.placement, group=group_of_worker(name), at=began)
            self._workers.add(name)
        cluster.loop.add_callback(self._install)

    def _names(self) -> set[str]:
        return {str(name) for name in list(getattr(self.cluster, "workers", {}))}

    def _install(self) -> None:
        callback = PeriodicCallback(self.check, CHECK_INTERVAL * 1000)
        self.cluster.periodic_callbacks[CALLBACK] = callback
        callback.start()

    def check(self) -> None:
        """Log the workers that started or went since the last look."""
        try:
            names = self._names()
        except Exception as exc:  # a cluster in an odd state: look again next time
            logger.debug("looking at the cluster's workers failed: %s", exc)
            return
        for name in names - self._workers:
            self.log.started(name, "worker", self.placement, group=group_of_worker(name))
        for name in self._workers - names:
            self.log.ended(name)
        self._workers = names

    def closed(self) -> None:
        """The cluster is closed: every life still open ends now."""
        now = time.time()
        for name in self.log.open_names():
            self.log.ended(name, at=now)
