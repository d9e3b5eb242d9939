"""Preflight's Fargate vCPU quotas with worker groups: each group counted at its own task
size, market and most workers (fixed size or adaptive maximum), a group on EC2 capacity in
no Fargate quota; from the project as `flowrig preflight` reads it, and from a run's sized
groups as a start's preflight gets them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from flowrig.backends import get_backend
from flowrig.backends.aws.ecs.preflight import ecs_target
from flowrig.backends.preflight import PreflightPlan
from flowrig.project.models import parse_project
from flowrig.run.preflight import maximum_workers, sized_groups

ON_DEMAND, SPOT = "Fargate On-Demand vCPU resource count", "Fargate Spot vCPU resource count"


def project(*groups: dict, **options: Any):
    return parse_project({"flow": "flow.py:main", "cluster": {
        "backend": "fargate", "worker_groups": list(groups), "max_workers": 20,
        "options": {"region_name": "us-east-1", "scheduler_cpu": 512, "scheduler_mem": 1024, **options}}}, Path("."))


def needs_of(backend_name: str, loaded) -> dict[str, tuple[float, str]]:
    """The Fargate quotas a run of ``loaded`` needs, as preflight's target says them."""
    backend = get_backend(backend_name)
    plan = PreflightPlan(image=None, options=dict(loaded.cluster.options), max_workers=maximum_workers(loaded),
                         groups=sized_groups(loaded))
    parsed = backend.parse_options(plan.options)
    target = ecs_target(backend.name, plan, parsed, backend._launch(parsed, frozenset(), plan.groups))
    return {need.quota_name: (need.vcpus, need.what) for need in target.needs}


def test_each_fargate_group_counts_at_its_own_size_and_market_and_its_adaptive_maximum():
    loaded = project(
        {"name": "big", "n_workers": 3, "cpu": 2},
        {"name": "cheap", "n_workers": 2, "cpu": 1, "market": "spot"},
        {"name": "burst", "adapt": {"minimum": 0, "maximum": 4}, "cpu": 0.5, "market": "fallback"},
        {"name": "small", "n_workers": 2},
    )
    needs = needs_of("fargate", loaded)
    # big 3 x 2 + small 2 x worker_cpu (1) + the scheduler's 0.5; Spot first for spot and fallback.
    assert needs[ON_DEMAND] == (8.5, "group big: 3 x 2 vCPU + group small: 2 x 1 vCPU + the scheduler's 0.5")
    assert needs[SPOT] == (4.0, "group cheap: 2 x 1 vCPU + group burst: 4 x 0.5 vCPU")


def test_a_group_on_ec2_capacity_is_in_no_fargate_quota():
    loaded = project(
        {"name": "fg", "n_workers": 2, "cpu": 1, "options": {"fargate_workers": True}},
        {"name": "gpu", "n_workers": 5, "gpu": 1, "options": {"capacity_provider": "gpu-cp", "fargate_workers": False}},
        fargate_scheduler=True, cluster_arn="arn:aws:ecs:us-east-1:123456789012:cluster/team",
    )
    needs = needs_of("ecs", loaded)
    assert needs == {ON_DEMAND: (2.5, "group fg: 2 x 1 vCPU + the scheduler's 0.5")}


def test_without_groups_every_worker_still_counts_at_worker_cpu():
    loaded = parse_project({"flow": "flow.py:main", "cluster": {"backend": "fargate", "n_workers": 3, "options": {
        "region_name": "us-east-1", "worker_cpu": 2048, "scheduler_cpu": 512, "scheduler_mem": 1024,
        "spot": True}}}, Path("."))
    assert needs_of("fargate", loaded) == {ON_DEMAND: (0.5, "the scheduler's 0.5"),
                                          SPOT: (6.0, "3 workers x 2 vCPU")}


@pytest.mark.parametrize("adapt", [False, True])
def test_a_starts_preflight_gets_the_runs_sized_groups(adapt, monkeypatch):
    """The plan of a start's preflight carries the run's groups, sized (an adaptive
    group at its maximum)."""
    from flowrig.backends.base import ClusterSpec, WorkerGroupSpec
    from flowrig.common.routes import worker_resources
    from flowrig.project.sizing import ClusterSize

    backend = get_backend("fargate")
    seen: list[PreflightPlan] = []
    monkeypatch.setattr(type(backend), "cloud_preflight", lambda self, plan, options: seen.append(plan) or [])
    group = WorkerGroupSpec("big", 1 if adapt else 3, 1, worker_resources("big", 1), cpu=2.0,
                            adapt=(1, 6) if adapt else None)
    spec = ClusterSpec(run_id="q1", size=ClusterSize(1 if adapt else 3, adapt=(1, 6) if adapt else None), tls=None,
                       image="img", worker_threads=1, groups=(group,), options={"region_name": "us-east-1"})
    backend._preflight_before_start(spec, backend.parse_options(spec.options))
    [plan] = seen
    assert plan.groups == (group,)
    parsed = backend.parse_options(spec.options)
    target = ecs_target("fargate", plan, parsed, backend._launch(parsed, frozenset(), plan.groups))
    [workers] = [need for need in target.needs if need.quota_name == ON_DEMAND]
    assert workers.what.startswith(f"group big: {6 if adapt else 3} x 2 vCPU")
