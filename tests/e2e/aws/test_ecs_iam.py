"""IAM of the ECS backends: one run can never reach another.

Two layers. The documents themselves, statement by statement, under the evaluator of
tests/iam_eval.py (AWS's documented semantics, checked in tests/unit/test_iam_eval.py): each
attack of a runner on another run's resources is refused (``ATTACKS``), and what a run
does itself is allowed. Then runs against a moto server whose IAM checks are those of
AWS for the operations flowrig makes (tests/iam_support.py): a user holding exactly the
printed policy runs a whole fargate and ecs run, and cannot register outside its
families, pass a role that is not its own run's, or touch another runner's run; a task
holding one run's execution role cannot read another run's secret.

The policy documents alone, statement by statement, are checked in tests/unit/test_ecs_iam.py.
"""

from __future__ import annotations

import json
import time

import pytest
from typer.testing import CliRunner

from flowrig.backends.aws import policies as iam
from flowrig.backends.aws.ecs import ECSBackend, FargateBackend
from flowrig.backends.base import ClusterSpec
from flowrig.cli.ecs import app
from flowrig.errors import BadInput, InfrastructureError
from flowrig.project.sizing import ClusterSize
from tests.e2e.aws.test_ecs_backend import IMAGE, secret_arns, snapshot
from tests.iam_support import enforcement, statements_used
from tests.tls_support import local_scheduler
from tests.unit.test_ecs_iam import (
    ACCOUNT,
    ACCT,
    printed_policy,
)

pytestmark = pytest.mark.filterwarnings("ignore:Scheduler already contains a plugin")


# --- the documents, statement by statement --------------------------------------------------


# --- enforced on a moto server ------------------------------------------------------------------
@pytest.fixture
def runners(bootstrapped, iam_enforced, monkeypatch):
    """After `flowrig ecs bootstrap` (as the administrator): runners, each a user whose
    only policy is exactly the printed one (or ``policy``, when given). ``as_runner(name)``
    makes that user's key the credentials and turns IAM enforcement on; ``as_admin()``
    turns it off."""
    import boto3

    aws = bootstrapped
    client = boto3.client("iam")
    printed = printed_policy()
    keys: dict[str, dict[str, str]] = {}

    class Runners:
        enforcer = iam_enforced

        def as_runner(self, name: str, policy: dict | None = None) -> dict[str, str]:
            enforcement(aws.endpoint, "inf")
            if name not in keys:
                client.create_user(UserName=name)
                key = client.create_access_key(UserName=name)["AccessKey"]
                keys[name] = {"AWS_ACCESS_KEY_ID": key["AccessKeyId"], "AWS_SECRET_ACCESS_KEY": key["SecretAccessKey"]}
            client.put_user_policy(UserName=name, PolicyName="flowrig-runner",
                                   PolicyDocument=json.dumps(policy or printed))
            for variable, value in keys[name].items():
                monkeypatch.setenv(variable, value)
            enforcement(aws.endpoint, "0")
            return keys[name]

        def as_admin(self) -> None:
            enforcement(aws.endpoint, "inf")
            monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
            monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")

        def user_arn(self, name: str) -> str:
            return f"arn:aws:iam::{ACCOUNT}:user/{name}"

    runners = Runners()
    try:
        yield runners
    finally:
        runners.as_admin()


def _spec(tls, run_id, scheduler_address, **options) -> ClusterSpec:
    return ClusterSpec(run_id=run_id, size=ClusterSize(1), tls=tls, image=IMAGE,
                       worker_env={"FLOWRIG_RUN_ID": run_id},
                       options={"scheduler_address": scheduler_address, "provision_timeout": 60, "preflight": False,
                                **options})


def _only_deregistering_refused(enforcer) -> None:
    """Nothing the run asked for was refused, but deregistering its task definitions
    (which the policy cannot grant on the run's own alone)."""
    refused = [d for d in enforcer.refused() if d.action != iam.DEREGISTER_ACTION]
    assert refused == [], refused
    assert {d.action for d in enforcer.refused()} <= {iam.DEREGISTER_ACTION}


def _gone_but_task_definitions(run_id: str) -> None:
    after = snapshot(run_id)
    # Deregistering cannot be limited to the run's own: the definitions stay, for
    # `flowrig aws leftovers --remove`; nothing else does.
    assert len(after.pop("task_definitions")) == 2
    assert after == {k: [] for k in after}, after
    assert secret_arns(run_id) == []


