"""Adaptive scaling of a :class:`~flowrig.backends.pool.cluster.PoolCluster` (ECS tasks,
VMs): of the whole cluster (``[cluster] adapt``), and of each adaptive worker group.

Both shrink the same way (:class:`RetiringScaleDown`): the workers to go are marked
``retiring`` before the scheduler retires them, so the stop of their task or VM, which
follows their worker's exit and may be seen by the pool's poll before the pool stops
them itself, is neither a loss to replace nor told as one: they are told retired.
:class:`PoolAdaptive` is distributed's ``Adaptive`` with that scale-down, which
:meth:`~flowrig.backends.pool.cluster.PoolCluster.adapt` uses.

Each ``[[cluster.worker_groups]]`` group with an ``adapt`` range is scaled by one
:class:`PoolGroupAdaptive`: the same decisions as on local and docker
(:class:`~flowrig.backends.group_scaling.GroupAdaptive`: its target is its demand from
the scheduler's ``flowrig_group_demand`` handler over its workers' threads, clamped to
its range; it shrinks by retiring idle workers, those without data first), with the
pool's own means:

- the group's workers are those the pool started for it (their names are the
  launcher's, an ECS task's or a VM's, not ``GROUP-N``);
- it grows by asking the pool for the group's new size
  (:meth:`~flowrig.backends.pool.cluster.PoolCluster.scale_groups`): the launcher starts
  the missing workers with the group's name, so in its shape and market;
- it shrinks by ``Adaptive.scale_down``: the scheduler retires the workers gracefully
  (their data moves first), then the pool stops their tasks or VMs and the group's
  wanted size drops with them, so they are not replaced.

A worker of the group that is lost is replaced as any group's is, while the group
still wants it.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, Iterable

from distributed.deploy import Adaptive

from flowrig.backends.group_scaling import GroupAdaptive

if TYPE_CHECKING:
    from flowrig.backends.base import WorkerGroupSpec
    from flowrig.backends.pool.cluster import PoolCluster

logger = logging.getLogger("flowrig.groups")


class RetiringScaleDown:
    """``Adaptive.scale_down`` on a pool: the workers are marked ``retiring`` while the
    scheduler retires them (their data moves first) and the pool stops them."""

    cluster: "PoolCluster"

    async def scale_down(self, workers: Iterable[str]) -> None:
        """Retire ``workers`` on the scheduler (their data moves first), then stop them.

        They are marked as retiring first: the scheduler closes each worker before the
        pool stops its task or VM, and a poll that sees it stop in between must not take
        it for a lost worker to replace."""
        workers = list(workers)
        marked = [self.cluster.workers[name] for name in workers if name in self.cluster.workers]
        for worker in marked:
            worker.retiring = True
        try:
            await super().scale_down(workers)  # type: ignore[misc]  # the Adaptive it is mixed into
        finally:
            for worker in marked:  # still there only when the retirement failed
                worker.retiring = False


class PoolAdaptive(RetiringScaleDown, Adaptive):
    """distributed's ``Adaptive`` for the whole of a pool cluster (``[cluster] adapt``),
    shrinking as the groups do (:class:`RetiringScaleDown`)."""


class PoolGroupAdaptive(RetiringScaleDown, GroupAdaptive):
    """Scales one adaptive worker group of a pool cluster (see the module's docstring).

    Parameters
    ----------
    cluster
        The started pool cluster.
    group
        The group (:class:`~flowrig.backends.base.WorkerGroupSpec`, with ``adapt``).
    first
        Whether the group is the project's first: unrestricted tasks grow it too.
    """

    def __init__(self, cluster: "PoolCluster", group: "WorkerGroupSpec", *, first: bool, **kwargs: Any) -> None:
        assert group.adapt is not None
        self.group = group
        self.first = first
        self._demand = {}
        # GroupAdaptive's own start counts SpecCluster's worker specs, which a pool has
        # none of: its workers are started by the launcher and known by the pool.
        Adaptive.__init__(self, cluster, minimum=group.adapt[0], maximum=group.adapt[1], **kwargs)

    def _mine(self, names: Iterable[Any]) -> set[Any]:
        workers = self.cluster.workers
        return {name for name in names if name in workers and workers[name].group == self.group.name}

    async def scale_up(self, n: int) -> None:
        """Ask the pool for ``n`` workers of the group (it starts the missing ones)."""
        if self.cluster.status.name != "running":
            return  # a closing cluster starts nothing
        if n > self.cluster.book.wanted(self.group.name):
            logger.info("worker group %s grows to %d workers", self.group.name, n)
            self.cluster.scale_groups({self.group.name: n})



def adapt_pool_groups(
    cluster: "PoolCluster", groups: Iterable["WorkerGroupSpec"], **kwargs: Any
) -> list[PoolGroupAdaptive]:
    """A :class:`PoolGroupAdaptive` for each adaptive group of ``cluster``; the first of
    ``groups`` (the project's order) grows for unrestricted tasks too."""
    return [
        PoolGroupAdaptive(cluster, group, first=index == 0, **kwargs)
        for index, group in enumerate(groups) if group.adapt is not None
    ]
