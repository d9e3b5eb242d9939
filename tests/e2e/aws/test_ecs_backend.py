"""The ``fargate`` and ``ecs`` backends against a real moto server, and the backend for
``package.module:ClusterClass``.

Moto runs no containers and gives tasks made-up private addresses, which nothing here
may connect to. The clusters are therefore pointed at a real mutual-TLS scheduler on
127.0.0.1 (``scheduler_address``, which dask-cloudprovider supports), or their tasks
stay PENDING so that no address is ever handed out.
"""

from __future__ import annotations

import os
import socket
import sys
import time

import pytest

from flowrig.backends.aws.ecs import ECSBackend, FargateBackend
from flowrig.backends.base import ClusterSpec
from flowrig.backends.classpath import ClassPathBackend
from flowrig.certs.material import TLSMaterial
from flowrig.errors import BadInput, InfrastructureError
from flowrig.project.sizing import ClusterSize
from tests.aws_support import aws_env_without_credentials
from tests.tls_support import local_scheduler

IMAGE = "123456789012.dkr.ecr.us-east-1.amazonaws.com/seed:run-image"
# The ECS cluster object and the stand-in scheduler's own cluster both watch one scheduler.
pytestmark = pytest.mark.filterwarnings("ignore:Scheduler already contains a plugin")


#: Runs here skip preflight: their account is not set up to pass it (the image is never in ECR,
#: the default VPC routes to an internet gateway while tasks get private addresses only).
#: tests/e2e/aws/test_preflight.py checks preflight, and the start's own call of it.
NO_PREFLIGHT = {"preflight": False}


def spec(tls, run_id, size=ClusterSize(2), **options) -> ClusterSpec:
    options = {**NO_PREFLIGHT, **options}
    return ClusterSpec(
        run_id=run_id,
        size=size,
        tls=tls,
        image=IMAGE,
        worker_env={"PREFECT_API_URL": "http://10.0.0.5:4200/api", "FLOWRIG_RUN_ID": run_id},
        options=options,
        worker_threads=2,
    )


def tags(items) -> dict[str, str]:
    return {(t.get("key") or t.get("Key")): (t.get("value") or t.get("Value")) for t in items}


def snapshot(run_id: str) -> dict[str, list]:
    """What AWS holds for a run, found by its tag or name (as an operator would)."""
    import boto3

    ecs, ec2, iam, logs = (boto3.client(s) for s in ("ecs", "ec2", "iam", "logs"))
    clusters = ecs.describe_clusters(clusters=[f"flowrig-{run_id}"], include=["TAGS"])["clusters"]
    definitions = []
    for role in ("runner", "scheduler", "worker"):
        # familyPrefix is a whole family name, as the ECS API documents it.
        family = f"flowrig-{run_id}-{role}"
        for arn in ecs.list_task_definitions(familyPrefix=family, status="ACTIVE")["taskDefinitionArns"]:
            definitions.append(ecs.describe_task_definition(taskDefinition=arn, include=["TAGS"]))
    groups = ec2.describe_security_groups(
        Filters=[{"Name": "tag:flowrig-run-id", "Values": [run_id]}]
    )["SecurityGroups"]
    roles = [r for r in iam.list_roles()["Roles"] if r["RoleName"].startswith(f"flowrig-{run_id}")]
    log_groups = logs.describe_log_groups(logGroupNamePrefix=f"/flowrig/{run_id}")["logGroups"]
    return {
        "clusters": [c for c in clusters if c["status"] == "ACTIVE"],
        "task_definitions": definitions,
        "security_groups": groups,
        "roles": roles,
        "log_groups": log_groups,
    }


def running_tasks(cluster: str) -> list[dict]:
    import boto3

    ecs = boto3.client("ecs")
    arns = ecs.list_tasks(cluster=cluster)["taskArns"]
    if not arns:
        return []
    return [t for t in ecs.describe_tasks(cluster=cluster, tasks=arns)["tasks"] if t["lastStatus"] != "STOPPED"]


# --- fargate: the whole life of a run ----------------------------------------------
def assert_no_key_in(text: str, tls: TLSMaterial, api_auth: str | None = None) -> None:
    """Neither the leaf key (any line of its body) nor an auth string is in ``text``."""
    assert "PRIVATE KEY" not in text
    for line in tls.key_pem.decode().splitlines()[1:-1]:
        assert line not in text
    if api_auth:
        assert api_auth not in text