@pytest.mark.aws
def test_a_fargate_run_completes_under_exactly_the_printed_policy(aws, runners, tls):
    with local_scheduler(tls, workers=1) as scheduler:
        runners.as_runner("runner-a")
        started = FargateBackend().start(_spec(tls, "iam1", scheduler.scheduler_address))
        started.close()
        runners.as_admin()
    _only_deregistering_refused(runners.enforcer)
    _gone_but_task_definitions("iam1")
    # Least: every statement of the printed policy was needed by the run.
    used = statements_used(printed_policy(), runners.enforcer, runners.user_arn("runner-a"))
    # This run skips preflight; tests/e2e/aws/test_preflight.py shows its statements used. The
    # worker-shape reads are of an ecs run's capacity provider, which a fargate run has not; no
    # role of this run stops before its end, so no last log lines are read (the next test reads them).
    assert [sid for sid, was in used.items()
            if not was and not sid.startswith(("Preflight", "WorkerShape", "WorkerCapacity", "RoleLogLines"))
            ] == [], used
    for operation in ("RunTask", "CreateSecret", "CreateRole", "AttachRolePolicy", "DeleteRole", "DeleteSecret"):
        assert operation in aws.operations()


@pytest.mark.aws
def test_an_ecs_run_on_a_cluster_of_its_own_completes_under_exactly_the_printed_policy(aws, runners, tls):
    import boto3

    cluster = boto3.client("ecs").create_cluster(clusterName="team-cluster", capacityProviders=["FARGATE"])[
        "cluster"]["clusterArn"]
    with local_scheduler(tls, workers=1) as scheduler:
        runners.as_runner("runner-a")
        # moto runs no EC2 capacity: the tasks go to Fargate capacity of that cluster.
        started = ECSBackend().start(_spec(tls, "iam2", scheduler.scheduler_address, cluster_arn=cluster,
                                           fargate_scheduler=True, fargate_workers=True))
        started.close()
        runners.as_admin()
    _only_deregistering_refused(runners.enforcer)
    _gone_but_task_definitions("iam2")
    assert boto3.client("ecs").describe_clusters(clusters=[cluster])["clusters"][0]["status"] == "ACTIVE"


@pytest.mark.aws
def test_a_stopped_workers_last_log_lines_are_read_under_exactly_the_printed_policy(aws, runners, tls):
    """The runner reads the last lines a stopped worker wrote (its stop's reason quotes
    them): every call of a run whose worker stopped, that read included, is allowed by
    the printed policy, which grants it on flowrig's log streams."""
    from moto.ecs.models import ecs_backends
    from moto.logs.models import logs_backends

    from tests.iam_support import REGION

    with local_scheduler(tls, workers=1) as scheduler:
        runners.as_runner("runner-l")
        started = FargateBackend().start(_spec(tls, "iam4", scheduler.scheduler_address))
        try:
            [(name, worker)] = started.cluster.workers.items()
            # What its container wrote, and its stop: in moto's own state (no call of the runner's).
            stream = f"flowrig-iam4/dask-worker/{worker.handle.rsplit('/', 1)[-1]}"
            logs = logs_backends[ACCOUNT][REGION]
            logs.create_log_stream("/flowrig/iam4", stream)
            logs.put_log_events("/flowrig/iam4", stream, [{"timestamp": int(time.time() * 1000),
                                                           "message": "worker: out of memory in a task"}])
            ecs_backends[ACCOUNT][REGION].stop_task("flowrig-iam4", worker.handle, "Essential container exited")
            deadline = time.monotonic() + 30
            while started.cluster.lost_reason(name) is None:
                assert time.monotonic() < deadline, "the stop was not seen"
                time.sleep(0.2)
            reason = started.cluster.lost_reason(name)
        finally:
            started.close()
            runners.as_admin()
    assert "last log lines: worker: out of memory in a task" in reason, reason
    assert "logs:GetLogEvents" in runners.enforcer.allowed_actions()
    _only_deregistering_refused(runners.enforcer)
    used = statements_used(printed_policy(), runners.enforcer, runners.user_arn("runner-l"))
    assert used["RoleLogLines"], used


@pytest.mark.aws
def test_with_deregistering_granted_nothing_stays(aws, runners, tls):
    with local_scheduler(tls, workers=1) as scheduler:
        runners.as_runner("runner-d", printed_policy("--deregister-task-definitions"))
        try:
            FargateBackend().start(_spec(tls, "iam3", scheduler.scheduler_address)).close()
        finally:
            runners.as_admin()
    assert runners.enforcer.refused() == []
    after = snapshot("iam3")
    assert after == {k: [] for k in after}, after


