"""The start every cloud backend shares (:class:`flowrig.backends.pool.PoolBackend`) with
a real cluster: a real mutual-TLS scheduler on loopback and real Dask workers started by
an in-process launcher; only the cloud around them is the recording fake of
tests/pool_support.py.
"""

from __future__ import annotations

import logging
import time

import pytest

from flowrig.backends.base import ClusterSpec
from flowrig.backends.pool import Endpoint, Observed, WorkerStart
from flowrig.backends.usage import Placement, summarize
from flowrig.errors import InfrastructureError
from flowrig.project.sizing import ClusterSize
from tests.e2e.aws.test_ecs_backend import local_scheduler
from tests.e2e.docker.test_run_told import InProcessLauncher
from tests.pool_support import FakeBackend


class SchedulerLauncher(InProcessLauncher):
    """Starts "the scheduler" by handing out a running one's address."""

    def __init__(self, security, address: str) -> None:
        super().__init__(security)
        self.address = address
        self.stop_calls: list[tuple[list[str], str]] = []
        self.closed = False

    def start_scheduler(self) -> str:
        return "scheduler-task"

    def scheduler_endpoint(self, handle: str) -> Endpoint:
        assert handle == "scheduler-task"
        return Endpoint(self.address)

    def observe(self, handles):
        return {h: Observed("running") if h == "scheduler-task" else state
                for h, state in super().observe([h for h in handles]).items()}

    def stop(self, handles, reason: str) -> None:
        self.stop_calls.append((sorted(handles), reason))
        super().stop([h for h in handles if h != "scheduler-task"], reason)

    def close(self) -> None:
        self.closed = True
        super().close()

    def placement(self, handle: str, role: str) -> Placement:
        return Placement(vcpu=1.0 if role == "worker" else 0.5, memory_gib=2.0, price_key="fargate:us-east-1:X86_64")


def spec(tls, workers: int = 2, **options) -> ClusterSpec:
    return ClusterSpec(run_id="tmpl2", size=ClusterSize(workers), tls=tls, image="registry.example/flows:1",
                       options=options)


def test_a_started_cluster_serves_and_closes_the_run_once(tls):
    with local_scheduler(tls, workers=0) as scheduler:
        launcher = SchedulerLauncher(tls.to_security(), scheduler.scheduler_address)
        backend = FakeBackend(launcher)
        started = backend.start(spec(tls, provision_timeout=60))
        try:
            [run] = backend.runs
            assert run.steps == ["prepare", "store_certificates", "launcher"]
            assert started.scheduler_address == scheduler.scheduler_address
            assert len(started.cluster.scheduler_info["workers"]) >= 1
            assert started.dashboard_reach == "[cluster.options] dashboard = true opens it to the fake network"
        finally:
            started.close()
            started.close()
        assert run.steps == ["prepare", "store_certificates", "launcher", "close"]
        # The roles went first (the scheduler task among them), then the run's resources.
        assert launcher.stop_calls[-1] == (["scheduler-task", "task-0", "task-1"], "flowrig teardown")
        assert launcher.closed and launcher.workers == {}
        # Every role's life, from the start asked to the stop, with the launcher's shape.
        lives = started.lives()
        assert sorted((life.role, life.name, life.placement.vcpu) for life in lives) == [
            ("scheduler", "scheduler", 0.5), ("worker", "task-0", 1.0), ("worker", "task-1", 1.0)]
        assert all(life.ended is not None and life.ended >= life.started for life in lives), lives
        usage = summarize(lives, now=time.time())
        assert usage.roles["worker"].count == 2 and usage.estimated_cost_total > 0


def test_a_given_scheduler_has_no_dashboard_advice(tls):
    with local_scheduler(tls, workers=0) as scheduler:
        launcher = InProcessLauncher(tls.to_security())
        backend = FakeBackend(launcher)
        started = backend.start(spec(tls, workers=1, provision_timeout=60,
                                     scheduler_address=scheduler.scheduler_address))
        try:
            assert started.dashboard_reach is None
            assert started.scheduler_address == scheduler.scheduler_address
        finally:
            started.close()
        assert backend.runs[0].steps[-1] == "close"


