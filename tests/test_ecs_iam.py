"""IAM on the ECS side: the runner's least-privilege policy as a document, and runs
against a moto server that enforces IAM under exactly that policy's actions.

moto evaluates actions only (against ``Resource "*"``; it ignores resources,
conditions and ``iam:PassRole``), so the resources and conditions of the policy are
checked on the document itself.
"""

from __future__ import annotations

import fnmatch
import json
import urllib.request

import pytest
from typer.testing import CliRunner

from flowrig.backends.base import ClusterSpec
from flowrig.backends.ecs import FargateBackend, iam
from flowrig.cli.ecs import app
from flowrig.errors import InfrastructureError
from flowrig.project.sizing import ClusterSize
from tests.test_ecs_backend import IMAGE, local_scheduler, secret_arns, snapshot

ACCOUNT = "123456789012"  # moto's default account


def printed_policy(*args: str) -> dict:
    result = CliRunner().invoke(app, ["iam-policy", "--account", ACCOUNT, *args])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


# --- the document --------------------------------------------------------------------
def test_policy_scopes_every_action_iam_can_scope():
    policy = printed_policy()
    assert policy == iam.runner_policy(iam.Account("aws", ACCOUNT))
    for statement in policy["Statement"]:
        assert statement["Effect"] == "Allow"
        resources = statement["Resource"] if isinstance(statement["Resource"], list) else [statement["Resource"]]
        if resources == ["*"]:
            # Only what IAM authorizes on "*" alone, or narrowed by a condition.
            assert set(statement["Action"]) <= set(iam.UNSCOPED_ACTIONS) or statement.get("Condition"), statement
            continue
        for resource in resources:
            assert resource.startswith("arn:aws:") and f":{ACCOUNT}:" in resource, resource
    by_sid = {s["Sid"]: s for s in policy["Statement"]}
    assert by_sid["Clusters"]["Resource"] == f"arn:aws:ecs:*:{ACCOUNT}:cluster/flowrig-*"
    assert by_sid["Tasks"]["Resource"] == f"arn:aws:ecs:*:{ACCOUNT}:task-definition/flowrig-*:*"
    assert by_sid["RunSecret"]["Resource"] == f"arn:aws:secretsmanager:*:{ACCOUNT}:secret:flowrig/*"
    assert by_sid["Logs"]["Resource"] == f"arn:aws:logs:*:{ACCOUNT}:log-group:/flowrig/*"
    # Roles: only those on flowrig's path, passed only to ECS tasks.
    assert by_sid["PassRolesToTasks"]["Resource"] == f"arn:aws:iam::{ACCOUNT}:role/flowrig/*"
    assert by_sid["PassRolesToTasks"]["Condition"] == {"StringEquals": {"iam:PassedToService": "ecs-tasks.amazonaws.com"}}
    # Security groups are changed and deleted only when flowrig made them.
    assert by_sid["SecurityGroupOwn"]["Condition"] == {"StringEquals": {"aws:ResourceTag/createdBy": "flowrig"}}
    assert by_sid["SecurityGroupTagOnCreate"]["Condition"] == {"StringEquals": {"ec2:CreateAction": "CreateSecurityGroup"}}
    assert set(by_sid["TagOnCreate"]["Condition"]["StringEquals"]["ecs:CreateAction"]) == {
        "CreateCluster", "RegisterTaskDefinition", "RunTask"}
    # By default the runner cannot create or change any role, or attach any policy.
    actions = iam.policy_actions(policy)
    assert not [a for a in actions if a.startswith("iam:") and a not in ("iam:GetRole", "iam:PassRole")]


def test_create_roles_adds_role_rights_on_flowrig_roles_with_the_execution_policy_only():
    policy = printed_policy("--create-roles")
    by_sid = {s["Sid"]: s for s in policy["Statement"]}
    assert "iam:CreateRole" in by_sid["RunRoles"]["Action"]
    assert by_sid["RunRoles"]["Resource"] == f"arn:aws:iam::{ACCOUNT}:role/flowrig/flowrig-*-execution"
    assert by_sid["RunRolesExecutionPolicyOnly"]["Resource"] == by_sid["RunRoles"]["Resource"]
    # IAM's wildcard, as fnmatch reads it: a run's own role matches; the bootstrap role
    # every run shares does not, so a runner cannot detach or delete it.
    pattern = by_sid["RunRoles"]["Resource"]
    assert fnmatch.fnmatchcase(f"arn:aws:iam::{ACCOUNT}:role/flowrig/flowrig-abc123-execution", pattern)
    assert not fnmatch.fnmatchcase(f"arn:aws:iam::{ACCOUNT}:role/flowrig/{iam.EXECUTION_ROLE_NAME}", pattern)
    assert by_sid["RunRolesExecutionPolicyOnly"]["Action"] == ["iam:AttachRolePolicy"]
    assert by_sid["RunRolesExecutionPolicyOnly"]["Condition"] == {"ArnEquals": {
        "iam:PolicyARN": "arn:aws:iam::aws:policy/service-role/AmazonECSTaskExecutionRolePolicy"}}
    assert "iam:PutRolePolicy" not in iam.policy_actions(policy)


