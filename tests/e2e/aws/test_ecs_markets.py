"""Workers on Fargate Spot, and ``spot = "fallback"``, against moto behind the fault proxy.

moto starts every task it is asked for, on any capacity provider: the proxy answers
RunTask on ``FARGATE_SPOT`` beyond the Spot capacity it is given with the failures
Fargate gives when Spot has no room, and forwards the rest to moto. Workers "join" a
real mutual-TLS scheduler on loopback (``scheduler_address``), as in test_ecs_faults.py.
"""

from __future__ import annotations

import logging
import time

import pytest

from flowrig.backends.aws.ecs import FargateBackend
from flowrig.backends.usage import ON_DEMAND, SPOT, summarize
from flowrig.project.sizing import ClusterSize
from tests.e2e.aws.test_ecs_backend import spec
from tests.e2e.aws.test_ecs_faults import assert_nothing_left, live_tasks
from tests.tls_support import local_scheduler

pytestmark = [pytest.mark.aws, pytest.mark.filterwarnings("ignore:Scheduler already contains a plugin")]


def market_of(request: dict) -> str:
    """The market a RunTask request asks in: a capacity provider or a launch type."""
    strategy = request.get("capacityProviderStrategy")
    if strategy:
        assert "launchType" not in request
        return "+".join(p["capacityProvider"] for p in strategy)
    return request["launchType"]


def wait_for(predicate, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "not in time"
        time.sleep(0.2)


def test_fallback_starts_on_demand_when_spot_has_no_capacity_and_replaces_in_the_lost_workers_market(
        aws, bootstrapped, fault_proxy, tls, caplog):
    """Spot has room for one worker of three: the other two are asked again on on-demand
    Fargate, said in one line, and usage holds each worker's market. A lost Spot worker
    is asked for on Spot first (and falls back again); a lost on-demand one on on-demand."""
    import boto3

    fault_proxy.spot_capacity(1)
    with local_scheduler(tls, workers=1) as scheduler:
        with caplog.at_level(logging.WARNING, logger="flowrig"):
            started = FargateBackend().start(spec(tls, "spot1", size=ClusterSize(3), provision_timeout=60,
                                                  create_roles=True, spot="fallback",
                                                  scheduler_address=scheduler.scheduler_address))
        try:
            workers = [r for r in fault_proxy.run_task_requests
                       if r["overrides"]["containerOverrides"][0]["name"] == "dask-worker"]
            assert [(market_of(r), r["count"]) for r in workers] == [("FARGATE_SPOT", 3), ("FARGATE", 2)]
            assert len(live_tasks(aws, "spot1")) == 3
            said = [r.getMessage() for r in caplog.records if "no capacity" in r.getMessage()]
            assert said == [
                "Fargate Spot had no capacity for 2 worker tasks (Capacity is unavailable at this time. Please try "
                "again later or in a different availability zone): asked for them on on-demand Fargate instead, "
                'as spot = "fallback" allows']
            # Nothing was refused: the start is not a partial one.
            assert "not started" not in caplog.text
            # Its workers hand their work over on Fargate Spot's two-minute notice.
            [definition] = {r["taskDefinition"] for r in workers}
            [container] = boto3.client("ecs").describe_task_definition(
                taskDefinition=definition)["taskDefinition"]["containerDefinitions"]
            assert container["stopTimeout"] == 120
            assert {"name": "FLOWRIG_SPOT_NOTICE", "value": "ecs"} in container["environment"]
            assert {"name": "FLOWRIG_DRAIN_SECONDS", "value": "110"} in container["environment"]
            markets = {life.name: life.placement.market for life in started.lives()}
            assert sorted(markets.values()) == [ON_DEMAND, ON_DEMAND, SPOT]

            # The Spot worker is taken back: asked for on Spot first, then on-demand again.
            ecs = boto3.client("ecs")
            cluster = "flowrig-spot1"
            by_name = {arn.rsplit("/", 1)[-1]: arn for arn in ecs.list_tasks(cluster=cluster)["taskArns"]}
            [spot_worker] = [name for name, market in markets.items() if market == SPOT]
            ecs.stop_task(cluster=cluster, task=by_name[spot_worker], reason="SpotInterruption")
            wait_for(lambda: len(fault_proxy.run_task_requests) >= 4)
            # A worker that fell back is lost: its replacement goes to on-demand directly.
            [demand_worker, *_] = [name for name, market in markets.items() if market == ON_DEMAND]
            ecs.stop_task(cluster=cluster, task=by_name[demand_worker], reason="lost")
            wait_for(lambda: len(fault_proxy.run_task_requests) >= 5)
            assert [(market_of(r), r["count"]) for r in fault_proxy.run_task_requests[2:]] == [
                ("FARGATE_SPOT", 1), ("FARGATE", 1), ("FARGATE", 1)]
            wait_for(lambda: len(live_tasks(aws, "spot1")) == 3)
            # Both replacements are recorded as lives once their tasks are seen running,
            # which may come after moto lists three live tasks again.
            wait_for(lambda: len(started.lives()) == 5)
        finally:
            started.close()
    lives = started.lives()
    assert [life.placement.market for life in lives].count(SPOT) == 1 and len(lives) == 5
    # What the run used: the workers that fell back are on-demand for their whole lives,
    # so the Spot share is the one Spot worker's seconds alone.
    now = time.time()
    worker = summarize(lives, now=now).roles["worker"]
    spot_seconds = sum(life.seconds(now) for life in lives if life.placement.market == SPOT)
    assert worker.count == 5 and worker.spot_share == pytest.approx(spot_seconds / worker.seconds, abs=1e-4)
    assert 0 < worker.spot_share < 0.5
    assert_nothing_left(aws, "spot1")


def test_spot_workers_on_ec2_capacity_start_on_the_spot_capacity_provider(aws, bootstrapped, tls):
    """``spot`` with ``fargate_workers = false``: the workers' RunTask names the cluster's
    capacity provider of Spot instances, and moto places them there."""
    import boto3

    from flowrig.backends.aws.ecs import ECSBackend
    from flowrig.backends.base import ClusterSpec
    from tests.e2e.aws.test_worker_shapes import capacity_provider, push

    cluster, image = capacity_provider("t3.medium", "spot-cp"), push("spot-ec2", "amd64")
    with local_scheduler(tls, workers=1) as scheduler:
        started = ECSBackend().start(ClusterSpec(
            run_id="spotec2", size=ClusterSize(1), tls=tls, image=image,
            options={"preflight": False, "cluster_arn": cluster, "fargate_scheduler": True, "fargate_workers": False,
                     "spot": True, "spot_capacity_provider": "spot-cp", "scheduler_address": scheduler.scheduler_address}))
        try:
            [request] = [r["body"] for r in bootstrapped.requests("RunTask")]
            assert request["capacityProviderStrategy"] == [{"capacityProvider": "spot-cp", "weight": 1}]
            assert "launchType" not in request
            ecs = boto3.client("ecs")
            [task] = ecs.describe_tasks(cluster=cluster, tasks=ecs.list_tasks(cluster=cluster)["taskArns"])["tasks"]
            assert task.get("capacityProviderName") == "spot-cp"
        finally:
            started.close()
