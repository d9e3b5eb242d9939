"""The fence of a worker's drain (:mod:`flowrig.internals.drain_status`): what the locked
distributed does that the drain relies on, on a real scheduler and real workers over
mutual TLS, in this process.

- handlers a scheduler plugin adds after the start are served to an ``rpc`` over TLS;
- ``WorkerState.name``, ``.status`` and ``.processing`` as the status reads them, and a
  worker's ``call_stack`` counting only the task it executes, not the one in its queue;
- a function run on a worker through its ``run`` handler, as the drain's flush does;
- ``retire_workers(remove=False)`` lets the executing task finish and starts no other;
  then ``retire_workers(remove=True, close_workers=True)`` keeps its result on another
  worker and runs the queued task there, once, without counting toward ``KilledWorker``.
"""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from flowrig.internals import drain_status

#: Set by the test: the long task returns.
RELEASE = threading.Event()
RUNS: dict[str, int] = {}


def counted(name: str, wait: bool) -> str:
    RUNS[name] = RUNS.get(name, 0) + 1
    if wait:
        assert RELEASE.wait(30)
    return name


#: Set by the test: the task it cancels while it runs returns.
UNSTUCK = threading.Event()


def stuck_until_released() -> None:
    # A task still running when cancelled, that lets its thread go when the test ends
    # (a cluster of threads waits for its running tasks when it closes).
    UNSTUCK.wait(60)


async def _until(predicate, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.05)


async def _drain_walk(security) -> dict:
    from distributed import Client, Scheduler, Worker
    from distributed.core import rpc

    from flowrig.roles.lifetime import NoClientTimeout

    seen: dict = {}
    async with Scheduler(protocol="tls", host="127.0.0.1", security=security, dashboard_address=":0") as scheduler:
        rule = NoClientTimeout(60, 60)
        await scheduler.register_scheduler_plugin(rule, idempotent=False)  # starts it, as a preload's does
        assert drain_status.STATUS_OP in scheduler.handlers
        async with Worker(scheduler.address, security=security, nthreads=1, name="victim") as victim, \
                Worker(scheduler.address, security=security, nthreads=1, name="keeper") as keeper, \
                Client(scheduler.address, security=security, asynchronous=True) as client:
            remote = rpc(scheduler.address, connection_args=security.get_connection_args("client"))
            try:
                where = {"workers": [victim.address], "allow_other_workers": True, "pure": False}
                unique = client.submit(counted, "unique", False, workers=[victim.address], pure=False)
                await unique
                long = client.submit(counted, "long", True, **where)
                queued = client.submit(counted, "queued", False, **where)
                await _until(lambda: RUNS.get("long") == 1)
                await _until(lambda: len(scheduler.workers[victim.address].processing) == 2)
                seen["before"] = await remote.flowrig_drain_status(name="victim")
                seen["unknown"] = await remote.flowrig_drain_status(name="nobody")
                kept = await remote.retire_workers(names=["victim"], close_workers=False, remove=False)
                seen["kept"] = list(kept)
                seen["holding"] = await remote.flowrig_drain_status(name="victim")
                await asyncio.sleep(1.0)  # the queued task would have started by now
                seen["queued_runs_while_held"] = RUNS.get("queued", 0)
                RELEASE.set()
                await _until(lambda: long.status == "finished")
                seen["after_long"] = await remote.flowrig_drain_status(name="victim")
                seen["flushed"] = await remote.flowrig_drain_flush(name="victim", timeout=1.0)
                retired = await remote.retire_workers(names=["victim"], close_workers=True, remove=True)
                seen["retired"] = list(retired)
                seen["results"] = [await unique, await long, await queued]
                who = await client.who_has([unique, long])
                seen["who_has"] = {k: list(v) for k, v in who.items()}
                seen["keeper"] = keeper.address
                seen["suspicious"] = [scheduler.tasks[f.key].suspicious for f in (long, queued)
                                      if f.key in scheduler.tasks]
                await remote.flowrig_closing()
                seen["closing"] = await remote.flowrig_drain_status(name="keeper")
            finally:
                await remote.close_rpc()
    return seen