def secret_arns(run_id: str) -> list[str]:
    import boto3

    listed = boto3.client("secretsmanager").list_secrets(
        Filters=[{"Key": "tag-value", "Values": [run_id]}])["SecretList"]
    return [item["ARN"] for item in listed]


@pytest.mark.aws
def test_fargate_run_creates_tagged_private_resources_and_removes_them(bootstrapped, tls):
    aws = bootstrapped
    import json

    import boto3

    from flowrig.certs import delivery

    with local_scheduler(tls, workers=1) as scheduler:
        started = FargateBackend().start(
            spec(tls, "fg1", scheduler_address=scheduler.scheduler_address, provision_timeout=120,
                 environment={"GREETING": "hello"},
                 secrets={"DB_PASSWORD": "arn:aws:secretsmanager:us-east-1:123456789012:secret:db"})
        )
        try:
            assert started.scheduler_address == scheduler.scheduler_address
            assert started.dashboard_link is None  # not asked for: closed, so no link
            held = snapshot("fg1")

            [cluster] = held["clusters"]
            assert tags(cluster["tags"])["flowrig-run-id"] == "fg1"
            # Everything names its maker, as IAM names the caller: the owner tag the
            # runner policy checks on every later change.
            owner = boto3.client("sts").get_caller_identity()["UserId"]
            assert tags(cluster["tags"])["flowrig-owner"] == owner

            # The run's certificates: one secret, tagged, readable by the run's own role only.
            [role] = held["roles"]
            assert role["RoleName"] == "flowrig-fg1-execution"
            [secret_arn] = secret_arns("fg1")
            manager = boto3.client("secretsmanager")
            secret_tags = tags(manager.describe_secret(SecretId=secret_arn)["Tags"])
            assert (secret_tags["flowrig-run-id"], secret_tags["flowrig-owner"]) == ("fg1", owner)
            policy = json.loads(manager.get_resource_policy(SecretId=secret_arn)["ResourcePolicy"])
            # Any other principal is denied, whatever its own policies grant; the role's
            # own right comes from the reader policy the bootstrap made (no principal
            # named here that IAM might not know yet).
            [deny] = policy["Statement"]
            assert deny["Effect"] == "Deny" and deny["Principal"] == "*" and deny["Resource"] == secret_arn
            assert deny["Condition"] == {"StringNotEquals": {"aws:PrincipalArn": role["Arn"]}}
            delivered = delivery.decode(manager.get_secret_value(SecretId=secret_arn)["SecretString"])
            assert delivered == tls

            by_family = {d["taskDefinition"]["family"]: d for d in held["task_definitions"]}
            assert sorted(by_family) == ["flowrig-fg1-scheduler", "flowrig-fg1-worker"]
            for described in by_family.values():
                [container] = described["taskDefinition"]["containerDefinitions"]
                assert container["image"] == IMAGE
                # No baked files named: the role's entry point uses the delivered ones.
                assert "--tls-key" not in container["command"]
                assert tags_env(container["environment"])["FLOWRIG_TLS_FROM"] == "secret"
                secrets = {item["name"]: item["valueFrom"] for item in container["secrets"]}
                assert secrets["FLOWRIG_TLS_SECRET"] == secret_arn
                assert container["linuxParameters"]["initProcessEnabled"] is True
                assert described["taskDefinition"]["requiresCompatibilities"] == ["FARGATE"]
                assert described["taskDefinition"]["executionRoleArn"] == role["Arn"]
                assert tags(described["tags"])["flowrig-run-id"] == "fg1"
                assert_no_key_in(json.dumps(described, default=str), tls)
            scheduler_def = by_family["flowrig-fg1-scheduler"]["taskDefinition"]["containerDefinitions"][0]
            # No idle timeout: it would end the cluster of a runner busy between two
            # submissions; the image's scheduler role stops by the no-client rule.
            assert scheduler_def["command"] == ["dask-scheduler", "--protocol", "tls"]
            assert "GREETING" not in tags_env(scheduler_def["environment"])
            worker_def = by_family["flowrig-fg1-worker"]["taskDefinition"]["containerDefinitions"][0]
            # The run's and the project's environment, in the definition, not in overrides.
            assert tags_env(worker_def["environment"]) == {
                "PREFECT_API_URL": "http://10.0.0.5:4200/api", "FLOWRIG_RUN_ID": "fg1", "GREETING": "hello",
                "FLOWRIG_TLS_FROM": "secret"}
            assert {item["name"]: item["valueFrom"] for item in worker_def["secrets"]}["DB_PASSWORD"] == (
                "arn:aws:secretsmanager:us-east-1:123456789012:secret:db")

            # The security group: the scheduler port from the VPC, nothing else from outside.
            [group] = held["security_groups"]
            vpc = boto3.client("ec2").describe_vpcs(VpcIds=[group["VpcId"]])["Vpcs"][0]
            from_vpc = [p for p in group["IpPermissions"] if p.get("IpRanges")]
            assert [(p["FromPort"], p["ToPort"]) for p in from_vpc] == [(8786, 8786)]
            for permission in group["IpPermissions"]:
                cidrs = [r["CidrIp"] for r in permission.get("IpRanges", [])]
                assert "0.0.0.0/0" not in cidrs and not permission.get("Ipv6Ranges")
                assert cidrs in ([], [vpc["CidrBlock"]])
                if not cidrs:
                    assert [p["GroupId"] for p in permission["UserIdGroupPairs"]] == [group["GroupId"]]

            # The run's role: on flowrig's path, for ECS tasks of this account only.
            assert role["Path"] == "/flowrig/"
            [trust] = role["AssumeRolePolicyDocument"]["Statement"]
            assert trust["Principal"] == {"Service": "ecs-tasks.amazonaws.com"}
            assert trust["Condition"] == {"StringEquals": {"aws:SourceAccount": role["Arn"].split(":")[4]}}
            iam = boto3.client("iam")
            role_tags = tags(iam.list_role_tags(RoleName=role["RoleName"])["Tags"])
            assert (role_tags["flowrig-run-id"], role_tags["flowrig-owner"]) == ("fg1", owner)
            assert [p["PolicyArn"] for p in iam.list_attached_role_policies(RoleName=role["RoleName"])[
                "AttachedPolicies"]] == ["arn:aws:iam::aws:policy/service-role/AmazonECSTaskExecutionRolePolicy",
                                         "arn:aws:iam::123456789012:policy/flowrig/flowrig-run-secret-reader"]
            [log_group] = held["log_groups"]
            assert boto3.client("logs").list_tags_log_group(logGroupName=log_group["logGroupName"])["tags"]["flowrig-run-id"] == "fg1"

            # What the runner asked ECS to run: two workers in one call (with a token that
            # makes a retry of it start no more), private addresses only, commands and
            # nothing else in the overrides; each worker is named after its own task.
            requests = aws.requests("RunTask")
            assert len(requests) == 1
            for request in requests:
                body = request["body"]
                assert body["count"] == 2 and len(body["clientToken"]) == 32
                network = body["networkConfiguration"]["awsvpcConfiguration"]
                assert network["assignPublicIp"] == "DISABLED"
                assert network["securityGroups"] == [group["GroupId"]]
                assert body["launchType"] == "FARGATE"
                assert body["startedBy"] == "flowrig-fg1"
                assert tags(body["tags"])["flowrig-run-id"] == "fg1"
                [override] = body["overrides"]["containerOverrides"]
                assert sorted(override) == ["command", "name"]
                assert override["name"] == "dask-worker"
                command = override["command"]
                assert command[:2] == ["dask-worker", scheduler.scheduler_address]
                assert command[command.index("--nthreads") + 1] == "2"
                assert command[command.index("--name") + 1] == "{ecs-task-id}"
                assert command[-1] == "--no-dashboard" and "--tls-key" not in command
                assert_no_key_in(json.dumps(body), tls)
            tasks = running_tasks(cluster["clusterArn"])
            assert len(tasks) == 2
            assert_no_key_in(json.dumps(tasks, default=str), tls)
        finally:
            started.close()
        started.close()  # a second close does nothing

        after = snapshot("fg1")
        assert after == {k: [] for k in after}, after
        assert secret_arns("fg1") == []
        assert running_tasks(cluster["clusterArn"]) == []
        # An existing scheduler is someone else's: it is still serving its own worker.
        assert list(scheduler.scheduler_info["workers"].values())[0]["name"] == "local-0"
        # What the run used: its two worker tasks, shaped by flowrig's worker task
        # definition and priced as Fargate tasks in the run's region; no scheduler task.
        from flowrig.backends.usage import Placement, summarize

        lives = started.lives()
        assert [life.role for life in lives] == ["worker", "worker"]
        assert {life.placement for life in lives} == {
            Placement(vcpu=1.0, memory_gib=4.0, price_key="fargate:us-east-1:X86_64")}
        assert all(life.ended is not None for life in lives)
        assert summarize(lives, now=0.0).estimated_cost_total > 0


