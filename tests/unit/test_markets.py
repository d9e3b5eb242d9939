"""Spot markets and ``spot = "fallback"``: the rules, the options' checks, and the RunTask
and RunInstances requests they render, checked against botocore's own models.

RunTask goes through a real botocore ECS client (its parameter validation on, as
always) whose answers a :class:`botocore.stub.Stubber` gives: what flowrig sends is
what botocore would send AWS. Whole runs against moto are in
tests/e2e/aws/test_ecs_markets.py and test_ec2_markets.py.
"""

from __future__ import annotations

import functools
import logging
from types import SimpleNamespace

import pytest

from flowrig.backends.markets import markets_to_try, worker_markets
from flowrig.backends.usage import ON_DEMAND, SPOT
from flowrig.errors import BadInput
from tests.run_support import invoke, write_project

SPOT_SHORT = "Capacity is unavailable at this time. Please try again later or in a different availability zone"
IMAGE = "123456789012.dkr.ecr.us-east-1.amazonaws.com/seed:1"


@functools.lru_cache(maxsize=None)
def botocore_session():
    """One botocore session for the module: it loads each service model once."""
    import botocore.session

    return botocore.session.get_session()


# --- the rules ------------------------------------------------------------------------
def test_markets_follow_the_setting_and_a_replacement_prefers_its_lost_workers_market():
    assert markets_to_try(False) == (ON_DEMAND,) and markets_to_try(False, SPOT) == (ON_DEMAND,)
    assert markets_to_try(True) == (SPOT,) and markets_to_try(True, ON_DEMAND) == (SPOT,)
    assert markets_to_try("fallback") == (SPOT, ON_DEMAND)
    assert markets_to_try("fallback", ON_DEMAND) == (ON_DEMAND, SPOT)
    assert markets_to_try("fallback", None) == (SPOT, ON_DEMAND)
    # Two replacements (a fallen-back worker, a worker of unknown market), then new workers.
    assert worker_markets("fallback", 4, [ON_DEMAND, None]) == [ON_DEMAND, SPOT, SPOT, SPOT]
    assert worker_markets(True, 2, [ON_DEMAND]) == [SPOT, SPOT]


# --- options: checked before any AWS call -----------------------------------------------
def launch(backend: str = "fargate", **options):
    from flowrig.backends import get_backend

    chosen = get_backend(backend)
    return chosen._launch(chosen.parse_options({"region_name": "us-east-1", **options}))


def test_fargate_spot_is_the_older_name_of_spot_true():
    assert launch(fargate_spot=True).spot is True
    assert launch(spot="fallback").spot == "fallback"
    assert launch(spot=True).spot is True and launch().spot is False


@pytest.mark.parametrize(("options", "line"), [
    ('spot = true\nfargate_spot = true',
     "[cluster.options] sets both spot and fargate_spot (its older name): keep spot and drop fargate_spot"),
    ('spot = false\nfargate_spot = true',
     "[cluster.options] sets both spot and fargate_spot (its older name): keep spot and drop fargate_spot"),
    ('spot = "yes"', "[cluster.options] spot must be true, false or \"fallback\", got 'yes'"),
    ('spot = 1', "[cluster.options] spot must be true, false or \"fallback\", got 1"),
    ('scheduler_task_kwargs = { capacityProviderStrategy = [{ capacityProvider = "FARGATE_SPOT", weight = 1 }] }',
     "scheduler_task_kwargs puts the scheduler on Fargate Spot, and losing the scheduler ends the run: drop "
     "capacityProviderStrategy from scheduler_task_kwargs (spot applies to workers only)"),
    ('spot = "fallback"\nworker_task_kwargs = { launchType = "FARGATE" }',
     "worker_task_kwargs sets launchType, which spot decides: drop launchType from worker_task_kwargs, or drop spot"),
])
def test_spot_options_that_cannot_hold_are_one_line_exit_2(tmp_path, options, line):
    root = write_project(tmp_path / "p", "def main():\n    pass\n", (
        'flow = "flow.py:main"\n[cluster]\nbackend = "fargate"\n[cluster.options]\n'
        f'region_name = "us-east-1"\n{options}\n'))
    done = invoke("preflight", str(root), "--image", IMAGE)
    assert done.returncode == 2, done.stderr
    assert done.stderr == f"flowrig: error: {line}\n"


