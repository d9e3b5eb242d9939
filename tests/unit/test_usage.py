"""What a run used, summed up from its roles' lives, and how it is shown: pure.

The lives of real runs: tests/e2e/docker/test_docker_usage.py (against the engine's own
events) and tests/e2e/local/test_local_usage.py.
"""

from __future__ import annotations

import json
from dataclasses import replace
from types import SimpleNamespace

import pytest

from flowrig.backends.docker.control import lives_of
from flowrig.backends.prices import PriceTable
from flowrig.backends.usage import LOCAL, SPOT, LifeLog, Placement, RoleLife, summarize, usage_line
from flowrig.containers.engine import engine_time
from flowrig.run.config import RunOutcome
from flowrig.run.reporter_lines import render_artifact

#: A table of round figures, so that every cost below is worked out by hand.
TABLE = PriceTable(
    date="2026-01-01", label="test prices",
    fargate={"r1": {"vcpu_hour": 0.036, "gb_hour": 0.0036, "spot_factor": 0.5}},
)
FARGATE = Placement(vcpu=1.0, memory_gib=2.0, price_key="fargate:r1:X86_64")
SPOT_WORKER = Placement(market=SPOT, vcpu=1.0, memory_gib=2.0, price_key="fargate:r1:X86_64")


def _lives() -> list[RoleLife]:
    return [
        RoleLife("scheduler", "scheduler", 1000.0, 1100.0, FARGATE),
        RoleLife("worker", "w0", 1010.0, 1090.0, FARGATE),
        RoleLife("worker", "w1", 1010.0, None, SPOT_WORKER),  # still open: ends at now
    ]


def test_each_role_is_summed_from_its_lives_and_priced_by_the_table():
    usage = summarize(_lives(), now=1090.0, prices=TABLE)
    assert list(usage.roles) == ["scheduler", "worker"]
    scheduler, worker = usage.roles["scheduler"], usage.roles["worker"]
    assert (scheduler.count, scheduler.seconds, scheduler.vcpu_seconds, scheduler.gb_seconds) == (1, 100.0, 100.0, 200.0)
    assert (worker.count, worker.seconds, worker.vcpu_seconds, worker.gb_seconds) == (2, 160.0, 160.0, 320.0)
    assert worker.spot_share == pytest.approx(0.5)
    # On-demand: (1 x 0.036 + 2 x 0.0036) per hour = 0.0432 per hour = 0.000012 per second.
    assert scheduler.estimated_cost == pytest.approx(100 * 0.000012)
    # 80 s on-demand and 80 s at half the price.
    assert worker.estimated_cost == pytest.approx(80 * 0.000012 + 80 * 0.000006)
    assert usage.estimated_cost_total == pytest.approx(scheduler.estimated_cost + worker.estimated_cost)
    assert scheduler.placement == FARGATE and worker.placement is None  # two shapes: none is "the" shape
    assert usage.price_table == "test prices" and usage.currency == "USD"


def test_a_role_the_table_cannot_price_says_why_and_leaves_the_total_open():
    lives = [*_lives(), RoleLife("worker", "w2", 1000.0, 1010.0, Placement(vcpu=2, price_key="fargate:r9:X86_64"))]
    usage = summarize(lives, now=1090.0, prices=TABLE)
    assert usage.roles["worker"].estimated_cost is None
    assert usage.roles["worker"].no_price == "no price for fargate:r9:X86_64 in test prices"
    assert usage.roles["scheduler"].estimated_cost is not None
    assert usage.estimated_cost_total is None
    assert usage_line("r1", usage).endswith("no price (no price for fargate:r9:X86_64 in test prices)")


def test_local_roles_are_measured_but_never_priced():
    host = Placement(market=LOCAL, vcpu=2.0, memory_gib=8.0)
    usage = summarize([RoleLife("scheduler", "s", 0.0, 30.0, host), RoleLife("worker", "w", 5.0, 25.0, host)],
                      now=30.0, prices=TABLE)
    assert usage.roles["worker"].vcpu_seconds == 40.0 and usage.roles["worker"].no_price == LOCAL
    assert usage.estimated_cost_total is None
    assert usage_line("abc", usage) == (
        "flowrig run abc: used scheduler 1 x 30 s, worker 1 x 20 s; 100 vCPU-s, 0.11 GB-h, spot 0%; "
        "no price: it ran on this machine"
    )


def test_the_line_names_the_cost_and_its_table():
    line = usage_line("r1", summarize(_lives(), now=1090.0, prices=TABLE))
    assert line == (
        "flowrig run r1: used scheduler 1 x 100 s, worker 2 x 80 s; 260 vCPU-s, 0.14 GB-h, spot 50%; "
        "est. $0.0026 (test prices)"
    )