@pytest.mark.aws
def test_dashboard_is_opened_to_the_vpc_only_when_asked(bootstrapped, tls):
    with local_scheduler(tls, workers=1) as scheduler:
        started = FargateBackend().start(
            spec(tls, "dash1", size=ClusterSize(1), scheduler_address=scheduler.scheduler_address, dashboard=True)
        )
        try:
            [group] = snapshot("dash1")["security_groups"]
            from_vpc = [p for p in group["IpPermissions"] if p.get("IpRanges")]
            assert sorted((p["FromPort"], p["ToPort"]) for p in from_vpc) == [(8786, 8786), (8787, 8787)]
        finally:
            started.close()


@pytest.mark.aws
def test_a_project_execution_role_is_used_and_named_in_the_secret_policy(bootstrapped, tls):
    import json

    import boto3

    own = boto3.client("iam").create_role(RoleName="team-execution", AssumeRolePolicyDocument="{}")["Role"]["Arn"]
    with local_scheduler(tls, workers=1) as scheduler:
        started = FargateBackend().start(spec(
            tls, "given1", size=ClusterSize(1), scheduler_address=scheduler.scheduler_address,
            execution_role_arn=own))
        try:
            held = snapshot("given1")
            assert held["roles"] == []  # none of the run's own
            for described in held["task_definitions"]:
                assert described["taskDefinition"]["executionRoleArn"] == own
            [secret] = secret_arns("given1")
            allow, deny = json.loads(boto3.client("secretsmanager").get_resource_policy(SecretId=secret)[
                "ResourcePolicy"])["Statement"]
            # A role that exists already is named as the reader, and everyone else denied.
            assert allow["Effect"] == "Allow" and allow["Principal"] == {"AWS": own}
            assert deny["Condition"] == {"StringNotEquals": {"aws:PrincipalArn": own}}
        finally:
            started.close()