def test_spot_for_workers_on_the_clusters_own_capacity_is_refused_naming_the_key_set():
    arn = "arn:aws:ecs:us-east-1:123456789012:cluster/team"
    with pytest.raises(BadInput) as info:
        launch("ecs", cluster_arn=arn, fargate_spot=True)
    assert str(info.value) == (
        "fargate_spot = true asks for Spot workers, which run on the cluster's own capacity here "
        "(fargate_workers = false): set spot_capacity_provider to a capacity provider of Spot instances, "
        "set fargate_workers = true for Fargate Spot, or drop fargate_spot")
    assert launch("ecs", cluster_arn=arn, fargate_workers=True, spot="fallback").spot == "fallback"
    # A capacity provider of Spot instances is where Spot workers on EC2 capacity go.
    assert launch("ecs", cluster_arn=arn, spot=True, spot_capacity_provider="spot-cp").spot is True


def test_spot_on_ec2_capacity_starts_on_the_spot_provider_and_falls_back_to_the_on_demand_one(caplog):
    """Without Fargate, the markets are the cluster's capacity providers: Spot workers go
    to ``spot_capacity_provider``, and those it had no instance for to ``capacity_provider``."""
    from dataclasses import replace

    ecs = StubbedECS()
    launcher = ecs_launcher(ecs, "fallback")
    launcher.settings = replace(launcher.settings, fargate=False, capacity_provider="od-cp",
                                spot_capacity_provider="spot-cp")
    ecs.answer(1, short=1, reason="RESOURCE:MEMORY")
    ecs.answer(1)
    with caplog.at_level(logging.WARNING, logger="flowrig.ecs"):
        workers = launcher.start_workers("tls://10.0.0.1:8786", 2)
    assert_valid_run_task(ecs.sent)
    assert [(market(r), r["count"]) for r in ecs.sent] == [("spot-cp", 2), ("od-cp", 1)]
    assert workers.refused == [] and len(workers.started) == 2
    assert [r.getMessage() for r in caplog.records] == [
        "the Spot capacity provider had no capacity for 1 worker task (RESOURCE:MEMORY): asked for it on the "
        'on-demand capacity provider instead, as spot = "fallback" allows']


# --- RunTask, as botocore sends it ---------------------------------------------------------
class StubbedECS:
    """A real botocore ECS client whose answers are queued; every request it was asked to
    send (validated by botocore against its model first) is kept."""

    def __init__(self):
        from botocore.stub import Stubber

        self.client = botocore_session().create_client(
            "ecs", region_name="us-east-1", aws_access_key_id="k", aws_secret_access_key="s")
        self.stubber = Stubber(self.client)
        self.sent: list[dict] = []
        self.client.meta.events.register("provide-client-params.ecs.RunTask",
                                         lambda params, **_: self.sent.append(dict(params)))
        self.stubber.activate()
        self.numbers = iter(range(1, 100))

    def answer(self, started: int, short: int = 0, reason: str = SPOT_SHORT) -> None:
        tasks = [{"taskArn": f"arn:aws:ecs:us-east-1:123456789012:task/c/t{next(self.numbers)}"}
                 for _ in range(started)]
        failures = [{"arn": f"arn:aws:ecs:us-east-1:123456789012:capacity/{i}", "reason": reason}
                    for i in range(short)]
        self.stubber.add_response("run_task", {"tasks": tasks, "failures": failures})

    def session(self):
        return SimpleNamespace(client=lambda service: self.client, region_name="us-east-1")


def ecs_launcher(ecs: StubbedECS, spot):
    from flowrig.backends.aws.ecs.launcher import ECSLauncher, TaskSettings

    settings = TaskSettings(
        cluster_arn="arn:aws:ecs:us-east-1:123456789012:cluster/c", scheduler_task_definition="s:1",
        worker_task_definition="w:1", subnets=["subnet-1"], security_groups=["sg-1"], started_by="flowrig-r1",
        scheduler_command=["dask-scheduler"], worker_args=[], spot=spot, shapes={"worker": (1024, 4096)})
    return ECSLauncher(ecs.session(), settings)  # type: ignore[arg-type]


