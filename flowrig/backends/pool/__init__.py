"""What every cloud backend shares (ECS tasks, VMs); no cloud SDK is imported here.

- :mod:`~flowrig.backends.pool.launcher`: the :class:`Launcher` a cloud supplies (start
  the scheduler, start a batch of workers, observe all of them in one call, stop them)
  and the records it answers with;
- :mod:`~flowrig.backends.pool.cluster`: :class:`PoolCluster`, flowrig's own cluster
  manager on distributed's public API: start deadline, stop reasons, backed-off polling,
  partial starts, lost workers replaced;
- :mod:`~flowrig.backends.pool.backend`: :class:`PoolBackend`, the start every cloud
  backend shares, and :class:`CloudRun`, the seam a cloud fills it in through.
"""

from __future__ import annotations

from flowrig.backends.pool.backend import CloudRun, PoolBackend, close_run, start_pool
from flowrig.backends.pool.cluster import POLL_MAX, POLL_MIN, PoolCluster
from flowrig.backends.pool.launcher import Endpoint, Launcher, Observed, StartTimeout, WorkerStart

__all__ = [
    "POLL_MAX", "POLL_MIN", "CloudRun", "Endpoint", "Launcher", "Observed", "PoolBackend", "PoolCluster",
    "StartTimeout", "WorkerStart", "close_run", "start_pool",
]