@pytest.mark.aws
def test_without_bootstrap_nothing_is_created(aws, tls):
    with pytest.raises(BadInput) as info:
        FargateBackend().start(spec(tls, "noboot", size=ClusterSize(1)))
    assert "flowrig aws bootstrap --backend ecs" in str(info.value) and "\n" not in str(info.value)
    after = snapshot("noboot")
    assert after == {k: [] for k in after}, after
    assert [op for op in aws.operations() if op.startswith("Create")] == []


def tags_env(items) -> dict[str, str]:
    return {item["name"]: item["value"] for item in items}


@pytest.mark.aws
def test_provisioning_timeout_while_tasks_stay_pending(ecs_tasks_pending, bootstrapped, tls):
    aws = ecs_tasks_pending
    began = time.monotonic()
    with pytest.raises(InfrastructureError) as info:
        FargateBackend().start(spec(tls, "pend1", size=ClusterSize(1), provision_timeout=8))
    took = time.monotonic() - began
    assert info.value.exit_code == 3
    message = str(info.value)
    assert "\n" not in message
    assert "did not start within 8 s" in message and "scheduler task PENDING" in message
    assert 8 <= took < 60

    # The scheduler task was asked for, with TLS, and never got an address to connect to.
    [request] = aws.requests("RunTask")
    [override] = request["body"]["overrides"]["containerOverrides"]
    assert override["name"] == "dask-scheduler"
    assert override["command"][:3] == ["dask-scheduler", "--protocol", "tls"]
    assert request["body"]["networkConfiguration"]["awsvpcConfiguration"]["assignPublicIp"] == "DISABLED"
    assert "DescribeNetworkInterfaces" not in aws.operations()

    after = snapshot("pend1")
    assert after == {k: [] for k in after}, after
    assert secret_arns("pend1") == []  # the run's certificates went with it
    import boto3

    task_arn = aws.requests("DescribeTasks")[0]["body"]["tasks"][0]
    [task] = boto3.client("ecs").describe_tasks(cluster=request["body"]["cluster"], tasks=[task_arn])["tasks"]
    assert task["lastStatus"] == "STOPPED"