def market(request: dict) -> str:
    strategy = request.get("capacityProviderStrategy")
    assert not (strategy and "launchType" in request), request
    return "+".join(p["capacityProvider"] for p in strategy) if strategy else request["launchType"]


def assert_valid_run_task(requests: list[dict]) -> None:
    from botocore.validate import validate_parameters

    shape = botocore_session().get_service_model("ecs").operation_model("RunTask").input_shape
    for request in requests:
        validate_parameters(request, shape)


@pytest.mark.parametrize("spot", [False, True, "fallback"])
def test_the_scheduler_is_never_on_spot_and_workers_are_where_spot_says(spot):
    ecs = StubbedECS()
    launcher = ecs_launcher(ecs, spot)
    ecs.answer(1)
    ecs.answer(2)
    launcher.start_scheduler()
    workers = launcher.start_workers("tls://10.0.0.1:8786", 2)
    assert workers.refused == []
    assert_valid_run_task(ecs.sent)
    assert [market(r) for r in ecs.sent] == ["FARGATE", "FARGATE_SPOT" if spot else "FARGATE"]
    assert [launcher.placement(arn, "worker").market for arn in workers.started.values()] == [
        SPOT if spot else ON_DEMAND] * 2
    assert launcher.placement("arn:aws:ecs:us-east-1:123456789012:task/c/t1", "scheduler") is None  # not shaped


def test_fallback_asks_on_demand_for_what_spot_had_no_room_for_and_says_so(caplog):
    ecs = StubbedECS()
    launcher = ecs_launcher(ecs, "fallback")
    ecs.answer(1, short=2)
    ecs.answer(2)
    with caplog.at_level(logging.WARNING, logger="flowrig.ecs"):
        workers = launcher.start_workers("tls://10.0.0.1:8786", 3)
    assert_valid_run_task(ecs.sent)
    assert [(market(r), r["count"]) for r in ecs.sent] == [("FARGATE_SPOT", 3), ("FARGATE", 2)]
    assert workers.refused == [] and len(workers.started) == 3
    assert [r.getMessage() for r in caplog.records] == [
        f"Fargate Spot had no capacity for 2 worker tasks ({SPOT_SHORT}): asked for them on on-demand Fargate "
        'instead, as spot = "fallback" allows']
    markets = {name: launcher.placement(arn, "worker").market for name, arn in workers.started.items()}
    assert markets == {"t1": SPOT, "t2": ON_DEMAND, "t3": ON_DEMAND}

    # Replacements: the Spot worker's on Spot first (falling back again), the fallen-back one's on-demand.
    ecs.answer(0, short=1)
    ecs.answer(1)
    ecs.answer(1)
    again = launcher.start_workers("tls://10.0.0.1:8786", 2, [workers.started["t1"], workers.started["t2"]])
    assert [(market(r), r["count"]) for r in ecs.sent[2:]] == [("FARGATE_SPOT", 1), ("FARGATE", 1), ("FARGATE", 1)]
    assert len(again.started) == 2 and again.refused == []
    assert {launcher.placement(arn, "worker").market for arn in again.started.values()} == {ON_DEMAND}


def test_without_fallback_a_spot_shortage_is_refused_and_other_failures_are_never_retried():
    ecs = StubbedECS()
    launcher = ecs_launcher(ecs, True)
    ecs.answer(0, short=1)
    refused = launcher.start_workers("tls://10.0.0.1:8786", 1).refused
    assert len(ecs.sent) == 1 and refused[0].startswith(SPOT_SHORT) and "hint: no capacity" in refused[0]

    ecs = StubbedECS()
    launcher = ecs_launcher(ecs, "fallback")
    ecs.answer(0, short=1, reason="RESOURCE:ENI")
    refused = launcher.start_workers("tls://10.0.0.1:8786", 1).refused
    assert len(ecs.sent) == 1 and refused[0].startswith("RESOURCE:ENI")