class RefusingLauncher(SchedulerLauncher):
    def start_scheduler(self) -> str:
        raise RuntimeError("RunTask: AccessDenied for the scheduler\n(request 9)")


def test_a_cluster_that_cannot_start_closes_its_launcher_and_the_run(tls):
    launcher = RefusingLauncher(tls.to_security(), "tls://127.0.0.1:9")
    backend = FakeBackend(launcher)
    with pytest.raises(InfrastructureError) as info:
        backend.start(spec(tls, provision_timeout=30))
    assert str(info.value) == "the fakecloud cluster could not start: RunTask: AccessDenied for the scheduler (request 9)"
    assert launcher.closed
    assert backend.runs[0].steps == ["prepare", "store_certificates", "launcher", "close"]


class NeverJoiningLauncher(SchedulerLauncher):
    """Workers the cloud accepts and never runs."""

    def start_workers(self, scheduler_address: str, count: int, replacing=()) -> WorkerStart:
        return WorkerStart({f"pending-{i}": f"pending-{i}" for i in range(count)})

    def observe(self, handles):
        return {h: Observed("running" if h == "scheduler-task" else "pending") for h in handles}


def test_the_deadline_stops_the_start_and_everything_is_removed(tls, caplog):
    with local_scheduler(tls, workers=0) as scheduler:
        launcher = NeverJoiningLauncher(tls.to_security(), scheduler.scheduler_address)
        backend = FakeBackend(launcher, leftovers=["volume v-1"])
        with caplog.at_level(logging.ERROR, logger="flowrig.pool"), pytest.raises(InfrastructureError) as info:
            backend.start(spec(tls, workers=1, provision_timeout=3))
    assert str(info.value) == ("the fakecloud cluster had no worker within 3 s (worker task PENDING); "
                               "everything created for the run is being removed")
    assert launcher.stop_calls == [(["pending-0", "scheduler-task"], "flowrig teardown")]
    assert backend.runs[0].steps[-1] == "close"
    assert "could not be deleted (they carry its tags): volume v-1" in caplog.text


class GroupLauncher(SchedulerLauncher):
    """Workers of group ``cpu`` join; the cloud has no room for any of group ``gpu``."""

    def __init__(self, security, address: str) -> None:
        super().__init__(security, address)
        self.asked: list[tuple[str, int]] = []

    def start_workers(self, scheduler_address: str, count: int, replacing=(), group: str = "") -> WorkerStart:
        self.asked.append((group, count))
        if group == "gpu":
            return WorkerStart({}, ["RESOURCE:GPU"] * count)
        return super().start_workers(scheduler_address, count, replacing)


def test_a_group_whose_workers_cannot_start_fails_the_start_naming_it(tls):
    """Enough workers joined for the run's minimum, but the gpu group's tasks run on its
    workers only: the start fails at once, naming the group, instead of hanging."""
    from flowrig.backends.base import WorkerGroupSpec
    from flowrig.project.sizing import GroupSize

    groups = (WorkerGroupSpec("cpu", 2, 1, {"flowrig-group-cpu": 1}), WorkerGroupSpec("gpu", 1, 1, {"GPU": 1}))
    with local_scheduler(tls, workers=0) as scheduler:
        launcher = GroupLauncher(tls.to_security(), scheduler.scheduler_address)
        backend = FakeBackend(launcher)
        run = ClusterSpec(run_id="tmplg", size=ClusterSize(3, groups=(GroupSize("cpu", 2), GroupSize("gpu", 1))),
                          tls=tls, image="registry.example/flows:1", options={"provision_timeout": 60}, groups=groups)
        with pytest.raises(InfrastructureError) as info:
            backend.start(run)
    assert str(info.value) == ("no worker task of group gpu can join, and its tasks run on its workers only: "
                               "worker task of group gpu not started: RESOURCE:GPU")
    assert sorted(launcher.asked) == [("cpu", 2), ("gpu", 1)]
    assert backend.runs[0].steps[-1] == "close"


