"""``spot = "fallback"`` on Google Cloud when the shortage comes through the insert's
operation, through the real ``VMBackend.start`` and :class:`~flowrig.backends.pool.PoolCluster`
on a real mutual-TLS scheduler on loopback: the fake SDK of tests/vm_fakes answers, and
a real worker, named as the VM, joins when the standard VM is made.
"""

from __future__ import annotations

import time

import pytest

from flowrig.backends.base import ClusterSpec
from flowrig.backends.usage import ON_DEMAND, summarize
from flowrig.backends.vm.gcp import GCPBackend
from flowrig.project.sizing import ClusterSize
from tests.tls_support import local_scheduler
from tests.vm_fakes import GCP_OPTIONS, assert_google_empty

PUBLIC_IMAGE = "ghcr.io/example/seed:run-image"
pytestmark = pytest.mark.filterwarnings("ignore:Scheduler already contains a plugin")


def spec(tls, run_id, image, **options) -> ClusterSpec:
    return ClusterSpec(run_id=run_id, size=ClusterSize(1), tls=tls, image=image, options=options, worker_threads=1)


def test_gcp_start_falls_back_when_the_spot_insert_operation_finds_no_room(google, tls, caplog):
    """The Spot worker's insert returns, its operation then ends in ZONE_RESOURCE_POOL_EXHAUSTED:
    the start counts no failure, asks a standard VM at once, and that worker (a real one on
    loopback, named as the VM) joins: the run starts."""
    import asyncio
    import logging
    import threading

    from distributed import Worker

    stop = threading.Event()

    def join_as(body: dict) -> None:
        async def run() -> None:
            async with Worker(scheduler.scheduler_address, security=tls.to_security(), name=body["name"],
                              nthreads=1, host="127.0.0.1"):
                while not stop.is_set():
                    await asyncio.sleep(0.1)

        threading.Thread(target=asyncio.run, args=(run(),), daemon=True).start()

    google.exhausted.append(("ZONE_RESOURCE_POOL_EXHAUSTED", "The zone does not have enough resources available."))
    google.on_insert = join_as
    with local_scheduler(tls, workers=0) as scheduler, caplog.at_level(logging.WARNING, logger="flowrig.vm"):
        started = GCPBackend().start(spec(tls, "gcf", image=PUBLIC_IMAGE, **GCP_OPTIONS, spot="fallback",
                                          registry_login=False,
                                          scheduler_address=scheduler.scheduler_address))
        try:
            assert [w["name"] for w in started.cluster.scheduler_info["workers"].values()] == ["flowrig-gcf-worker-2"]
            assert started.cluster.replacements.failures == []
        finally:
            stop.set()
            started.close()
    bodies = [c[1]["body"] for c in google.calls if c[0] == "compute.instances.insert"]
    assert [(b["name"], (b.get("scheduling") or {}).get("provisioningModel")) for b in bodies] == [
        ("flowrig-gcf-worker-1", "SPOT"), ("flowrig-gcf-worker-2", None)]
    [line] = [r.getMessage() for r in caplog.records if "had no capacity" in r.getMessage()]
    assert line.startswith("Compute Engine Spot had no capacity for 1 worker instance (ZONE_RESOURCE_POOL_EXHAUSTED: ")
    assert_google_empty(google)
    # What the run used: the one worker that ran, on-demand for its whole life; the Spot
    # VM that never ran is no life of a few seconds on Spot.
    worker = summarize(started.lives(), now=time.time()).roles["worker"]
    assert (worker.count, worker.spot_share) == (1, 0.0), started.lives()
    assert [(life.name, life.placement.market) for life in started.lives() if life.role == "worker"] == [
        ("flowrig-gcf-worker-2", ON_DEMAND)]
