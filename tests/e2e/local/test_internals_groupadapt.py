"""The fence of adaptive worker groups (:mod:`flowrig.internals.group_demand`): what the
locked distributed does that a group's demand is read from, on a real scheduler and real
workers over mutual TLS, in this process.

- the lifetime plugin serves ``flowrig_group_demand`` to an ``rpc`` over TLS;
- a task restricted to a group that has no worker waits in ``Scheduler.unrunnable``;
- tasks restricted to a group whose one thread is busy are all in its worker's
  ``WorkerState.processing`` (the worker queues them itself);
- unrestricted tasks beyond the threads wait in ``Scheduler.queued`` and count as
  waiting, not as a group's;
- an idle worker is one with nothing in ``processing``, and ``has_what`` says it holds
  the results it computed;
- ``TaskState.key`` is the key a task was submitted with: flowrig's payload tasks (keys
  of :data:`~flowrig.internals.group_demand.PAYLOAD_PREFIXES`) are no demand.
"""

from __future__ import annotations

import asyncio
import threading
import time

from flowrig.internals import group_demand

RELEASE = threading.Event()


def blocked(i: int) -> int:
    assert RELEASE.wait(30)
    return i


async def _until(predicate, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.05)


async def _demand_walk(security) -> dict:
    from distributed import Client, Scheduler, Worker
    from distributed.core import rpc

    from flowrig.roles.lifetime import NoClientTimeout

    seen: dict = {}
    async with Scheduler(protocol="tls", host="127.0.0.1", security=security, dashboard_address=":0") as scheduler:
        await scheduler.register_scheduler_plugin(NoClientTimeout(60, 60), idempotent=False)
        async with Worker(scheduler.address, security=security, nthreads=1, name="burst-1",
                          resources={"flowrig-group-burst": 1}), \
                Client(scheduler.address, security=security, asynchronous=True) as client:
            remote = rpc(scheduler.address, connection_args=security.get_connection_args("client"))
            try:
                seen["empty"] = await remote.flowrig_group_demand()
                orphan = client.submit(blocked, -1, resources={"flowrig-group-gpu": 1}, pure=False)
                mine = [client.submit(blocked, i, resources={"flowrig-group-burst": 1}, pure=False) for i in range(3)]
                await _until(lambda: sum(len(ws.processing) for ws in scheduler.workers.values()) == 3)
                anywhere = client.map(blocked, range(100, 110), pure=False)
                payloads = [client.submit(blocked, i, key=f"{prefix}{i}")
                            for i, prefix in enumerate(group_demand.PAYLOAD_PREFIXES)]
                await _until(lambda: len(scheduler.queued) + len(scheduler.unrunnable) >= 11)
                seen["busy"] = await remote.flowrig_group_demand()
                seen["queued"] = len(scheduler.queued)
                RELEASE.set()
                await client.gather([*mine, *anywhere, *payloads])
                await _until(lambda: not any(ws.processing for ws in scheduler.workers.values()))
                seen["idle"] = await remote.flowrig_group_demand()
                del orphan
            finally:
                await remote.close_rpc()
    return seen


def test_the_scheduler_answers_each_groups_demand_and_idle_workers(tls):
    RELEASE.clear()
    seen = asyncio.run(_demand_walk(tls.to_security()))
    assert seen["empty"] == {"groups": {"burst": {"tasks": 0, "idle": (("burst-1", False),)}}, "waiting": 0}
    busy = seen["busy"]
    assert busy["groups"]["gpu"] == {"tasks": 1, "idle": ()}  # no worker of its group: unrunnable
    # Its three tasks and the unrestricted ones the saturation rule let it take; the rest wait.
    assert busy["groups"]["burst"]["tasks"] >= 3 and busy["groups"]["burst"]["idle"] == ()
    assert busy["waiting"] >= 8 and seen["queued"] >= 8
    assert busy["groups"]["burst"]["tasks"] + busy["waiting"] == 13
    assert seen["idle"]["groups"]["burst"]["idle"] == (("burst-1", True),)  # it holds the results
    assert seen["idle"]["groups"]["gpu"]["tasks"] == 1 and seen["idle"]["waiting"] == 0


def test_the_demand_handler_is_served_beside_the_drain_handlers():
    async def served() -> bool:
        from distributed import Scheduler

        from flowrig.roles.lifetime import NoClientTimeout

        async with Scheduler(host="127.0.0.1", dashboard_address=":0") as scheduler:
            await scheduler.register_scheduler_plugin(NoClientTimeout(60, 60), idempotent=False)
            return callable(scheduler.handlers.get(group_demand.DEMAND_OP))

    assert asyncio.run(served())