class AdaptiveGroupLauncher(SchedulerLauncher):
    """Real workers offering their group's resource, named as a cloud names its tasks."""

    def __init__(self, security, address: str, groups) -> None:
        super().__init__(security, address)
        self.groups = {group.name: group for group in groups}
        self.asked: list[tuple[str, int]] = []

    def start_workers(self, scheduler_address: str, count: int, replacing=(), group: str = "") -> WorkerStart:
        from distributed import Worker
        from distributed.utils import sync

        self.asked.append((group, count))
        shape = self.groups[group]
        started = {}
        for _ in range(count):
            name = f"task-{self.count}"
            self.count += 1

            async def start(name=name):
                return await Worker(scheduler_address, name=name, nthreads=shape.threads, security=self.security,
                                    host="127.0.0.1", resources=dict(shape.resources))

            self.workers[name] = sync(self.loop.loop, start)
            started[name] = name
        return WorkerStart(started)


def test_an_adaptive_group_grows_for_its_tasks_and_shrinks_after(tls):
    """A group adapting 0-2 starts empty (the start waits for the fixed group only), grows
    through the launcher for the tasks that ask for its resource, then retires its idle
    workers; each worker's life is counted in its own group."""
    import distributed
    from distributed import Client

    from flowrig.backends.base import WorkerGroupSpec
    from flowrig.internals import drain_status, group_demand
    from flowrig.project.sizing import GroupSize

    groups = (WorkerGroupSpec("cpu", 1, 1, {"flowrig-group-cpu": 1}),
              WorkerGroupSpec("burst", 0, 1, {"flowrig-group-burst": 1}, adapt=(0, 2)))
    news: list = []
    with local_scheduler(tls, workers=0) as scheduler:
        drain_status.add_handler(scheduler.scheduler, group_demand.DEMAND_OP,
                                 lambda: group_demand.demand(scheduler.scheduler))
        launcher = AdaptiveGroupLauncher(tls.to_security(), scheduler.scheduler_address, groups)
        backend = FakeBackend(launcher)
        run = ClusterSpec(run_id="tmpla", size=ClusterSize(1, groups=(GroupSize("cpu", 1), GroupSize("burst", 0, (0, 2)))),
                          tls=tls, image="registry.example/flows:1", options={"provision_timeout": 60}, groups=groups,
                          on_news=news.append)
        started = backend.start(run)
        try:
            assert launcher.asked == [("cpu", 1)]
            with Client(scheduler.scheduler_address, security=tls.to_security()) as client:
                futures = client.map(time.sleep, [1.5] * 4, resources={"flowrig-group-burst": 1}, pure=False)
                distributed.wait(futures, timeout=30)  # the group has no worker until it grows
                burst = [name for name, w in started.cluster.workers.items() if w.group == "burst"]
                assert burst, started.cluster.workers
                assert ("burst", 2) in launcher.asked or launcher.asked.count(("burst", 1)) == 2, launcher.asked
                del futures

            def retired() -> list[str]:  # the pool forgets a worker first, then stops it, then ends its life
                return sorted(h for handles, why in launcher.stop_calls if why == "scaled down" for h in handles)

            deadline = time.monotonic() + 30
            while retired() != sorted(burst) or any(life.ended is None for life in started.lives()
                                                    if life.name in burst):
                assert time.monotonic() < deadline, (started.cluster.workers, launcher.stop_calls)
                time.sleep(0.2)
            assert not any(w.group == "burst" for w in started.cluster.workers.values())
            assert started.cluster.book.wanted("burst") == 0 and started.cluster.book.wanted("cpu") == 1
            lives = {life.name: life for life in started.lives()}
            assert all(lives[name].group == "burst" for name in burst)
            # What the run tells: each retired as the cluster scaled down, none lost (so none replaced).
            deadline = time.monotonic() + 15
            while sorted(n.worker for n in news if n.kind == "worker.retired") != sorted(burst):
                assert time.monotonic() < deadline, news
                time.sleep(0.2)
            assert not [n for n in news if n.kind in ("worker.lost", "worker.replaced")], news
            assert lives["task-0"].group == "cpu" and lives["task-0"].ended is None
        finally:
            started.close()
        assert launcher.workers == {}