def test_trust_policy_names_the_account():
    [statement] = iam.trust_policy(iam.Account("aws", ACCOUNT))["Statement"]
    assert statement["Principal"] == {"Service": "ecs-tasks.amazonaws.com"}
    assert statement["Condition"] == {"StringEquals": {"aws:SourceAccount": ACCOUNT}}


def test_bad_account_is_bad_input():
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-m", "flowrig.cli", "ecs", "iam-policy", "--account", "12"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "12 digits" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


# --- enforced by moto -------------------------------------------------------------------
def _enforce(aws, count: str) -> None:
    """Turn moto's IAM checks on ("0": from the next request) or off ("inf")."""
    request = urllib.request.Request(f"{aws.endpoint}/moto-api/reset-auth", data=count.encode(), method="POST",
                                     headers={"Content-Type": "text/plain"})
    urllib.request.urlopen(request, timeout=30).read()


@pytest.fixture
def runner_user(aws, monkeypatch):
    """After `flowrig ecs bootstrap` (as an administrator): a user whose only policy
    allows the actions of `flowrig ecs iam-policy` on "*". Yields a function that
    makes the user's key the credentials, minus the given actions, with IAM enforced."""
    import boto3

    result = CliRunner().invoke(app, ["bootstrap"])
    assert result.exit_code == 0, result.output
    assert "flowrig-execution" in result.output and "aws:SourceAccount" in result.output
    actions = iam.policy_actions(printed_policy())
    client = boto3.client("iam")
    client.create_user(UserName="flowrig-runner")
    key = client.create_access_key(UserName="flowrig-runner")["AccessKey"]

    def as_runner(without: tuple[str, ...] = ()) -> None:
        allowed = [a for a in actions if a not in without]
        client.put_user_policy(UserName="flowrig-runner", PolicyName="flowrig-runner", PolicyDocument=json.dumps(
            {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": allowed, "Resource": "*"}]}))
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", key["AccessKeyId"])
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", key["SecretAccessKey"])
        _enforce(aws, "0")

    try:
        yield as_runner
    finally:
        _enforce(aws, "inf")


def _spec(tls, run_id, scheduler_address) -> ClusterSpec:
    return ClusterSpec(run_id=run_id, size=ClusterSize(1), tls=tls, image=IMAGE,
                       worker_env={"FLOWRIG_RUN_ID": run_id},
                       options={"scheduler_address": scheduler_address, "provision_timeout": 60})


def _as_admin(monkeypatch, aws) -> None:
    _enforce(aws, "inf")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")


@pytest.mark.aws
def test_a_fargate_run_completes_under_exactly_the_printed_actions(aws, runner_user, tls, monkeypatch):
    with local_scheduler(tls, workers=1) as scheduler:
        runner_user()
        started = FargateBackend().start(_spec(tls, "iam1", scheduler.scheduler_address))
        started.close()
        _as_admin(monkeypatch, aws)
    after = snapshot("iam1")
    assert after == {k: [] for k in after}, after
    assert secret_arns("iam1") == []
    # The run did everything as the runner: tasks, a secret, a security group.
    operations = aws.operations()
    for operation in ("RunTask", "CreateSecret", "CreateSecurityGroup", "GetRole", "DeleteSecret"):
        assert operation in operations


@pytest.mark.aws
@pytest.mark.parametrize("action", ["ecs:RunTask", "secretsmanager:CreateSecret", "ec2:CreateSecurityGroup",
                                    "iam:GetRole", "ecs:RegisterTaskDefinition"])
def test_without_one_action_the_run_exits_3_naming_it(aws, runner_user, tls, monkeypatch, action):
    run_id = "iam" + action.split(":")[1].lower()[:8]
    with local_scheduler(tls, workers=1) as scheduler:
        runner_user(without=(action,))
        with pytest.raises(InfrastructureError) as info:
            FargateBackend().start(_spec(tls, run_id, scheduler.scheduler_address))
        _as_admin(monkeypatch, aws)
    assert info.value.exit_code == 3
    message = str(info.value)
    assert "\n" not in message and f"not authorized to perform: {action}" in message, message
    # What was made before the refusal is gone again.
    after = snapshot(run_id)
    assert after == {k: [] for k in after}, after
    assert secret_arns(run_id) == []


@pytest.mark.aws
def test_bootstrap_prints_what_it_creates_and_is_idempotent(aws):
    import boto3

    first = CliRunner().invoke(app, ["bootstrap"])
    assert first.exit_code == 0, first.output
    arn = f"arn:aws:iam::{ACCOUNT}:role/flowrig/flowrig-execution"
    assert f"role {arn}: created" in first.output
    again = CliRunner().invoke(app, ["bootstrap"])
    assert again.exit_code == 0 and f"role {arn}: exists" in again.output
    client = boto3.client("iam")
    roles = [r for r in client.list_roles()["Roles"] if r["RoleName"].startswith("flowrig")]
    assert [(r["RoleName"], r["Path"]) for r in roles] == [("flowrig-execution", "/flowrig/")]
    [trust] = roles[0]["AssumeRolePolicyDocument"]["Statement"]
    assert trust["Condition"] == {"StringEquals": {"aws:SourceAccount": ACCOUNT}}
    attached = client.list_attached_role_policies(RoleName="flowrig-execution")["AttachedPolicies"]
    assert [p["PolicyArn"] for p in attached] == [
        "arn:aws:iam::aws:policy/service-role/AmazonECSTaskExecutionRolePolicy"]