@pytest.mark.aws
def test_no_worker_joining_in_time_is_an_infrastructure_error(bootstrapped, tls):
    with local_scheduler(tls, workers=0) as scheduler:
        with pytest.raises(InfrastructureError) as info:
            FargateBackend().start(
                spec(tls, "nowk1", size=ClusterSize(1), scheduler_address=scheduler.scheduler_address,
                     provision_timeout=8)
            )
    assert "had no worker within 8 s" in str(info.value)
    after = snapshot("nowk1")
    assert after == {k: [] for k in after}, after
    assert secret_arns("nowk1") == []


@pytest.mark.aws
def test_ecs_backend_uses_the_given_cluster_and_leaves_it(bootstrapped, tls):
    aws = bootstrapped
    import boto3

    ecs = boto3.client("ecs")
    own = ecs.create_cluster(clusterName="team-cluster", capacityProviders=["FARGATE"])["cluster"]["clusterArn"]
    with local_scheduler(tls, workers=1) as scheduler:
        started = ECSBackend().start(
            spec(tls, "ecs1", size=ClusterSize(1, adapt=(1, 3)), cluster_arn=own,
                 fargate_scheduler=True, fargate_workers=True, scheduler_address=scheduler.scheduler_address,
                 tags={"team": "data"}, scheduler_extra_args=["--no-show"], worker_extra_args=["--no-dashboard"])
        )
        try:
            adaptive = started.cluster._adaptive
            assert (adaptive.minimum, adaptive.maximum) == (1, 3)
            [request] = aws.requests("RunTask")
            assert request["body"]["cluster"] == own
            command = request["body"]["overrides"]["containerOverrides"][0]["command"]
            # Project flags last (the delivered TLS files are named by the entry point).
            assert command[-1:] == ["--no-dashboard"] and command.count("--no-dashboard") == 1
            assert snapshot("ecs1")["clusters"] == []  # no cluster of its own
            definitions = snapshot("ecs1")["task_definitions"]
            scheduler_def = [d for d in definitions if d["taskDefinition"]["family"].endswith("scheduler")][0]
            assert scheduler_def["taskDefinition"]["containerDefinitions"][0]["command"] == [
                "dask-scheduler", "--no-show", "--protocol", "tls"]
            assert tags(scheduler_def["tags"])["team"] == "data"
        finally:
            started.close()
    [cluster] = ecs.describe_clusters(clusters=[own])["clusters"]
    assert cluster["status"] == "ACTIVE"
    assert running_tasks(own) == []
    after = snapshot("ecs1")
    assert after == {k: [] for k in after}, after


# --- bad input -------------------------------------------------------------------
@pytest.mark.parametrize(
    "backend, changes, words",
    [
        (FargateBackend, {"image": None}, "needs an image: pass --image or build one with flowrig build"),
        (FargateBackend, {"options": {"n_workers": 3}}, "n_workers is not accepted"),
        (FargateBackend, {"options": {"worker_cpu": 1024, "worker_mem": 512}}, "use one of 2048, 3072"),
        (FargateBackend, {"options": {"fargate_workers": False}}, "use the ecs backend"),
        (FargateBackend, {"options": {"provision_timeout": "soon"}}, "provision_timeout"),
        (ECSBackend, {}, "needs an existing cluster: set cluster_arn"),
        (FargateBackend, {"options": {"environment": {"API_TOKEN": "x"}}},
         "API_TOKEN looks like a secret"),
        (FargateBackend, {"options": {"environment": {"DB_PASSWORD": "x"}}}, "set secrets = { DB_PASSWORD ="),
        (FargateBackend, {"options": {"secrets": {"TOKEN": "plain-text"}}}, "is not a Secrets Manager or SSM"),
        (FargateBackend, {"options": {"environment": {"A": "1"}, "worker_task_definition_arn": "arn:x"}},
         "put them in that task definition"),
        (FargateBackend, {"options": {"task_role_policies": ["arn:aws:iam::aws:policy/AdministratorAccess"]}},
         "set task_role_arn"),
    ],
)
def test_bad_options_are_bad_input_before_any_aws_call(tls, backend, changes, words, monkeypatch):
    # Any AWS call would fail with "cannot reach AWS" (exit 3) instead.
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{closed_port()}")
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")  # no backoff between retries waited out
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "x")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "y")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    values = dict(run_id="bad1", size=ClusterSize(1), tls=tls, image=IMAGE, options={})
    values.update(changes)
    with pytest.raises(BadInput) as info:
        backend().start(ClusterSpec(**values))
    assert words in str(info.value) and "\n" not in str(info.value)


