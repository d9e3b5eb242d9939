"""The decisions of an adaptive worker group on the pool cluster (ECS tasks, VMs):
its workers are those the pool started for it, whatever the launcher named them; it
grows by asking the pool for the group's size and shrinks by retiring its own idle
workers only."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

from flowrig.backends.base import WorkerGroupSpec
from flowrig.backends.pool.adaptive import adapt_pool_groups
from flowrig.backends.pool.groups import GroupBook


class FakePool:
    """The parts of a PoolCluster the adaptive reads: its workers by group, the joined
    ones, its book, and the scheduler's demand answer."""

    def __init__(self, workers: dict[str, str], joined: set[str], demand: dict) -> None:
        self.workers = {name: SimpleNamespace(group=group) for name, group in workers.items()}
        self.observed = joined
        self.status = SimpleNamespace(name="running")
        self.book = GroupBook()
        self.book.set_sizes({"cpu": 1, "burst": sum(g == "burst" for g in workers.values())})
        self.asked: list[dict] = []

        async def flowrig_group_demand() -> dict:
            return demand

        self.scheduler_comm = SimpleNamespace(flowrig_group_demand=flowrig_group_demand)

    @property
    def plan(self) -> set[str]:
        return set(self.workers)

    requested = plan

    def scale_groups(self, sizes: dict) -> None:
        self.asked.append(dict(sizes))
        self.book.set_sizes(sizes)


GROUPS = (WorkerGroupSpec("cpu", 1, 1, {"flowrig-group-cpu": 1}),
          WorkerGroupSpec("burst", 0, 2, {"flowrig-group-burst": 2}, adapt=(0, 3)))


async def _decide(pool: FakePool) -> tuple[list, dict]:
    [adaptive] = adapt_pool_groups(pool, GROUPS, interval=0, wait_count=1)
    assert adaptive.group.name == "burst" and not adaptive.first  # only the adaptive group, not the first
    target = await adaptive.safe_target()
    recommendation = await adaptive.recommendations(target)
    if recommendation["status"] == "up":
        await adaptive.scale_up(recommendation["n"])
    return pool.asked, recommendation


def test_the_group_grows_to_its_demand_over_its_threads_within_its_maximum():
    demand = {"groups": {"burst": {"tasks": 5, "idle": []}, "cpu": {"tasks": 9, "idle": []}}, "waiting": 40}
    asked, recommendation = asyncio.run(_decide(FakePool({"task-0": "cpu"}, {"task-0"}, demand)))
    assert recommendation == {"status": "up", "n": 3}  # ceil(5 / 2) = 3; unrestricted waiting tasks are cpu's
    assert asked == [{"burst": 3}]


def test_the_group_shrinks_by_its_own_idle_workers_only():
    demand = {"groups": {"burst": {"tasks": 0, "idle": [["task-2", False], ["task-3", True]]},
                         "cpu": {"tasks": 0, "idle": [["task-0", False]]}}, "waiting": 0}
    pool = FakePool({"task-0": "cpu", "task-2": "burst", "task-3": "burst"}, {"task-0", "task-2", "task-3"}, demand)
    asked, recommendation = asyncio.run(_decide(pool))
    # Both of its workers go (the one with data while others can take it); cpu's idle one stays.
    assert recommendation["status"] == "down" and sorted(recommendation["workers"]) == ["task-2", "task-3"]
    assert asked == []


def test_a_closing_pool_grows_no_group():
    demand = {"groups": {"burst": {"tasks": 4, "idle": []}}, "waiting": 0}
    pool = FakePool({"task-0": "cpu"}, {"task-0"}, demand)
    pool.status = SimpleNamespace(name="closing")
    asked, recommendation = asyncio.run(_decide(pool))
    assert recommendation["status"] == "up" and asked == []


def _retiring_pool(fail: bool) -> tuple[FakePool, list]:
    pool = FakePool({"task-0": "cpu", "task-2": "burst"}, {"task-0", "task-2"}, {})
    seen: list = []

    async def retire_workers(names, remove, close_workers):
        # The scheduler closes the worker now: a poll in between must not replace it.
        seen.append(("retire", names, pool.workers["task-2"].retiring))
        if fail:
            raise OSError("scheduler gone")

    async def scale_down(names):
        seen.append(("stop", list(names)))
        for name in names:
            pool.workers.pop(name)

    pool.scheduler_comm.retire_workers = retire_workers
    pool.scale_down = scale_down
    for worker in pool.workers.values():
        worker.retiring = False
    return pool, seen


def test_a_retired_worker_is_marked_retiring_until_the_pool_stops_it():
    pool, seen = _retiring_pool(fail=False)
    [adaptive] = adapt_pool_groups(pool, GROUPS, interval=0)
    asyncio.run(adaptive.scale_down(["task-2"]))
    assert seen == [("retire", ["task-2"], True), ("stop", ["task-2"])]


def test_a_failed_retirement_leaves_the_worker_a_worker_to_replace_when_lost():
    pool, seen = _retiring_pool(fail=True)
    [adaptive] = adapt_pool_groups(pool, GROUPS, interval=0)
    try:
        asyncio.run(adaptive.scale_down(["task-2"]))
    except OSError:
        pass
    assert seen == [("retire", ["task-2"], True)] and pool.workers["task-2"].retiring is False


def test_a_worker_being_retired_is_no_longer_planned_but_still_requested():
    """It leaves the scheduler before the pool stops it: the watch tells a planned
    worker's going as a loss, so while it retires it is not planned."""
    from flowrig.backends.pool.cluster import PoolCluster, _Worker

    pool = SimpleNamespace(workers={"task-0": _Worker("task-0", 0.0, group="cpu"),
                                    "task-2": _Worker("task-2", 0.0, group="burst", retiring=True)})
    assert PoolCluster.plan.fget(pool) == {"task-0"}
    assert PoolCluster.requested.fget(pool) == {"task-0", "task-2"}


def test_plain_adapt_on_the_pool_marks_the_workers_it_retires_as_the_groups_do():
    """``[cluster] adapt`` without groups: the pool's adapt is the retiring one, so its
    retired workers are out of the plan (told retired) and never replaced."""
    import inspect

    from distributed.deploy import Adaptive

    from flowrig.backends.pool.adaptive import PoolAdaptive
    from flowrig.backends.pool.cluster import PoolCluster

    assert inspect.signature(PoolCluster.adapt).parameters["Adaptive"].default is PoolAdaptive
    assert issubclass(PoolAdaptive, Adaptive)
    pool, seen = _retiring_pool(fail=False)
    asyncio.run(PoolAdaptive(pool, minimum=1, maximum=2, interval=0).scale_down(["task-2"]))
    assert seen == [("retire", ["task-2"], True), ("stop", ["task-2"])]
