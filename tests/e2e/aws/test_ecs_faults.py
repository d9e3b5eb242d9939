"""ECS start failures, partial starts and throttling, against moto behind a fault proxy.

moto cannot fail a task, refuse RunTask or throttle, so :mod:`tests.aws_faults` does
it between flowrig and moto. Workers "join" a real mutual-TLS scheduler on loopback
(``scheduler_address``) with real local workers standing in for the ECS tasks, since
moto runs no containers.
"""

from __future__ import annotations

import dataclasses
import logging
import time

import pytest

from flowrig.backends.aws.ecs import FargateBackend
from flowrig.errors import InfrastructureError
from flowrig.project.sizing import ClusterSize
from tests.e2e.aws.test_ecs_backend import secret_arns, snapshot, spec
from tests.tls_support import local_scheduler

pytestmark = [pytest.mark.aws, pytest.mark.filterwarnings("ignore:Scheduler already contains a plugin")]

PULL_REASON = (
    "CannotPullContainerError: pull image manifest has been retried 5 time(s): failed to resolve ref "
    "123456789012.dkr.ecr.us-east-1.amazonaws.com/seed:run-image: dial tcp 52.94.0.1:443: i/o timeout"
)


def live_tasks(aws, run_id: str) -> list[dict]:
    """The run's tasks moto still holds as not STOPPED (asked of moto directly)."""
    ecs = aws.ecs()
    cluster = f"flowrig-{run_id}"
    if not ecs.describe_clusters(clusters=[cluster])["clusters"]:
        return []
    arns = ecs.list_tasks(cluster=cluster)["taskArns"]
    tasks = ecs.describe_tasks(cluster=cluster, tasks=arns)["tasks"] if arns else []
    return [t for t in tasks if t["lastStatus"] != "STOPPED"]


def assert_nothing_left(aws, run_id: str) -> None:
    after = snapshot(run_id)
    assert after == {k: [] for k in after}, after
    assert secret_arns(run_id) == []
    assert live_tasks(aws, run_id) == []


def write_log(aws, run_id: str, container: str):
    """A ``before`` hook that puts two lines in the task's awslogs stream, as the container would."""
    import boto3

    logs = boto3.client("logs", endpoint_url=aws.endpoint)

    def write(arn: str) -> None:
        stream = f"flowrig-{run_id}/{container}/{arn.rsplit('/', 1)[-1]}"
        logs.create_log_stream(logGroupName=f"/flowrig/{run_id}", logStreamName=stream)
        now = int(time.time() * 1000)
        logs.put_log_events(logGroupName=f"/flowrig/{run_id}", logStreamName=stream, logEvents=[
            {"timestamp": now, "message": "flowrig-entrypoint: installing the run's certificates"},
            {"timestamp": now + 1, "message": "worker: out of disk while unpacking layer"},
        ])

    return write


def test_scheduler_stopped_with_a_pull_error_fails_fast_with_reason_and_hint(aws, bootstrapped, fault_proxy, tls):
    fault_proxy.stop_role("dask-scheduler", stop_code="TaskFailedToStart", stopped_reason=PULL_REASON,
                          container_reason="CannotPullContainerError: ref not found")
    with pytest.raises(InfrastructureError) as info:
        FargateBackend().start(spec(tls, "pull1", size=ClusterSize(1), provision_timeout=120, create_roles=True))
    raised = time.monotonic()
    [stopped] = fault_proxy.stopped_at.values()
    assert raised - stopped < 10
    message = str(info.value)
    assert info.value.exit_code == 3 and "\n" not in message
    assert message.startswith("the scheduler task stopped: TaskFailedToStart; CannotPullContainerError: pull image")
    assert "dask-scheduler: CannotPullContainerError: ref not found" in message
    # The container never ran, so it wrote nothing; the hint names the usual causes.
    assert "last log lines" not in message
    assert "hint: the image could not be pulled" in message
    assert "NAT gateway or VPC endpoints" in message and "ecr:GetAuthorizationToken" in message
    assert_nothing_left(aws, "pull1")


def test_worker_stopped_fails_fast_with_its_log_lines(aws, bootstrapped, fault_proxy, tls):
    fault_proxy.stop_role(
        "dask-worker", stop_code="TaskFailedToStart",
        stopped_reason="ResourceInitializationError: unable to pull secrets or registry auth: "
                       "execution resource retrieval failed: unable to retrieve secret from asm",
        container_reason="", before=write_log(aws, "sec1", "dask-worker"))
    with local_scheduler(tls, workers=0) as scheduler:
        with pytest.raises(InfrastructureError) as info:
            FargateBackend().start(spec(tls, "sec1", size=ClusterSize(2), provision_timeout=120, create_roles=True,
                                        scheduler_address=scheduler.scheduler_address))
        raised = time.monotonic()
    assert raised - min(fault_proxy.stopped_at.values()) < 10
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith("only 0 of 2 worker tasks asked for can join, at least 1 needed: worker task ")
    assert "stopped: TaskFailedToStart; ResourceInitializationError: unable to pull secrets" in message
    assert ("last log lines: flowrig-entrypoint: installing the run's certificates | "
            "worker: out of disk while unpacking layer") in message
    assert "hint: ECS could not read the task's secrets" in message
    assert "secretsmanager:GetSecretValue" in message
    assert_nothing_left(aws, "sec1")