def test_unreachable_aws_is_an_infrastructure_error(tls, monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{closed_port()}")
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")  # no backoff between retries waited out
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "x")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "y")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    with pytest.raises(InfrastructureError) as info:
        FargateBackend().start(spec(tls, "unreach", size=ClusterSize(1)))
    assert "cannot reach AWS while asking AWS who the credentials belong to" in str(info.value)


def closed_port() -> int:
    """A loopback port nothing listens on."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_no_credentials_is_bad_input(tls, tmp_path, monkeypatch):
    for key in [k for k in os.environ if k.startswith("AWS_")]:
        monkeypatch.delenv(key)
    for key, value in aws_env_without_credentials(tmp_path).items():
        if key.startswith("AWS_"):
            monkeypatch.setenv(key, value)
    with pytest.raises(BadInput) as info:
        FargateBackend().start(spec(tls, "nocred", size=ClusterSize(1)))
    assert "credentials" in str(info.value)


def test_missing_dask_cloudprovider_names_the_install_command(tls, monkeypatch):
    # A None entry makes the import fail as it does when the package is not installed.
    monkeypatch.setitem(sys.modules, "dask_cloudprovider.aws", None)
    with pytest.raises(BadInput) as info:
        FargateBackend().start(spec(tls, "nodcp", size=ClusterSize(1)))
    assert str(info.value) == "the fargate backend needs dask-cloudprovider: pip install 'flowrig[aws]'"


def test_prefect_api_stays_on_loopback_outside_ecs(monkeypatch):
    monkeypatch.delenv("ECS_CONTAINER_METADATA_URI_V4", raising=False)
    assert FargateBackend().prefect_api_hosts() == ("127.0.0.1", "127.0.0.1")
    monkeypatch.setenv("ECS_CONTAINER_METADATA_URI_V4", "http://169.254.170.2/v4/x")
    bind, advertised = FargateBackend().prefect_api_hosts()
    # The task's own address, both to listen on and to reach the API at.
    assert bind == advertised == socket.gethostbyname(socket.gethostname())


# --- package.module:ClusterClass ----------------------------------------------------
def test_class_path_backend_starts_any_cluster_class_with_tls(tls):
    backend = ClassPathBackend("distributed:LocalCluster")
    started = backend.start(
        ClusterSpec(run_id="cp1", size=ClusterSize(2), tls=tls,
                    options={"processes": False, "host": "127.0.0.1", "dashboard_address": ":0"})
    )
    try:
        assert started.scheduler_address.startswith("tls://127.0.0.1:")
        assert len(started.cluster.scheduler_info["workers"]) == 2
        from distributed import Client

        with Client(started.scheduler_address, security=tls.to_security()) as client:
            assert client.submit(sum, [1, 2, 3]).result() == 6
    finally:
        started.close()
    started.close()
    assert started.cluster.status.name == "closed"


def test_class_path_backend_adapts(tls):
    started = ClassPathBackend("distributed:LocalCluster").start(
        ClusterSpec(run_id="cp2", size=ClusterSize(1, adapt=(1, 4)), tls=tls,
                    options={"processes": False, "host": "127.0.0.1", "dashboard_address": ":0"})
    )
    try:
        adaptive = started.cluster._adaptive
        assert (adaptive.minimum, adaptive.maximum) == (1, 4)
    finally:
        started.close()


@pytest.mark.parametrize(
    "path, words",
    [
        ("no_such_module_xyz:Cluster", "cannot import no_such_module_xyz"),
        ("distributed:NoSuchCluster", "distributed has no NoSuchCluster"),
        ("collections:OrderedDict", "not a distributed Cluster class"),
        ("distributed.LocalCluster", "not 'package.module:ClusterClass'"),
    ],
)
def test_class_path_backend_bad_paths(tls, path, words):
    with pytest.raises(BadInput) as info:
        ClassPathBackend(path).start(ClusterSpec(run_id="x", size=ClusterSize(1), tls=tls))
    assert words in str(info.value) and "\n" not in str(info.value)


def test_class_path_backend_rejects_unknown_options(tls):
    with pytest.raises(BadInput) as info:
        ClassPathBackend("distributed:LocalCluster").start(
            ClusterSpec(run_id="x", size=ClusterSize(1), tls=tls, options={"no_such_option": 1, "processes": False})
        )
    assert "no_such_option" in str(info.value)


# --- the run's API on a fargate run -------------------------------------------------
API_PROBE_FLOW = """
    import httpx
    from prefect import flow, task
    from prefect.settings import get_current_settings

    @task
    def anonymous_status() -> int:
        # The settings the runner shipped to this task (the worker is in-process here).
        api = get_current_settings().api
        return httpx.post(str(api.url) + "/flow_runs/filter", json={}, verify=api.ssl_cert_file or True).status_code

    @flow
    def main() -> dict:
        auth = get_current_settings().api.auth_string
        auth = auth.get_secret_value() if hasattr(auth, "get_secret_value") else auth
        return {"anonymous": anonymous_status.submit().result(), "auth": auth}