class ExitingLauncher(SchedulerLauncher):
    """A cloud's tasks: a worker's task stops when its worker process ends, whoever
    ended it (the scheduler retiring it, too), as an ECS task or a VM does."""

    def __init__(self, security, address: str) -> None:
        super().__init__(security, address)
        self.asked: list[int] = []

    def start_workers(self, scheduler_address: str, count: int, replacing=()) -> WorkerStart:
        self.asked.append(count)
        return super().start_workers(scheduler_address, count, replacing)

    def observe(self, handles):
        seen = super().observe(handles)
        for handle in handles:
            worker = self.workers.get(handle)
            if worker is not None and worker.status.name in ("closing", "closed", "failed"):
                seen[handle] = Observed("stopped", "Essential container in task exited")
        return seen


def test_plain_adapt_retires_an_idle_worker_as_retired_never_lost_nor_replaced(tls):
    """``[cluster] adapt`` without groups on the pool: the worker distributed's Adaptive
    retires ends its task before the pool stops it; that stop is no loss: it is told
    retired, and nothing starts in its place."""
    import asyncio

    import dask
    import distributed
    from distributed import Client

    news: list = []
    fast = {"distributed.adaptive.interval": "200ms", "distributed.adaptive.wait-count": 2,
            "distributed.adaptive.target-duration": "1s"}
    with local_scheduler(tls, workers=0) as scheduler, dask.config.set(fast):
        retire = scheduler.scheduler.handlers["retire_workers"]

        async def far_retire(*args, **kwargs):
            # The scheduler's answer comes a while after the worker left (a scheduler far
            # from the runner, or a second worker still handing its data over): the
            # pool's polls see the retired worker's task stopped before the pool stops it.
            answer = await retire(*args, **kwargs)
            await asyncio.sleep(3)
            return answer

        scheduler.scheduler.handlers["retire_workers"] = far_retire
        launcher = ExitingLauncher(tls.to_security(), scheduler.scheduler_address)
        run = ClusterSpec(run_id="tmpad", size=ClusterSize(1, adapt=(1, 2)), tls=tls, image="registry.example/flows:1",
                          options={"provision_timeout": 60}, on_news=news.append)
        started = FakeBackend(launcher).start(run)
        try:
            with Client(scheduler.scheduler_address, security=tls.to_security()) as client:
                futures = client.map(time.sleep, [0.3] * 30, pure=False)
                deadline = time.monotonic() + 30
                while len(started.cluster.workers) < 2:  # the load grows the cluster to its maximum
                    assert time.monotonic() < deadline, (launcher.asked, news)
                    time.sleep(0.1)
                distributed.wait(futures, timeout=30)
                del futures
            deadline = time.monotonic() + 30
            while not any(n.kind in ("worker.retired", "worker.lost") for n in news):  # idle now: one goes
                assert time.monotonic() < deadline, news
                time.sleep(0.2)
            assert not [n for n in news if n.kind in ("worker.lost", "worker.replaced")], news
            [retired] = [n.worker for n in news if n.kind == "worker.retired"]
            while retired in started.cluster.workers:  # until the scheduler answers and the pool stops it
                assert time.monotonic() < deadline, started.cluster.workers
                time.sleep(0.2)
            time.sleep(2)  # the pool's next polls, which would replace a worker it took for lost
            assert not [n for n in news if n.kind in ("worker.lost", "worker.replaced")], news
            assert launcher.asked == [1, 1], launcher.asked  # its start and the growth: no replacement
            assert started.cluster.replacements.replaced == 0 and started.cluster.lost_reason(retired) is None
            assert len(started.cluster.workers) == 1 and started.cluster.book.total == 1
            assert [life.ended is not None for life in started.lives() if life.name == retired] == [True]
        finally:
            started.close()
        assert launcher.workers == {}