def test_partial_start_goes_on_above_the_minimum(aws, bootstrapped, fault_proxy, tls, caplog):
    fault_proxy.worker_capacity(2)
    with local_scheduler(tls, workers=2) as scheduler:
        with caplog.at_level(logging.WARNING, logger="flowrig.pool"):
            started = FargateBackend().start(dataclasses.replace(
                spec(tls, "part1", size=ClusterSize(4), provision_timeout=60, create_roles=True,
                     scheduler_address=scheduler.scheduler_address), min_workers=2))
        try:
            assert len(live_tasks(aws, "part1")) == 2
            said = caplog.text
            assert "asked for 4 worker tasks, 2 started; not started: 2 x RESOURCE:FARGATE " \
                   "Capacity is unavailable" in said
            assert "hint: no capacity for the task right now" in said
            assert "goes on with 2 of 4 workers joined (4 asked for, 2 started, at least 2 needed)" in said
        finally:
            started.close()
    assert_nothing_left(aws, "part1")


def test_partial_start_below_the_minimum_is_exit_3(aws, bootstrapped, fault_proxy, tls):
    fault_proxy.worker_capacity(1)
    with local_scheduler(tls, workers=1) as scheduler:
        began = time.monotonic()
        with pytest.raises(InfrastructureError) as info:
            FargateBackend().start(dataclasses.replace(
                spec(tls, "part2", size=ClusterSize(3), provision_timeout=120, create_roles=True,
                     scheduler_address=scheduler.scheduler_address), min_workers=2))
        took = time.monotonic() - began
    message = str(info.value)
    assert info.value.exit_code == 3 and "\n" not in message
    assert message.startswith("only 1 of 3 worker tasks asked for can join, at least 2 needed: "
                              "worker task not started: RESOURCE:FARGATE Capacity is unavailable")
    assert "hint: no capacity" in message
    assert took < 30  # at once, not at the 120 s provisioning timeout
    assert_nothing_left(aws, "part2")


def test_a_20_worker_start_completes_while_30_percent_of_calls_are_throttled(aws, bootstrapped, fault_proxy, tls, monkeypatch):
    """The start completes when FargateBackend.start returns: every resource made, both
    RunTask batches answered and the stand-in worker joined; moto then holds exactly the
    20 worker tasks (no batch started twice), and the calls stay bounded."""
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "10")
    fault_proxy.throttle(0.3)
    fault_proxy.throttle_first("RunTask", 2)  # whatever the seed: RunTask is retried
    with local_scheduler(tls, workers=1) as scheduler:
        began = time.monotonic()
        started = FargateBackend().start(spec(tls, "thr1", size=ClusterSize(20), provision_timeout=300,
                                              create_roles=True, scheduler_address=scheduler.scheduler_address))
        took = time.monotonic() - began
        try:
            assert len(live_tasks(aws, "thr1")) == 20
            throttled, calls = sum(fault_proxy.throttled.values()), sum(fault_proxy.calls.values())
            assert throttled >= 5 and throttled >= 0.15 * calls, (fault_proxy.throttled, fault_proxy.calls)
            tokens = fault_proxy.client_tokens
            # Two batches of ten; the throttled RunTask was sent again with the same token.
            assert len(tokens) == fault_proxy.calls["RunTask"] >= 4
            assert tokens[0] == tokens[1] == tokens[2] and len(set(tokens)) == 2
            assert fault_proxy.calls["RunTask"] - fault_proxy.throttled["RunTask"] == 2
        finally:
            started.close()
    assert_nothing_left(aws, "thr1")
    calls = sum(fault_proxy.calls.values())
    print("calls", dict(fault_proxy.calls), "throttled", dict(fault_proxy.throttled), f"start {took:.1f} s")
    # No unbounded loop: DescribeTasks at most once a second, the rest a fixed list.
    assert fault_proxy.calls["DescribeTasks"] <= took + 40
    assert calls < 250, fault_proxy.calls


# --- a role made moments before ---------------------------------------------------------
PASS_ROLE_REFUSED = ("User: arn:aws:iam::123456789012:user/runner is not authorized to perform: iam:PassRole on "
                     "resource: arn:aws:iam::123456789012:role/flowrig/flowrig-prop1-execution")