@pytest.fixture
def run_b(runners, tls):
    """Runner B's run, started and kept until the test ends."""
    with local_scheduler(tls, workers=1) as scheduler:
        runners.as_runner("runner-b")
        started = FargateBackend().start(_spec(tls, "runb", scheduler.scheduler_address))
        runners.as_admin()
        try:
            yield snapshot("runb")
        finally:
            runners.as_runner("runner-b")
            started.close()
            runners.as_admin()


def _refused(call, action: str) -> None:
    from botocore.exceptions import ClientError

    with pytest.raises(ClientError) as info:
        call()
    assert f"not authorized to perform: {action}" in str(info.value), info.value


@pytest.mark.aws
def test_a_runner_cannot_reach_another_runners_run(aws, runners, run_b, tls):
    import boto3

    [role_b] = run_b["roles"]
    definitions = {d["taskDefinition"]["family"]: d["taskDefinition"] for d in run_b["task_definitions"]}
    worker_b = definitions["flowrig-runb-worker"]
    [secret_b] = secret_arns("runb")
    [cluster_b] = run_b["clusters"]
    ecs_admin = boto3.client("ecs")
    [task_b] = ecs_admin.list_tasks(cluster=cluster_b["clusterArn"])["taskArns"]
    legacy = boto3.client("iam").create_role(
        RoleName=iam.EXECUTION_ROLE_NAME, Path=iam.ROLE_PATH,
        AssumeRolePolicyDocument=json.dumps(iam.trust_policy(ACCT)))["Role"]["Arn"]

    runners.as_runner("runner-a")
    # A session of its own: boto3's default one keeps the credentials it first read.
    session = boto3.session.Session()
    ecs, sm = session.client("ecs"), session.client("secretsmanager")
    container = {"name": "x", "image": IMAGE, "memory": 512}
    mine = [{"key": iam.OWNER_TAG, "value": "runner-a-claims-nothing"}]
    own_id = session.client("sts").get_caller_identity()["UserId"]
    own = [{"key": iam.OWNER_TAG, "value": own_id}]
    # Another family than flowrig's: refused, whatever the tags.
    _refused(lambda: ecs.register_task_definition(family="payments-api", containerDefinitions=[container], tags=own),
             "ecs:RegisterTaskDefinition")
    # Claiming another owner than itself: refused.
    _refused(lambda: ecs.register_task_definition(family="flowrig-x-worker", containerDefinitions=[container],
                                                  tags=mine), "ecs:RegisterTaskDefinition")
    # Run B's execution role (the reader of B's secret), or the old shared role, as the task role.
    for role in (role_b["Arn"], legacy):
        for slot in ("taskRoleArn", "executionRoleArn"):
            _refused(lambda r=role, k=slot: ecs.register_task_definition(
                family="flowrig-x-worker", containerDefinitions=[container], tags=own, **{k: r}), "iam:PassRole")
    # B's own task definition names B's secret: A cannot run it, nor stop or see B's tasks.
    _refused(lambda: ecs.run_task(cluster=cluster_b["clusterArn"], taskDefinition=worker_b["taskDefinitionArn"],
                                  tags=own, launchType="FARGATE"), "ecs:RunTask")
    _refused(lambda: ecs.stop_task(cluster=cluster_b["clusterArn"], task=task_b), "ecs:StopTask")
    _refused(lambda: ecs.describe_tasks(cluster=cluster_b["clusterArn"], tasks=[task_b]), "ecs:DescribeTasks")
    _refused(lambda: ecs.deregister_task_definition(taskDefinition=worker_b["taskDefinitionArn"]),
             "ecs:DeregisterTaskDefinition")
    _refused(lambda: ecs.delete_cluster(cluster=cluster_b["clusterArn"]), "ecs:DeleteCluster")
    # B's secret: its policy cannot be rewritten or dropped, the secret not deleted, read or claimed.
    policy = json.dumps(iam.secret_read_policy(secret_b, runners.user_arn("runner-a"), grant=True))
    _refused(lambda: sm.put_resource_policy(SecretId=secret_b, ResourcePolicy=policy, BlockPublicPolicy=True),
             "secretsmanager:PutResourcePolicy")
    _refused(lambda: sm.delete_resource_policy(SecretId=secret_b), "secretsmanager:DeleteResourcePolicy")
    _refused(lambda: sm.delete_secret(SecretId=secret_b, ForceDeleteWithoutRecovery=True),
             "secretsmanager:DeleteSecret")
    _refused(lambda: sm.get_secret_value(SecretId=secret_b), "secretsmanager:GetSecretValue")
    _refused(lambda: sm.tag_resource(SecretId=secret_b, Tags=[{"Key": iam.OWNER_TAG, "Value": own_id}]),
             "secretsmanager:TagResource")
    # B's role: not taken over by tagging, not given a policy, not deleted.
    iam_client = session.client("iam")
    _refused(lambda: iam_client.tag_role(RoleName=role_b["RoleName"], Tags=[{"Key": iam.OWNER_TAG, "Value": own_id}]),
             "iam:TagRole")
    _refused(lambda: iam_client.attach_role_policy(RoleName=role_b["RoleName"],
                                                   PolicyArn=iam.run_secret_reader_arn(ACCT)), "iam:AttachRolePolicy")
    _refused(lambda: iam_client.delete_role(RoleName=role_b["RoleName"]), "iam:DeleteRole")
    # B's network and logs.
    [group_b] = run_b["security_groups"]
    _refused(lambda: session.client("ec2").delete_security_group(GroupId=group_b["GroupId"]),
             "ec2:DeleteSecurityGroup")
    _refused(lambda: session.client("logs").delete_log_group(logGroupName=run_b["log_groups"][0]["logGroupName"]),
             "logs:DeleteLogGroup")
    runners.as_admin()
    # All of B is still there, untouched.
    assert snapshot("runb")["roles"] == run_b["roles"]
    assert secret_arns("runb") == [secret_b]
    assert json.loads(boto3.client("secretsmanager").get_resource_policy(SecretId=secret_b)["ResourcePolicy"]) == (
        iam.secret_read_policy(secret_b, role_b["Arn"]))


