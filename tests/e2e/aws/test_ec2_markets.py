"""EC2 Spot workers, and ``spot = "fallback"``, against moto behind the fault proxy.

moto starts a Spot instance whenever it is asked for one (marking it
``InstanceLifecycle: spot``): the proxy refuses RunInstances of a Spot instance beyond
the Spot capacity it is given with ``InsufficientInstanceCapacity``, as EC2 does, and
forwards the rest. Workers "join" a real mutual-TLS scheduler on loopback
(``scheduler_address``), as in test_ec2_backend.py.
"""

from __future__ import annotations

import logging
import time

import pytest

from flowrig.backends.aws.ec2.backend import EC2Backend
from flowrig.backends.usage import ON_DEMAND, SPOT, summarize
from tests.e2e.aws.test_ec2_backend import assert_nothing_left, ec2_bootstrapped, instances, spec  # noqa: F401
from tests.tls_support import local_scheduler

pytestmark = [pytest.mark.aws, pytest.mark.filterwarnings("ignore:Scheduler already contains a plugin")]


@pytest.mark.usefixtures("ec2_bootstrapped")
def test_fallback_starts_an_on_demand_instance_when_spot_has_no_capacity(aws, fault_proxy, tls, caplog):
    fault_proxy.spot_capacity(1)
    with local_scheduler(tls, workers=1) as scheduler:
        with caplog.at_level(logging.WARNING, logger="flowrig"):
            started = EC2Backend().start(spec(tls, "ec2s", scheduler_address=scheduler.scheduler_address,
                                              provision_timeout=120, spot="fallback"))
        try:
            # Both asked on Spot, one refused and asked again on-demand.
            assert fault_proxy.run_instances_requests == [
                ("spot", "t3.medium"), ("spot", "t3.medium"), ("on-demand", "t3.medium")]
            lifecycles = {_name(i): i.get("InstanceLifecycle", ON_DEMAND) for i in instances("ec2s")}
            assert lifecycles == {"flowrig-ec2s-worker-1": "spot", "flowrig-ec2s-worker-2": ON_DEMAND}
            said = [r.getMessage() for r in caplog.records if "no capacity" in r.getMessage()]
            assert said == [
                "EC2 Spot had no capacity for 1 worker instance (flowrig-ec2s-worker-2: InsufficientInstanceCapacity: "
                "There is no Spot capacity available that matches your request.): asked for it on on-demand EC2 "
                'instead, as spot = "fallback" allows']
            assert "not started" not in caplog.text
            assert {life.name: life.placement.market for life in started.lives()} == {
                "flowrig-ec2s-worker-1": SPOT, "flowrig-ec2s-worker-2": ON_DEMAND}
            # The instance that fell back is on-demand for its whole life: the Spot share is
            # the Spot instance's seconds alone.
            now = time.time()
            lives = started.lives()
            worker = summarize(lives, now=now).roles["worker"]
            [spot_life] = [life for life in lives if life.placement.market == SPOT]
            assert worker.count == 2
            assert worker.spot_share == pytest.approx(spot_life.seconds(now) / worker.seconds, abs=1e-4)
        finally:
            started.close()
    assert_nothing_left("ec2s")


def _name(instance: dict) -> str:
    return next(t["Value"] for t in instance["Tags"] if t["Key"] == "Name")


@pytest.mark.usefixtures("ec2_bootstrapped")
def test_only_a_markets_shortage_may_fall_back_and_a_spot_request_is_what_moto_starts(aws, monkeypatch):
    from flowrig.backends.vm.cloud import VMRequest
    from tests.e2e.aws.test_ec2_backend import cloud, refuse_run_instances

    ec2 = cloud("ec2m")
    try:
        ec2.prepare(dashboard=False)
        [started] = ec2.create([VMRequest("flowrig-ec2m-worker-1", "worker", "#cloud-config\n", market=SPOT)]
                               ).started.values()
        [instance] = instances("ec2m")
        assert (instance["InstanceId"], instance.get("InstanceLifecycle")) == (started, "spot")
        for code, short in (("SpotMaxPriceTooLow", True), ("MaxSpotInstanceCountExceeded", True),
                            ("InsufficientFreeAddressesInSubnet", False)):
            refuse_run_instances(monkeypatch, code, "refused")
            created = ec2.create([VMRequest("flowrig-ec2m-worker-2", "worker", "#cloud-config\n", market=SPOT)])
            assert created.refused == [f"flowrig-ec2m-worker-2: {code}: refused"]
            assert created.short == ({"flowrig-ec2m-worker-2": created.refused[0]} if short else {}), code
    finally:
        assert ec2.delete() == []
    assert_nothing_left("ec2m")