"""


@pytest.mark.aws
def test_a_fargate_run_keeps_its_api_auth_string_out_of_aws(bootstrapped, tls, tmp_path):
    """A whole `flowrig run` on fargate (moto), its tasks run by a stand-in worker: the
    run's API refuses a request without its auth string, and the string is in no
    registered task definition, RunTask request or DescribeTasks answer."""
    import json
    import subprocess

    import boto3

    from tests.run_support import FLOWRIG, marked_env, write_project

    certs = tmp_path / "certs"
    tls.write_to_dir(certs)
    described: list[dict] = []
    with local_scheduler(tls, workers=1) as scheduler:
        project = write_project(tmp_path / "project", API_PROBE_FLOW, f'''
            flow = "flow.py:main"
            [cluster]
            backend = "fargate"
            n_workers = 1
            [cluster.options]
            scheduler_address = "{scheduler.scheduler_address}"
            create_roles = true
            provision_timeout = 60
            preflight = false
        ''')
        process = subprocess.Popen(
            [*FLOWRIG, "run", str(project), "--image", IMAGE, "--certs", str(certs), "--output", "json"],
            env=marked_env("fargate-api"), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        ecs = boto3.client("ecs")
        # DescribeTasks as an operator would see it while the run's tasks are up.
        deadline = time.monotonic() + 120
        while process.poll() is None and time.monotonic() < deadline:
            for cluster in ecs.list_clusters()["clusterArns"]:
                arns = ecs.list_tasks(cluster=cluster)["taskArns"]
                if arns:
                    described.extend(ecs.describe_tasks(cluster=cluster, tasks=arns)["tasks"])
            time.sleep(0.5)
        stdout, stderr = process.communicate(timeout=120)
    assert process.returncode == 0, stderr[-3000:]
    outcome = json.loads(stdout.strip().splitlines()[-1])
    assert outcome["state"] == "Completed", outcome
    result = outcome["result"]
    assert result["anonymous"] == 401
    auth = result["auth"]
    assert len(auth) >= 32
    assert described, "no task was seen running"
    sent = [r["body"] for r in bootstrapped.requests("RegisterTaskDefinition")] + [r["body"] for r in bootstrapped.requests("RunTask")]
    assert len(sent) == 3  # scheduler and worker definitions, one worker task
    for text in (json.dumps(sent), json.dumps(described, default=str)):
        assert auth not in text
        assert_no_key_in(text, tls)