def _as_task_of(role_arn: str, endpoint: str) -> dict[str, str]:
    """Credentials of an ECS task whose role is ``role_arn``: the role's session named
    after a task id, as ECS makes it."""
    import boto3

    found = boto3.client("sts").assume_role(RoleArn=role_arn, RoleSessionName="5f0c3e8a9b7d4e21")["Credentials"]
    return {"aws_access_key_id": found["AccessKeyId"], "aws_secret_access_key": found["SecretAccessKey"],
            "aws_session_token": found["SessionToken"]}


@pytest.mark.aws
@pytest.mark.parametrize("same_runner", [False, True], ids=["other runner", "same runner"])
def test_a_task_of_one_run_cannot_read_another_runs_secret(aws, runners, tls, same_runner):
    import boto3
    from botocore.exceptions import ClientError

    from flowrig.certs import delivery

    with local_scheduler(tls, workers=1) as scheduler:
        started = []
        for run_id, runner in (("runx", "runner-x"), ("runy", "runner-x" if same_runner else "runner-y")):
            runners.as_runner(runner)
            started.append(FargateBackend().start(_spec(tls, run_id, scheduler.scheduler_address)))
            runners.as_admin()
        try:
            roles = {run_id: snapshot(run_id)["roles"][0]["Arn"] for run_id in ("runx", "runy")}
            secrets = {run_id: secret_arns(run_id)[0] for run_id in ("runx", "runy")}
            task_of_x = boto3.client("secretsmanager", **_as_task_of(roles["runx"], aws.endpoint))
            enforcement(aws.endpoint, "0")
            try:
                # Its own run's secret: the certificates of that run.
                own = task_of_x.get_secret_value(SecretId=secrets["runx"])["SecretString"]
                assert delivery.decode(own) == tls
                with pytest.raises(ClientError) as info:
                    task_of_x.get_secret_value(SecretId=secrets["runy"])
                assert "not authorized to perform: secretsmanager:GetSecretValue" in str(info.value)
            finally:
                enforcement(aws.endpoint, "inf")
        finally:
            for run_id, cluster in zip(("runx", "runy"), started):
                runners.as_runner("runner-x" if run_id == "runx" or same_runner else "runner-y")
                cluster.close()
                runners.as_admin()


@pytest.mark.aws
@pytest.mark.parametrize("action", ["ecs:RunTask", "secretsmanager:CreateSecret", "ec2:CreateSecurityGroup",
                                    "iam:CreateRole", "ecs:RegisterTaskDefinition"])
