"""Which worker group a Prefect task goes to, by its tags (pure).

Each ``[[cluster.worker_groups]]`` group's workers offer the Dask resource
``flowrig-group-NAME`` (as many as they have threads); a task whose tags meet the
group's tags is submitted asking for one of it, so only that group's workers run it.
A task with no group's tag asks for nothing and runs on any worker.
"""

from __future__ import annotations

from typing import Collection, Iterable, Mapping

from flowrig.errors import BadInput

#: The Dask resource a group's workers offer: this prefix, then the group's name.
GROUP_RESOURCE_PREFIX = "flowrig-group-"
#: A group's name: it goes into worker and container names and into a resource name.
GROUP_NAME_PATTERN = r"^[a-z][a-z0-9-]{0,19}$"


def group_resource(group: str) -> str:
    """The Dask resource the workers of ``group`` offer, ``flowrig-group-NAME``."""
    return f"{GROUP_RESOURCE_PREFIX}{group}"


def group_of_worker(name: object) -> str:
    """The worker group of a worker named ``GROUP-N`` (``""`` for a worker of no group,
    whose name is a number)."""
    return str(name).rpartition("-")[0]


def routes_of(groups: Iterable[tuple[str, Iterable[str]]]) -> dict[str, str]:
    """Tag -> group name, from ``(group name, its tags)`` pairs."""
    return {tag: name for name, tags in groups for tag in tags}


def resources_for(task: str, tags: Collection[str], routes: Mapping[str, str]) -> dict[str, float] | None:
    """The Dask resources a task with ``tags`` is submitted with: its group's, or
    ``None`` (any worker) when no tag names a group.

    Raises
    ------
    BadInput
        When the tags name two groups or more: the task could run on neither's workers.
    """
    if not routes:
        return None
    groups = sorted({routes[tag] for tag in tags if tag in routes})
    if not groups:
        return None
    if len(groups) > 1:
        named = " and ".join(f"'{g}'" for g in groups)
        raise BadInput(f"task '{task}' has tags of worker groups {named}: give it the tags of one group only")
    return {group_resource(groups[0]): 1}


#: The Dask resource a worker with GPUs offers, as many as it has.
GPU_RESOURCE = "GPU"


def worker_resources(
    group: str, threads: int, extra: Mapping[str, float] | None = None, gpu: int = 0
) -> dict[str, float]:
    """The Dask resources a worker of ``group`` with ``threads`` threads offers: one
    group slot per thread, ``GPU`` when it has ``gpu`` GPUs, then the group's own."""
    return {group_resource(group): threads, **({GPU_RESOURCE: gpu} if gpu else {}), **dict(extra or {})}


def resources_flag(resources: Mapping[str, float]) -> str:
    """``resources`` as the Dask worker's ``--resources`` value, ``"A=1,B=2.5"``."""
    return ",".join(f"{name}={amount:g}" for name, amount in resources.items())