def test_a_held_worker_finishes_its_task_starts_no_other_and_hands_over(tls):
    RELEASE.clear()
    RUNS.clear()
    seen = asyncio.run(_drain_walk(tls.to_security()))
    before = seen["before"]
    assert before == {"known": True, "runner": True, "status": "running", "processing": 2, "executing": 1}, seen
    assert seen["unknown"]["known"] is False
    assert len(seen["kept"]) == 1
    assert seen["holding"]["status"] == "closing_gracefully"
    assert seen["queued_runs_while_held"] == 0
    assert seen["after_long"]["executing"] == 0 and seen["after_long"]["processing"] == 1
    assert seen["flushed"] is True
    assert len(seen["retired"]) == 1
    assert seen["results"] == ["unique", "long", "queued"]
    assert RUNS == {"unique": 1, "long": 1, "queued": 1}
    assert all(holders == [seen["keeper"]] for holders in seen["who_has"].values()), seen
    assert seen["suspicious"] == [0, 0]
    # Once the cluster says it is closing, no worker drains (the runner is still here).
    assert seen["closing"]["known"] is True and seen["closing"]["runner"] is False


@pytest.mark.parametrize(
    "op", [drain_status.STATUS_OP, drain_status.CLOSING_OP, drain_status.DRAINED_OP, drain_status.FLUSH_OP]
)
def test_the_lifetime_plugin_serves_the_drain_handlers(op):
    async def served() -> bool:
        from distributed import Scheduler

        from flowrig.roles.lifetime import NoClientTimeout

        async with Scheduler(host="127.0.0.1", dashboard_address=":0") as scheduler:
            await scheduler.register_scheduler_plugin(NoClientTimeout(60, 60), idempotent=False)
            return callable(scheduler.handlers.get(op))

    assert asyncio.run(served())


def test_prefect_dask_futures_as_lost_task_runs_reads_them(tls):
    """``PrefectDaskFuture`` keeps the Dask future as ``_wrapped_future`` and lets a
    cancelled one's error through as is; ``LostAwareFuture`` returns a finished task's
    result as prefect-dask does, and tells the API (here: nothing listens) before it
    raises a lost one's error."""
    import uuid

    from distributed import Client, LocalCluster
    from distributed.client import FutureCancelledError
    from prefect.settings import PREFECT_API_URL, PREFECT_CLIENT_MAX_RETRIES, temporary_settings
    from prefect.states import Completed
    from prefect_dask.task_runners import PrefectDaskFuture

    from flowrig.internals.lost_task_runs import LostAwareFuture

    security = tls.to_security()
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False, protocol="tls", security=security,
                      dashboard_address=":0") as cluster, Client(cluster, security=security) as client, \
            temporary_settings(updates={PREFECT_API_URL: "http://127.0.0.1:9/api", PREFECT_CLIENT_MAX_RETRIES: 0}):
        done = client.submit(Completed, data=7, pure=False)
        future = LostAwareFuture(wrapped_future=done, task_run_id=uuid.uuid4())
        assert future._wrapped_future is done and future._final_state is None
        assert future.result() == 7
        assert future._final_state.is_completed()

        UNSTUCK.clear()
        stuck = client.submit(stuck_until_released, pure=False)
        try:
            stuck.cancel()
            with pytest.raises(FutureCancelledError):
                PrefectDaskFuture(wrapped_future=stuck, task_run_id=uuid.uuid4()).result()
            lost = LostAwareFuture(wrapped_future=stuck, task_run_id=uuid.uuid4())
            with pytest.raises(FutureCancelledError):
                lost.result()
            assert lost._lost_reported and lost._final_state is None
        finally:
            UNSTUCK.set()