def test_without_one_action_the_run_exits_3_naming_it(aws, runners, tls, action):
    run_id = "iam" + action.split(":")[1].lower()[:8]
    policy = printed_policy()
    for statement in policy["Statement"]:
        statement["Action"] = [a_ for a_ in statement["Action"] if a_ != action] or ["sts:GetCallerIdentity"]
    with local_scheduler(tls, workers=1) as scheduler:
        runners.as_runner("runner-less", policy)
        try:
            with pytest.raises(InfrastructureError) as info:
                FargateBackend().start(_spec(tls, run_id, scheduler.scheduler_address))
        finally:
            runners.as_admin()
    assert info.value.exit_code == 3
    message = str(info.value)
    assert "\n" not in message and f"not authorized to perform: {action}" in message, message
    # What was made before the refusal is gone again (task definitions aside: see above).
    after = snapshot(run_id)
    after.pop("task_definitions")
    assert after == {k: [] for k in after}, after
    assert secret_arns(run_id) == []


@pytest.mark.aws
def test_without_the_reader_policy_the_run_exits_2_naming_the_bootstrap_and_makes_nothing(aws, tls):
    before = len(aws.operations())
    with pytest.raises(BadInput) as info:
        FargateBackend().start(_spec(tls, "noread", "tls://127.0.0.1:9"))
    message = str(info.value)
    assert iam.RUN_SECRET_READER_NAME in message and "flowrig aws bootstrap --backend ecs" in message, message
    assert "\n" not in message
    after = snapshot("noread")
    assert after == {k: [] for k in after}, after
    asked = aws.operations()[before:]
    assert "GetPolicy" in asked, asked
    assert [op for op in asked if op.startswith(("Create", "Put", "Register", "Attach"))] == [], asked


def test_create_roles_false_is_bad_input_naming_why(tls):
    with pytest.raises(BadInput) as info:
        FargateBackend().start(_spec(tls, "sharedrole", "tls://127.0.0.1:9", create_roles=False))
    assert "read another's certificates" in str(info.value) and "\n" not in str(info.value)


@pytest.mark.aws
def test_bootstrap_prints_what_it_creates_and_is_idempotent(aws):
    import boto3

    reader = iam.run_secret_reader_arn(ACCT)
    first = CliRunner().invoke(app, ["bootstrap"])
    assert first.exit_code == 0, first.output
    assert f"policy {reader}: created" in first.output
    again = CliRunner().invoke(app, ["bootstrap"])
    assert again.exit_code == 0 and f"policy {reader}: exists, document checked" in again.output
    client = boto3.client("iam")
    [policy] = client.list_policies(Scope="Local")["Policies"]
    assert (policy["Arn"], policy["Path"]) == (reader, "/flowrig/")
    version = client.get_policy_version(PolicyArn=reader, VersionId=policy["DefaultVersionId"])
    assert version["PolicyVersion"]["Document"] == iam.run_secret_reader_policy(ACCT)
    # No role is made: every run makes its own.
    assert [r["RoleName"] for r in client.list_roles()["Roles"] if r["RoleName"].startswith("flowrig")] == []


@pytest.mark.aws
def test_bootstrap_says_the_old_shared_role_is_no_longer_used(aws):
    import boto3

    boto3.client("iam").create_role(RoleName=iam.EXECUTION_ROLE_NAME, Path=iam.ROLE_PATH,
                                    AssumeRolePolicyDocument=json.dumps(iam.trust_policy(ACCT)))
    result = CliRunner().invoke(app, ["bootstrap"])
    assert result.exit_code == 0, result.output
    assert f"role/flowrig/{iam.EXECUTION_ROLE_NAME}: made by an older bootstrap; runs no longer use it" in result.output


@pytest.mark.aws
def test_the_printed_policy_lets_the_runner_read_its_capacity_providers_instance_types(runners, tls):
    from tests.e2e.aws.test_worker_shapes import capacity_provider, push

    cluster, image = capacity_provider("t3.medium", "cpu-cp"), push("one", "amd64")
    runners.as_runner("runner-a")
    with pytest.raises(BadInput) as info:
        ECSBackend().start(ClusterSpec(run_id="iamgpu", size=ClusterSize(1), tls=tls, image=image, options={
            "cluster_arn": cluster, "capacity_provider": "cpu-cp", "worker_gpu": 1, "preflight": False}))
    runners.as_admin()
    # Read, not refused into a warning: the refusal names the instance type.
    assert "runs t3.medium has no GPU but worker_gpu = 1" in str(info.value)
    assert runners.enforcer.refused() == []
    used = statements_used(printed_policy(), runners.enforcer, runners.user_arn("runner-a"))
    assert used["WorkerShape"] and used["WorkerCapacity"], used
