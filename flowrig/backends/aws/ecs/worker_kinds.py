"""The kinds of worker task one ``ecs``/``fargate`` run starts: its workers, or, with
``[[cluster.worker_groups]]``, each group's.

A :class:`WorkerKind` holds everything a worker task of that kind is started with: its
task definition (one per group shape: CPU, memory, GPUs), its command's flags (the
group's Dask resources among them, rendered here and nowhere else), its threads, and
where it runs in each market: Fargate or Fargate Spot, or the cluster's EC2 capacity
providers (``capacity_provider`` on-demand, ``spot_capacity_provider`` for Spot). Pure.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from flowrig.backends.aws.ecs.reasons import no_capacity
from flowrig.backends.markets import SpotSetting
from flowrig.backends.placement import SPOT
from flowrig.roles.task_name import FROM_ECS_TASK, task_id


@dataclass(frozen=True)
class WorkerKind:
    """How the worker tasks of one kind start.

    Parameters
    ----------
    task_definition
        Its task definition's ARN (or family).
    args
        The flags after the worker's own (its Dask resources, TLS last).
    threads
        ``--nthreads`` of each worker.
    fargate
        On Fargate; else on the cluster's EC2 capacity.
    spot
        Its market (:mod:`flowrig.backends.markets`).
    capacity_provider, spot_capacity_provider
        The cluster's capacity providers (Auto Scaling groups) its tasks start on,
        on-demand and on Spot, when not on Fargate; empty: the cluster's default strategy.
    shape
        CPU units and MiB of its tasks, where flowrig registered the task definition.
    gpu
        GPUs of each of its tasks.
    group
        Its worker group (``""``: the run's workers, without groups); in its workers' names.
    """

    task_definition: str
    args: tuple[str, ...] = ()
    threads: int = 1
    fargate: bool = True
    spot: SpotSetting = False
    capacity_provider: str = ""
    spot_capacity_provider: str = ""
    shape: tuple[int, int] | None = None
    gpu: int = 0
    group: str = ""

    @property
    def name_template(self) -> str:
        """The worker's ``--name``: its task's id (filled in by the image's entry point),
        after its group's name when it has one."""
        return f"{self.group}-{FROM_ECS_TASK}" if self.group else FROM_ECS_TASK

    def worker_name(self, task_arn: str) -> str:
        """The Dask name the worker of task ``task_arn`` joins with."""
        return self.name_template.replace(FROM_ECS_TASK, task_id(task_arn))

    def placement_kwargs(self, market: str) -> dict[str, Any]:
        """The RunTask parameters that put a task of this kind in ``market``."""
        if self.fargate:
            if market == SPOT:
                return {"capacityProviderStrategy": [{"capacityProvider": "FARGATE_SPOT", "weight": 1}]}
            return {"launchType": "FARGATE"}
        provider = self.spot_capacity_provider if market == SPOT else self.capacity_provider
        return {"capacityProviderStrategy": [{"capacityProvider": provider, "weight": 1}]} if provider else {}

    def short_of_room(self, reason: str) -> bool:
        """Whether a RunTask failure ``reason`` says the market asked in had no room, so
        that the other market may (Fargate: no capacity; EC2 capacity: no instance with
        the ``RESOURCE:`` the task needs)."""
        return no_capacity(reason) or (not self.fargate and "resource:" in reason.lower())