def test_worker_groups_are_counted_apart_and_roles_come_in_a_fixed_order():
    lives = [RoleLife("worker", "g0", 0, 10, FARGATE, group="gpu"), RoleLife("worker", "w", 0, 10, FARGATE),
             RoleLife("runner", "r", 0, 12, FARGATE), RoleLife("worker", "d", 0, 10, FARGATE, group="default")]
    usage = summarize(lives, now=12, prices=TABLE)
    assert list(usage.roles) == ["runner", "worker", "worker:gpu"]
    assert usage.roles["worker"].count == 2


def test_gpu_seconds_follow_the_placement():
    gpu = Placement(vcpu=4, memory_gib=16, gpus=1, price_key="ec2:r1:g5.xlarge")
    usage = summarize([RoleLife("worker", "g", 0, 30, gpu)], now=30, prices=TABLE)
    assert usage.roles["worker"].gpu_seconds == 30 and usage.roles["worker"].estimated_cost is None


def test_the_json_form_is_rounded_data():
    data = summarize(_lives(), now=1090.0, prices=TABLE).to_dict()
    assert set(data) == {"roles", "currency", "price_table", "estimated_cost_total"}
    assert set(data["roles"]["worker"]) == {
        "count", "seconds", "vcpu_seconds", "gb_seconds", "gpu_seconds", "spot_share", "estimated_cost", "no_price",
        "placement",
    }
    assert data["roles"]["scheduler"]["placement"] == {
        "market": "on-demand", "vcpu": 1.0, "memory_gib": 2.0, "gpus": 0, "price_key": "fargate:r1:X86_64",
    }
    json.dumps(data)


def test_the_outcome_carries_usage_and_stays_valid_without_it():
    outcome = RunOutcome("Completed", 1, 1, "local", None, None, {}, "r1")
    assert json.loads(outcome.to_json())["usage"] is None
    outcome.usage = summarize(_lives(), now=1090.0, prices=TABLE)
    assert json.loads(outcome.to_json())["usage"]["roles"]["worker"]["count"] == 2


def test_the_artifact_gets_a_table_of_what_the_run_used():
    usage = summarize(_lives(), now=1090.0, prices=TABLE)
    text = render_artifact("r1", "fargate", {}, [], 0.0, usage)
    assert "### What the run used" in text
    assert "| worker | 2 | 160.0 | 160 | 320 | 0 | 50% | 0.0014 USD |" in text
    assert "What the run used" not in render_artifact("r1", "fargate", {}, [], 0.0)


# --- the log of lives ------------------------------------------------------------------


def test_a_name_started_again_lives_twice_and_an_end_closes_its_latest_life():
    clock = iter([1.0, 2.0, 5.0, 6.0, 9.0]).__next__
    log = LifeLog(clock=clock)
    log.started("w0", "worker", FARGATE)  # 1
    log.ended("w0")  # 2
    log.started("w0", "worker", FARGATE)  # 5
    log.started("w1", "worker", FARGATE)  # 6
    log.ended("w0")  # 9
    log.ended("nobody", at=10.0)  # no open life: nothing
    assert [(life.name, life.started, life.ended) for life in log.lives()] == [
        ("w0", 1.0, 2.0), ("w0", 5.0, 9.0), ("w1", 6.0, None),
    ]
    assert log.open_names() == ["w1"]


def test_an_end_may_correct_the_start_by_a_better_clock_and_never_precedes_it():
    log = LifeLog(clock=lambda: 100.0)
    log.started("c", "worker", FARGATE)
    log.ended("c", at=130.0, started=98.5)
    assert (log.lives()[0].started, log.lives()[0].ended) == (98.5, 130.0)
    log.started("d", "worker", FARGATE, at=200.0)
    log.ended("d", at=150.0)  # a clock that went back: zero seconds, never negative
    assert log.lives()[1].seconds(now=0) == 0.0


# --- lives from another process (the docker host's closed message) ----------------------


def test_lives_survive_the_control_channel_and_bad_items_are_left_out():
    good = RoleLife("worker", "flowrig-x-worker-0", 1.5, 9.25, Placement(market=LOCAL, vcpu=2, memory_gib=7.5))
    items = [good.to_dict(), {"role": "worker"}, "junk", {**good.to_dict(), "started": True},
             {**good.to_dict(), "ended": -1}, {**good.to_dict(), "name": "x" * 500},
             {**good.to_dict(), "placement": {"vcpu": "many"}}, {**good.to_dict(), "placement": {"vcpu": float("nan")}}]
    message = json.loads(json.dumps({"op": "closed", "re": 2, "lives": items}))
    assert lives_of(message) == [good]
    assert lives_of({"op": "closed", "re": 2}) == [] and lives_of({"lives": "nope"}) == []


