"""``flowrig aws leftovers``: a fargate run killed with ``kill -9`` against a real moto
server leaves tagged resources, which are listed by run and removed; a live run's
renewed lease keeps it off the list.

Moto runs no containers: the killed run's tasks stay PENDING (``ecs_tasks_pending``),
and the live run's cluster points at a real mutual-TLS scheduler on loopback.

How leases are judged, without AWS, is in tests/unit/test_aws_leftovers.py.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import threading
import time
import uuid
from datetime import datetime, timedelta, timezone

import pytest

from flowrig.backends.aws.lease import LEASE_SECONDS_ENV, lease_until
from tests.e2e.aws.test_ec2_backend import ec2_bootstrapped as ec2_bootstrapped  # a fixture
from tests.e2e.aws.test_ecs_backend import IMAGE, running_tasks, secret_arns, snapshot, spec, tags
from tests.run_support import FLOWRIG, SEED
from tests.tls_support import local_scheduler
from tests.unit.test_aws_leftovers import NOW


def leftovers(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*FLOWRIG, "aws", "leftovers", *args], capture_output=True, text=True, timeout=300, env=env
    )


def listed(run_id: str) -> dict | None:
    done = leftovers("--older-than", "0", "--output", "json")
    assert done.returncode == 0, done.stderr
    return {run["run_id"]: run for run in json.loads(done.stdout)}.get(run_id)


def kill_mid_start(tmp_path, run_id: str, backend: str, options: str, asked, what: str) -> None:
    """Start a run of the seed on ``backend`` with ``options`` in its ``[cluster.options]``
    and a 4 s lease, and SIGKILL it, process group and all, once ``asked()`` says its
    ``what`` was asked for: a run killed mid-start."""
    project = tmp_path / "seed"
    shutil.copytree(SEED, project)
    with open(project / "flowrig.toml", "a") as toml:
        # No preflight: see NO_PREFLIGHT in test_ecs_backend.py.
        toml.write(f"\n[cluster.options]\n{options}\npreflight = false\n")
    env = {**os.environ, "FLOWRIG_RUN_ID": run_id, LEASE_SECONDS_ENV: "4"}
    env.pop("PREFECT_API_URL", None)
    runner = subprocess.Popen(
        [*FLOWRIG, "run", str(project), "--backend", backend, "--image", IMAGE, "--param", "x=[0,1]"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 180
        while not asked():
            assert runner.poll() is None, runner.communicate()[0][-3000:]
            assert time.monotonic() < deadline, f"the run never started its {what}"
            time.sleep(0.5)
    finally:
        os.killpg(runner.pid, signal.SIGKILL)
        runner.wait(timeout=30)
    assert runner.returncode == -signal.SIGKILL


# --- the acceptance test -------------------------------------------------------------
@pytest.mark.aws
@pytest.mark.usefixtures("bootstrapped")
def test_kill_9_mid_start_then_leftovers_lists_the_run_and_remove_leaves_nothing(ecs_tasks_pending, tmp_path):
    import boto3

    aws = ecs_tasks_pending
    run_id = f"k9{uuid.uuid4().hex[:8]}"
    iam = boto3.client("iam")
    # A role of the run's own, beside the account-wide one older bootstraps made
    # (which carries no run tag and must survive).
    iam.create_role(RoleName="flowrig-execution", Path="/flowrig/", AssumeRolePolicyDocument="{}",
                    Tags=[{"Key": "createdBy", "Value": "flowrig ecs bootstrap"}])
    # Mid-start: the scheduler task was asked for and stays PENDING.
    kill_mid_start(tmp_path, run_id, "fargate", "create_roles = true", lambda: aws.requests("RunTask"),
                   "scheduler task")

    held = snapshot(run_id)
    [cluster] = held["clusters"]
    assert all(held[kind] for kind in held), held
    assert len(running_tasks(cluster["clusterArn"])) == 1
    # The run's certificates, in its secret.
    [secret_arn] = secret_arns(run_id)

    # A task in the run's own cluster that lost its tags is the run's all the same.
    ecs = boto3.client("ecs")
    plain = ecs.register_task_definition(
        family="plain", containerDefinitions=[{"name": "p", "image": IMAGE, "memory": 512}]
    )["taskDefinition"]["taskDefinitionArn"]
    untagged = ecs.run_task(cluster=cluster["clusterArn"], taskDefinition=plain, launchType="FARGATE")["tasks"][0]["taskArn"]

    # The lease (4 s) lapses once the killed runner stops renewing it.
    deadline = time.monotonic() + 60
    while (found := listed(run_id)) is None:
        assert time.monotonic() < deadline, "the killed run was never listed"
        time.sleep(1)
    # By default a lease must have lapsed two lease lengths (10 minutes) ago: a run whose
    # renewals failed for a while is not taken for a killed one.
    by_default = json.loads(leftovers("--output", "json").stdout)
    assert run_id not in {run["run_id"] for run in by_default}, by_default
    # The shape the manual documents (docs/leftovers.md).
    assert sorted(found) == ["created", "lease_until", "reason", "resources", "run_id"]
    assert {tuple(sorted(r)) for r in found["resources"]} == {("created", "detail", "id", "kind")}
    kinds = sorted(r["kind"] for r in found["resources"])
    assert kinds == sorted(["cluster", "log-group", "role", "secret", "security-group",
                            "task", "task", "task-definition", "task-definition"]), found
    assert found["reason"].startswith("lease expired ")
    assert datetime.strptime(found["lease_until"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=timezone.utc) <= \
        datetime.now(timezone.utc)
    ids = {r["id"] for r in found["resources"]}
    assert {cluster["clusterArn"], secret_arn, untagged, f"flowrig-{run_id}-execution", f"/flowrig/{run_id}"} <= ids
    assert "flowrig-execution" not in ids

    text = leftovers("--older-than", "0")
    assert text.returncode == 0, text.stderr
    block = text.stdout.split(f"run {run_id}: over, lease expired ", 1)[1].split("\nrun ", 1)[0]
    assert f"  cluster {cluster['clusterArn']}" in block and f"  role flowrig-{run_id}-execution" in block
    assert "  task arn:" in block and "status PENDING" in block

    removed = leftovers("--older-than", "0", "--remove", "--run-id", run_id)
    assert removed.returncode == 0, removed.stderr
    assert f"removed run {run_id}: task " in removed.stderr

    after = snapshot(run_id)
    assert after == {k: [] for k in after}, after
    assert running_tasks(cluster["clusterArn"]) == []
    assert secret_arns(run_id) == []
    assert boto3.client("secretsmanager").list_secrets(IncludePlannedDeletion=True)["SecretList"] == []
    families = [f"flowrig-{run_id}-{role}" for role in ("scheduler", "worker")]
    for family in families:
        assert ecs.list_task_definitions(familyPrefix=family, status="INACTIVE")["taskDefinitionArns"] == []
    assert iam.get_role(RoleName="flowrig-execution")["Role"]["Path"] == "/flowrig/"
    # Again: nothing of the run is listed, and removing nothing is no error.
    assert listed(run_id) is None
    again = leftovers("--older-than", "0", "--remove")
    assert again.returncode == 0, again.stderr


@pytest.mark.aws
def test_a_live_run_whose_lease_is_renewed_is_not_listed(aws, bootstrapped, tls, monkeypatch):
    import boto3

    from flowrig.backends.aws.ecs import FargateBackend
    from flowrig.project.sizing import ClusterSize

    # Resources are created with a 6 s lease; only renewals keep the run off the list.
    # (Short, but not so short that a renewal held up on a loaded machine lets it lapse:
    # at 2 s, one late round of tagging calls let `leftovers --remove` take a live run.)
    monkeypatch.setenv(LEASE_SECONDS_ENV, "6")
    with local_scheduler(tls, workers=1) as scheduler:
        started = FargateBackend().start(
            spec(tls, "live1", size=ClusterSize(1), scheduler_address=scheduler.scheduler_address,
                 provision_timeout=120, create_roles=True)
        )
        try:
            [cluster] = snapshot("live1")["clusters"]
            created_lease = lease_until(tags(cluster["tags"]))
            time.sleep(8)
            assert datetime.now(timezone.utc) > created_lease + timedelta(seconds=1)
            assert listed("live1") is None
            assert leftovers("--older-than", "0", "--remove").returncode == 0
            [cluster] = boto3.client("ecs").describe_clusters(clusters=[cluster["clusterArn"]], include=["TAGS"])["clusters"]
            assert cluster["status"] == "ACTIVE"
            assert lease_until(tags(cluster["tags"])) > created_lease
            assert len(running_tasks(cluster["clusterArn"])) == 1
            assert [t for t in threading.enumerate() if t.name == "flowrig-lease"]
        finally:
            started.close()
    after = snapshot("live1")
    assert after == {k: [] for k in after}, after
    # Once the run's resources are gone, nothing renews anything.
    assert [t for t in threading.enumerate() if t.name == "flowrig-lease"] == []


@pytest.mark.aws
def test_a_run_that_made_none_of_its_resources_renews_its_lease_on_its_tasks(aws):
    import boto3

    from flowrig.backends.aws import resources as aws_calls
    from flowrig.backends.aws.lease import LeaseRenewer
    from flowrig.backends.aws.session import session

    ecs = boto3.client("ecs")
    own = ecs.create_cluster(clusterName="team-cluster")["cluster"]["clusterArn"]
    definition = ecs.register_task_definition(
        family="team-worker", containerDefinitions=[{"name": "w", "image": IMAGE, "memory": 512}]
    )["taskDefinition"]["taskDefinitionArn"]
    [task] = ecs.run_task(cluster=own, taskDefinition=definition, startedBy="flowrig-own1", launchType="FARGATE",
                          tags=[{"key": "flowrig-run-id", "value": "own1"}])["tasks"]
    resources = aws_calls.RunResources(session(), {"flowrig-run-id": "own1"})
    resources.track_tasks(own, "flowrig-own1")
    renewer = LeaseRenewer(resources, 300)
    assert renewer.holder() is None
    assert renewer.renew(NOW) == [("task", task["taskArn"])]
    [described] = ecs.describe_tasks(cluster=own, tasks=[task["taskArn"]], include=["TAGS"])["tasks"]
    assert lease_until(tags(described["tags"])) == NOW + timedelta(minutes=5)


@pytest.mark.aws
def test_an_older_run_without_a_lease_counts_by_age_and_a_refused_removal_is_exit_3(aws):
    import boto3

    iam, logs = boto3.client("iam"), boto3.client("logs")
    run = [{"Key": "flowrig-run-id", "Value": "old1"}]
    # As an older flowrig made them: no lease, the role on the root path.
    iam.create_role(RoleName="flowrig-old1-execution", AssumeRolePolicyDocument="{}", Tags=run)
    iam.put_role_policy(RoleName="flowrig-old1-execution", PolicyName="inline", PolicyDocument=json.dumps(
        {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:GetObject", "Resource": "*"}]}))
    logs.create_log_group(logGroupName="/flowrig/old1", tags={"flowrig-run-id": "old1"})
    assert leftovers("--older-than", "30").stdout.strip() == "no leftovers of finished ecs/fargate/ec2 runs"
    found = listed("old1")
    assert found["lease_until"] is None and found["reason"].startswith("no lease; newest resource created ")
    assert [(r["kind"], r["id"]) for r in found["resources"]] == [
        ("log-group", "/flowrig/old1"), ("role", "flowrig-old1-execution")]

    # Someone put the role in an instance profile: IAM refuses to delete it, the rest goes.
    iam.create_instance_profile(InstanceProfileName="someones")
    iam.add_role_to_instance_profile(InstanceProfileName="someones", RoleName="flowrig-old1-execution")
    refused = leftovers("--older-than", "0", "--remove")
    assert refused.returncode == 3
    said, last = refused.stderr.strip().splitlines()
    assert said == "removed run old1: log-group /flowrig/old1; not removed: role flowrig-old1-execution"
    assert last.startswith("flowrig: error: could not remove run old1 role flowrig-old1-execution: ")
    assert "DeleteConflict" in last and last.endswith("; run the command again")
    assert logs.describe_log_groups(logGroupNamePrefix="/flowrig/old1")["logGroups"] == []

    iam.remove_role_from_instance_profile(InstanceProfileName="someones", RoleName="flowrig-old1-execution")
    assert leftovers("--older-than", "0", "--remove").returncode == 0
    assert [r["RoleName"] for r in iam.list_roles()["Roles"] if r["RoleName"].startswith("flowrig-old1")] == []


# --- over or not (pure) ---------------------------------------------------------------


# --- bad input and an unreachable AWS -------------------------------------------------


def test_unreachable_aws_is_one_line_and_exit_3():
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {**os.environ, "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_ACCESS_KEY_ID": "x",
           "AWS_SECRET_ACCESS_KEY": "y", "AWS_REGION": "us-east-1", "AWS_MAX_ATTEMPTS": "1"}
    done = leftovers(env=env)
    assert done.returncode == 3
    [line] = done.stderr.strip().splitlines()
    assert line.startswith("flowrig: error: cannot reach AWS while listing resources tagged flowrig-run-id")


@pytest.mark.aws
@pytest.mark.usefixtures("ec2_bootstrapped")
def test_an_ec2_run_killed_mid_start_leaves_instances_and_a_profile_that_remove_takes(ec2_instances_pending, tmp_path):
    import boto3

    from tests.e2e.aws.test_ec2_backend import AMI, assert_nothing_left, held, instances

    aws = ec2_instances_pending
    run_id = f"e9{uuid.uuid4().hex[:8]}"
    # Mid-start: the scheduler instance was asked for and stays pending.
    kill_mid_start(tmp_path, run_id, "ec2", f'ami = "{AMI}"', lambda: aws.query_requests("RunInstances"),
                   "scheduler instance")
    before = held(run_id)
    assert all(before[kind] for kind in before), before
    [instance] = before["instances"]

    deadline = time.monotonic() + 60
    while (found := listed(run_id)) is None:
        assert time.monotonic() < deadline, "the killed run was never listed"
        time.sleep(1)
    assert found["reason"].startswith("lease expired ")
    kinds = [r["kind"] for r in found["resources"]]
    # In the order they are removed.
    assert kinds == ["instance", "security-group", "secret", "instance-profile", "role"], found
    by_kind = {r["kind"]: r for r in found["resources"]}
    assert by_kind["instance"]["id"] == instance["InstanceId"]
    assert by_kind["instance"]["detail"] == {"name": f"flowrig-{run_id}-scheduler", "state": "pending"}
    assert by_kind["instance-profile"] == {
        "kind": "instance-profile", "id": f"flowrig-{run_id}-instance", "created": by_kind["instance-profile"]["created"],
        "detail": {"roles": f"flowrig-{run_id}-instance"}}

    removed = leftovers("--older-than", "0", "--remove", "--run-id", run_id)
    assert removed.returncode == 0, removed.stderr
    assert f"removed run {run_id}: instance {instance['InstanceId']}, security-group " in removed.stderr
    assert_nothing_left(run_id)
    [gone] = instances(run_id, ("terminated",))
    assert gone["InstanceId"] == instance["InstanceId"]
    assert boto3.client("iam").list_instance_profiles()["InstanceProfiles"] == []
    assert listed(run_id) is None