NOT_ASSUMABLE = ("ECS was unable to assume the role 'arn:aws:iam::123456789012:role/flowrig/flowrig-prop1-execution' "
                 "that was provided for this task. Please verify that the role being passed has the proper trust "
                 "relationship and permissions and that your IAM user has permissions to pass this role.")


def test_calls_refused_while_the_runs_new_role_propagates_are_tried_again(aws, bootstrapped, fault_proxy, tls):
    """IAM takes seconds to tell every service of a new role: the owner tag the runner's
    rights check, and ECS's right to assume it. Those refusals are waited out."""
    fault_proxy.refuse_first("AttachRolePolicy", 1, "AccessDenied",
                             "User: arn:aws:iam::123456789012:user/runner is not authorized to perform: "
                             "iam:AttachRolePolicy")
    fault_proxy.refuse_first("RegisterTaskDefinition", 2, "AccessDeniedException", PASS_ROLE_REFUSED)
    fault_proxy.refuse_first("RunTask", 2, "ClientException", NOT_ASSUMABLE)
    with local_scheduler(tls, workers=1) as scheduler:
        started = FargateBackend().start(spec(tls, "prop1", size=ClusterSize(1), provision_timeout=120,
                                              scheduler_address=scheduler.scheduler_address))
        try:
            assert len(live_tasks(aws, "prop1")) == 1
            # Each refused call was sent again: two attachments and two registrations, and
            # the worker's RunTask until ECS could assume the role.
            assert fault_proxy.calls["AttachRolePolicy"] == 3
            assert fault_proxy.calls["RegisterTaskDefinition"] == 4
            assert fault_proxy.calls["RunTask"] == 3
        finally:
            started.close()
    assert_nothing_left(aws, "prop1")


def test_a_refusal_that_outlasts_propagation_ends_the_run_naming_it(aws, bootstrapped, fault_proxy, tls,
                                                                     monkeypatch):
    from flowrig.backends.aws import resources as aws_calls

    monkeypatch.setattr(aws_calls, "ROLE_PROPAGATION", 3.0)
    fault_proxy.refuse_first("RunTask", 1000, "ClientException", NOT_ASSUMABLE)
    began = time.monotonic()
    with pytest.raises(InfrastructureError) as info:
        # The scheduler's own task: its RunTask is refused, never answered with an address.
        FargateBackend().start(spec(tls, "prop2", size=ClusterSize(1), provision_timeout=120))
    assert time.monotonic() - began < 30
    assert fault_proxy.calls["RunTask"] >= 2
    message = str(info.value)
    assert "ECS was unable to assume the role" in message and "\n" not in message
    assert_nothing_left(aws, "prop2")


def test_a_refusal_without_a_new_role_is_not_retried(aws, bootstrapped, fault_proxy, tls):
    """A project's own execution role is no new role: a refused PassRole of it is final."""
    import boto3

    own = boto3.client("iam").create_role(RoleName="team-execution", AssumeRolePolicyDocument="{}")["Role"]["Arn"]
    fault_proxy.refuse_first("RegisterTaskDefinition", 1000, "AccessDeniedException", PASS_ROLE_REFUSED)
    with pytest.raises(InfrastructureError) as info:
        FargateBackend().start(spec(tls, "prop3", size=ClusterSize(1), execution_role_arn=own,
                                    scheduler_address="tls://127.0.0.1:9"))
    assert "not authorized to perform: iam:PassRole" in str(info.value)
    assert fault_proxy.calls["RegisterTaskDefinition"] == 1
    assert_nothing_left(aws, "prop3")


def test_a_refused_pass_of_another_role_is_final_while_the_runs_own_propagates(aws, bootstrapped, fault_proxy, tls):
    """The runner policy passes the run's own roles only: a project's task role refused
    is a missing grant, said at once, not a role still propagating."""
    refused = ("User: arn:aws:iam::123456789012:user/runner is not authorized to perform: iam:PassRole on "
               "resource: arn:aws:iam::123456789012:role/team-task")
    fault_proxy.refuse_first("RegisterTaskDefinition", 1000, "AccessDeniedException", refused)
    began = time.monotonic()
    with pytest.raises(InfrastructureError) as info:
        FargateBackend().start(spec(tls, "prop4", size=ClusterSize(1), scheduler_address="tls://127.0.0.1:9",
                                    task_role_arn="arn:aws:iam::123456789012:role/team-task"))
    assert "role/team-task" in str(info.value) and time.monotonic() - began < 20
    assert fault_proxy.calls["RegisterTaskDefinition"] == 1
    assert_nothing_left(aws, "prop4")