@pytest.mark.parametrize("text, expected", [
    ("2026-12-07T02:10:11.123456789Z", 1796609411.123456789),
    ("2026-12-07T02:10:11Z", 1796609411.0),
    ("2026-12-07T03:10:11.5+01:00", 1796609411.5),
    ("0001-01-01T00:00:00Z", None),
    ("", None),
    (None, None),
    ("yesterday", None),
])
def test_engine_times_are_read_to_the_nanosecond_and_its_zero_time_is_none(text, expected):
    got = engine_time(text)
    assert got == (pytest.approx(expected, abs=1e-6) if expected is not None else None)


# --- what an ECS task is priced as --------------------------------------------------------


def test_fargate_tasks_are_shaped_by_their_size_and_priced_by_architecture_and_market():
    from flowrig.backends.aws.ecs.launcher import ECSLauncher, TaskSettings

    settings = TaskSettings(
        cluster_arn="arn:c", scheduler_task_definition="s:1", worker_task_definition="w:1", subnets=["subnet-1"],
        security_groups=["sg-1"], started_by="flowrig-r1", scheduler_command=[], worker_args=[], spot=True,
        shapes={"scheduler": (1024, 2048), "worker": (2048, 8192)}, cpu_architecture="ARM64",
    )
    region = SimpleNamespace(region_name="us-east-1")
    launcher = ECSLauncher(region, settings)  # type: ignore[arg-type]
    key = "fargate:us-east-1:ARM64"
    assert launcher.placement("arn:t/1", "scheduler") == Placement(vcpu=1.0, memory_gib=2.0, price_key=key)
    assert launcher.placement("arn:t/2", "worker") == Placement(market=SPOT, vcpu=2.0, memory_gib=8.0, price_key=key)
    # A task definition of the project's own, or the cluster's own EC2 capacity: not shaped here.
    assert ECSLauncher(region, replace(settings, shapes={})).placement("arn:t/2", "worker") is None  # type: ignore[arg-type]
    assert ECSLauncher(region, replace(settings, fargate=False)).placement("arn:t/2", "worker") is None  # type: ignore[arg-type]


# --- a Spot worker that fell back: the pool's log, then what the run says -------------------


class _Markets:
    """A launcher's view of two workers: ``vm-1`` asked on Spot, stopped before it ran for
    want of Spot room (``moved``), ``vm-2`` asked again on-demand, running."""

    kind = "instance"

    def __init__(self) -> None:
        from flowrig.backends.pool import Observed

        self.seen = {"vm-1": Observed("stopped", "ZONE_RESOURCE_POOL_EXHAUSTED: no room", moved=True),
                     "vm-2": Observed("running")}

    def observe(self, handles):
        return {handle: self.seen[handle] for handle in handles}


def test_a_spot_worker_that_fell_back_counts_as_one_on_demand_worker_for_its_whole_life():
    """The pool logs each worker at its start, in the market it was asked in; the Spot
    VM the cloud then found no room for never ran: it is no life, and the run says one
    on-demand worker, spot 0%, priced on-demand."""
    import asyncio

    from distributed.core import Status

    from flowrig.backends.lost_workers import Replacements
    from flowrig.backends.pool.cluster import PoolCluster, _Worker
    from flowrig.backends.pool.groups import GroupBook

    pool = object.__new__(PoolCluster)  # its observation alone: no loop, no scheduler
    pool.status, pool.scheduler_info, pool.launcher = Status.closed, {"workers": {}}, _Markets()
    pool.life_log, pool._lost, pool._deciding = LifeLog(clock=lambda: 1004.0), {}, False
    pool.book = GroupBook()
    pool.book.set_total(1)
    pool.replacements = Replacements(lambda: pool.book.total)
    pool.workers = {"vm-1": _Worker("vm-1", 0.0)}
    pool.life_log.started("vm-1", "worker", SPOT_WORKER, at=1000.0)
    asyncio.run(pool._observe_once())  # at 1004 the pool sees vm-1 moved
    pool.workers["vm-2"] = _Worker("vm-2", 0.0)
    pool.life_log.started("vm-2", "worker", FARGATE)  # at 1004, on-demand
    asyncio.run(pool._observe_once())
    pool.life_log.ended("vm-2", at=1010.0)
    assert pool.replacements.failures == [] and pool.replacements.replaced == 0
    usage = summarize(pool.life_log.lives(), now=1010.0, prices=TABLE)
    worker = usage.roles["worker"]
    assert (worker.count, worker.seconds, worker.spot_share) == (1, 6.0, 0.0)
    assert worker.estimated_cost == pytest.approx(6 * 0.000012) and worker.placement == FARGATE
    assert "worker 1 x 6.0 s" in usage_line("r1", usage) and ", spot 0%;" in usage_line("r1", usage)
    assert "| worker | 1 | 6.0 | 6 | 12 | 0 | 0% |" in render_artifact("r1", "gcp", {}, [], 0.0, usage)