# --- RunInstances -----------------------------------------------------------------------
def run_instances(market: str) -> dict:
    from flowrig.backends.aws.ec2.instances import instance_parameters

    return instance_parameters(
        name="flowrig-r1-worker-1", image_id="ami-1", instance_type="m7i.large", user_data="#cloud-config\n",
        subnet_id="subnet-1", security_groups=["sg-1"], profile={"Arn": "arn:aws:iam::1:instance-profile/p"},
        root_device="/dev/sda1", filesystem_size=40, tags={"flowrig-run-id": "r1"}, public_ip=False,
        key_name=None, market=market)


def test_spot_instances_are_one_time_spot_requests_that_botocore_accepts():
    from botocore.validate import validate_parameters

    shape = botocore_session().get_service_model("ec2").operation_model("RunInstances").input_shape
    spot, demand = run_instances(SPOT), run_instances(ON_DEMAND)
    for params in (spot, demand):
        validate_parameters(params, shape)
    assert spot["InstanceMarketOptions"] == {"MarketType": "spot", "SpotOptions": {
        "SpotInstanceType": "one-time", "InstanceInterruptionBehavior": "terminate"}}
    assert "MaxPrice" not in str(spot)  # never above the on-demand price, which is Spot's default cap
    assert "InstanceMarketOptions" not in demand
    assert {k: v for k, v in spot.items() if k not in ("InstanceMarketOptions", "ClientToken")} == {
        k: v for k, v in demand.items() if k != "ClientToken"}


def test_a_spot_workers_task_definition_gives_it_fargates_longest_stop_timeout():
    from flowrig.backends.aws.ecs import taskdefs, validate

    settings = taskdefs.TaskDefinitionSettings(image=IMAGE, name="r1", region="us-east-1", log_group="/flowrig/r1",
                                               execution_role_arn="arn:aws:iam::123456789012:role/e",
                                               worker_stop_timeout=120)
    worker = taskdefs.render_task_definition("worker", settings)
    validate.check_task_definition(worker)
    assert worker["containerDefinitions"][0]["stopTimeout"] == 120
    assert "stopTimeout" not in taskdefs.render_task_definition("scheduler", settings)["containerDefinitions"][0]


def test_the_task_definitions_a_spot_project_renders_drain_its_workers(tmp_path):
    import json

    from typer.testing import CliRunner

    from flowrig.cli.ecs import app
    from tests.unit.test_ecs_taskdefs import PROJECT_TOML
    from tests.unit.test_ecs_taskdefs import write_project as write_ecs_project

    for spot, expected in (('spot = "fallback"', 120), ("fargate_spot = false", None)):
        (tmp_path / spot.split()[0]).mkdir()
        project = write_ecs_project(tmp_path / spot.split()[0], PROJECT_TOML + spot + "\n")
        result = CliRunner().invoke(app, ["task-definitions", str(project), "--image", "reg/etl:1"],
                                    env={"AWS_REGION": ""})
        assert result.exit_code == 0, result.output
        [worker] = json.loads(result.stdout)["worker"]["containerDefinitions"]
        assert worker.get("stopTimeout") == expected
        environment = {e["name"]: e["value"] for e in worker["environment"]}
        assert environment == ({"MODE": "prod", "FLOWRIG_SPOT_NOTICE": "ecs", "FLOWRIG_DRAIN_SECONDS": "110"}
                               if expected else {"MODE": "prod"})


@pytest.mark.parametrize(("options", "spot_vcpus", "on_demand_vcpus"), [
    ({}, None, 4.5),
    ({"spot": True}, 4.0, 0.5),
    ({"spot": "fallback"}, 4.0, 0.5),  # asked on Spot first: Spot's quota
    ({"fargate_spot": True}, 4.0, 0.5),
])
def test_preflight_counts_spot_workers_against_the_spot_quota_and_the_scheduler_never(options, spot_vcpus,
                                                                                         on_demand_vcpus):
    from flowrig.backends import get_backend
    from flowrig.backends.aws.ecs.preflight import fargate_needs

    backend = get_backend("fargate")
    parsed = backend.parse_options({"region_name": "us-east-1", "scheduler_cpu": 512, "scheduler_mem": 1024,
                                    **options})
    needs = {need.quota_name: need.vcpus for need in fargate_needs(parsed, backend._launch(parsed), 4)}
    assert needs.get("Fargate Spot vCPU resource count") == spot_vcpus
    assert needs.get("Fargate On-Demand vCPU resource count") == on_demand_vcpus
