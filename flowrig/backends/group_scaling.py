"""Adaptive worker groups: each grows and shrinks with its own tasks' demand.

A ``[[cluster.worker_groups]]`` group with an ``adapt`` range is scaled by one
:class:`GroupAdaptive`, distributed's :class:`~distributed.deploy.Adaptive` with the
parts it documents for subclasses (``target``, ``workers_to_close``, ``scale_up``) and
its plan, requested and observed workers narrowed to the group's:

- its target is its demand, from the scheduler's ``flowrig_group_demand`` handler
  (:mod:`flowrig.internals.group_demand`): the tasks restricted to the group's resource
  that wait or are processing, and for the project's first group also the unrestricted
  tasks that wait and those processing on its workers, over its workers' threads,
  clamped to its range;
- it grows by adding worker specs of the group's shape, named ``GROUP-N`` with numbers
  never used before in the run, and asking the cluster for the size it then plans
  (:meth:`~distributed.deploy.SpecCluster.scale`, as :mod:`flowrig.backends.lost_workers`
  does);
- it shrinks by retiring idle workers of the group gracefully (``Adaptive.scale_down``:
  the scheduler's ``retire_workers`` moves their data elsewhere first), after they were
  idle at ``wait_count`` checks in a row; a worker that holds data is retired only
  while a worker outside the retirement is left to take it.

Interval and ``wait_count`` are distributed's (``distributed.adaptive.*``).
"""

from __future__ import annotations

import logging
import math
from typing import TYPE_CHECKING, Any, Callable, Iterable, Mapping

from distributed.deploy import Adaptive

from flowrig.common.routes import group_of_worker as group_of
from flowrig.internals.group_demand import DEMAND_OP

if TYPE_CHECKING:
    from flowrig.backends.base import WorkerGroupSpec

logger = logging.getLogger("flowrig.groups")


def target_of(demand: Mapping[str, Any], group: str, threads: int, first: bool) -> int:
    """The workers ``group`` needs for ``demand`` (the scheduler's answer), before its
    range clamps it: its tasks (with the waiting unrestricted ones for the ``first``
    group) over its workers' ``threads``."""
    tasks = int(demand.get("groups", {}).get(group, {}).get("tasks", 0))
    if first:
        tasks += int(demand.get("waiting", 0))
    return math.ceil(tasks / max(1, threads))


def idle_to_close(idle: Iterable[Any], n: int, others: int) -> list[str]:
    """Up to ``n`` of a group's ``idle`` workers (``[name, holds data]``) to retire:
    those without data first, and one with data only while ``others`` (running
    workers not retired) can take it; the newest first."""
    ranked = sorted(idle, key=lambda item: (bool(item[1]), -_number(item[0])))
    chosen: list[str] = []
    for name, holds_data in ranked:
        if len(chosen) == n:
            break
        if holds_data and others < 1:
            continue
        chosen.append(str(name))
    return chosen


def _number(name: object) -> int:
    tail = str(name).rpartition("-")[2]
    return int(tail) if tail.isdigit() else 0


class GroupAdaptive(Adaptive):
    """Scales one adaptive worker group of a ``SpecCluster`` (see the module's docstring).

    Parameters
    ----------
    cluster
        The started cluster; its ``worker_spec`` holds the group's workers by name.
    group
        The group (:class:`~flowrig.backends.base.WorkerGroupSpec`, with ``adapt``).
    new_worker
        The spec of one more worker of the group (``{"cls": ..., "options": ...}``).
    first
        Whether the group is the project's first: unrestricted tasks grow it too.
    """

    def __init__(
        self, cluster: Any, group: "WorkerGroupSpec", new_worker: Callable[[], dict[str, Any]], *, first: bool,
        **kwargs: Any,
    ) -> None:
        assert group.adapt is not None
        self.group = group
        self.first = first
        self._new_worker = new_worker
        self._next = max([0, *(_number(n) for n in cluster.worker_spec if group_of(n) == group.name)]) + 1
        self._demand: Mapping[str, Any] = {}
        super().__init__(cluster, minimum=group.adapt[0], maximum=group.adapt[1], **kwargs)

    def _mine(self, names: Iterable[Any]) -> set[Any]:
        return {name for name in names if group_of(name) == self.group.name}

    @property
    def plan(self) -> set[Any]:
        return self._mine(self.cluster.plan)

    @property
    def requested(self) -> set[Any]:
        return self._mine(self.cluster.requested)

    @property
    def observed(self) -> set[Any]:
        return self._mine(self.cluster.observed)

    async def target(self) -> int:
        """The group's demand in workers (:func:`target_of`)."""
        self._demand = await getattr(self.scheduler, DEMAND_OP)()
        return target_of(self._demand, self.group.name, self.group.threads, self.first)

    async def workers_to_close(self, target: int) -> list[str]:
        """Idle workers of the group, as many as it has above ``target``."""
        groups = self._demand.get("groups", {})
        idle = groups.get(self.group.name, {}).get("idle", [])
        running = len(self.cluster.observed)
        surplus = len(self.plan) - target
        return idle_to_close(idle, surplus, running - min(surplus, len(idle)))

    async def scale_up(self, n: int) -> None:
        """Grow the group to ``n`` workers, each named ``GROUP-N`` anew."""
        if self.cluster.status.name != "running":
            return  # a closing cluster starts nothing (its scale(0) has emptied the plan)
        grow = n - len(self.plan)
        for _ in range(grow):
            name = self.group.worker_name(self._next)
            self._next += 1
            self.cluster.worker_spec[name] = self._new_worker()
        if grow > 0:
            logger.info("worker group %s grows to %d workers", self.group.name, n)
            self.cluster.scale(len(self.cluster.worker_spec))


class GroupScaling:
    """The :class:`GroupAdaptive` of each adaptive group of one cluster."""

    def __init__(self, cluster: Any, adaptives: list[GroupAdaptive]) -> None:
        self.cluster = cluster
        self.adaptives = adaptives

    def stop(self) -> None:
        """Scale no group from now on (the cluster is closing); from any thread."""
        for adaptive in self.adaptives:
            # On the cluster's loop, where the adaptive's periodic callback runs.
            self.cluster.loop.add_callback(adaptive.stop, "cluster-closing")


def adapt_groups(
    cluster: Any, groups: Iterable["WorkerGroupSpec"], new_worker: Callable[["WorkerGroupSpec"], dict[str, Any]],
    **kwargs: Any,
) -> GroupScaling:
    """Scale each adaptive group of ``cluster`` with its demand; ``new_worker(group)``
    is the spec of one more worker of ``group``. The first of ``groups`` (the
    project's order) grows for unrestricted tasks too."""
    groups = list(groups)
    adaptives = [
        GroupAdaptive(cluster, group, lambda group=group: new_worker(group), first=index == 0, **kwargs)
        for index, group in enumerate(groups) if group.adapt is not None
    ]
    return GroupScaling(cluster, adaptives)
