"""IAM of the ECS backends: one run can never reach another.

Two layers. The documents themselves, statement by statement, under the evaluator of
tests/iam_eval.py (AWS's documented semantics, checked in tests/test_iam_eval.py): each
attack of a runner on another run's resources is refused (``ATTACKS``), and what a run
does itself is allowed. Then runs against a moto server whose IAM checks are those of
AWS for the operations flowrig makes (tests/iam_support.py): a user holding exactly the
printed policy runs a whole fargate and ecs run, and cannot register outside its
families, pass a role that is not its own run's, or touch another runner's run; a task
holding one run's execution role cannot read another run's secret.
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass
from typing import Any

import pytest
from typer.testing import CliRunner

from flowrig.backends.aws import policies as iam
from flowrig.backends.aws.ecs import ECSBackend, FargateBackend
from flowrig.backends.aws.runner_policy import runner_policy
from flowrig.backends.base import ClusterSpec
from flowrig.cli.ecs import app
from flowrig.errors import BadInput, InfrastructureError
from flowrig.project.sizing import ClusterSize
from tests.iam_eval import ALLOW, Request, evaluate
from tests.iam_support import enforcement, statements_used
from tests.test_ecs_backend import IMAGE, local_scheduler, secret_arns, snapshot

pytestmark = pytest.mark.filterwarnings("ignore:Scheduler already contains a plugin")

ACCOUNT = "123456789012"  # moto's default account
ACCT = iam.Account("aws", ACCOUNT)
#: Two runners, as IAM names them: two ECS runner tasks of one runner role.
RUNNER_A = "AROAEXAMPLERUNNER:0a1b2c3d4e5f"
RUNNER_B = "AROAEXAMPLERUNNER:9f8e7d6c5b4a"


def printed_policy(*args: str) -> dict:
    result = CliRunner().invoke(app, ["iam-policy", "--account", ACCOUNT, *args])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def a(resource: str) -> str:
    return f"arn:aws:{resource.split(':', 1)[0]}:{'' if resource.startswith('iam') else 'us-east-1'}:{ACCOUNT}:" \
           f"{resource.split(':', 1)[1]}"


def owned(owner: str, prefix: str = "aws:ResourceTag") -> dict[str, Any]:
    """The tags a run's resource carries (its owner, and what every run's carries)."""
    return {f"{prefix}/{iam.OWNER_TAG}": owner, f"{prefix}/createdBy": "flowrig",
            f"{prefix}/{iam.RUN_TAG}": "runb" if owner == RUNNER_B else "runa"}


def made(owner: str | None, **more: str) -> dict[str, Any]:
    tags = {**({iam.OWNER_TAG: owner} if owner else {}), **more}
    return {**{f"aws:RequestTag/{k}": v for k, v in tags.items()}, "aws:TagKeys": list(tags)}


def decide(policy: dict, action: str, resource: str, context: dict[str, Any], caller: str = RUNNER_A) -> str:
    request = Request(action, resource, {"aws:userid": caller, **context})
    return evaluate(request, [policy])


# --- the documents, statement by statement --------------------------------------------------
@dataclass(frozen=True)
class Attack:
    """Something runner A tries against run B (or outside flowrig), which must be refused."""

    name: str
    action: str
    resource: str
    context: dict[str, Any]


ROLE_B = a("iam:role/flowrig/flowrig-runb-execution")
SECRET_B = a("secretsmanager:secret:flowrig/runb/tls-AbCdEf")
DEFINITION_B = a("ecs:task-definition/flowrig-runb-worker:1")
#: What the finding listed, and what follows from it: each must be refused.
ATTACKS = [
    Attack("register a task definition outside flowrig's families", "ecs:RegisterTaskDefinition",
           a("ecs:task-definition/payments-api:7"), made(RUNNER_A)),
    Attack("register a task definition claiming another runner", "ecs:RegisterTaskDefinition",
           a("ecs:task-definition/flowrig-x-worker:1"), made(RUNNER_B)),
    Attack("register a task definition owned by nobody", "ecs:RegisterTaskDefinition",
           a("ecs:task-definition/flowrig-x-worker:1"), made(None)),
    Attack("pass the shared execution role of older bootstraps to a task", "iam:PassRole",
           a(f"iam:role/flowrig/{iam.EXECUTION_ROLE_NAME}"), {"iam:PassedToService": iam.ECS_TASKS}),
    Attack("pass another run's execution role (the reader of its secret) to a task", "iam:PassRole", ROLE_B,
           {"iam:PassedToService": iam.ECS_TASKS, **owned(RUNNER_B)}),
    Attack("pass its own run role to another service", "iam:PassRole",
           a("iam:role/flowrig/flowrig-runa-execution"), {"iam:PassedToService": "lambda.amazonaws.com",
                                                         **owned(RUNNER_A)}),
    Attack("run another run's task definition (it names that run's secret and role)", "ecs:RunTask",
           DEFINITION_B, {**owned(RUNNER_B), **made(RUNNER_A)}),
    Attack("deregister any task definition", "ecs:DeregisterTaskDefinition", "*", {}),
    Attack("delete another run's task definition", "ecs:DeleteTaskDefinitions", DEFINITION_B, owned(RUNNER_B)),
    Attack("rewrite another run's secret policy", "secretsmanager:PutResourcePolicy", SECRET_B,
           {**owned(RUNNER_B), "secretsmanager:BlockPublicPolicy": True}),
    Attack("remove another run's secret policy", "secretsmanager:DeleteResourcePolicy", SECRET_B, owned(RUNNER_B)),
    Attack("delete another run's secret", "secretsmanager:DeleteSecret", SECRET_B, owned(RUNNER_B)),
    Attack("read another run's secret", "secretsmanager:GetSecretValue", SECRET_B, owned(RUNNER_B)),
    Attack("claim another run's secret by tagging it", "secretsmanager:TagResource", SECRET_B,
           {**owned(RUNNER_B), **made(RUNNER_A)}),
    Attack("untag another run's secret", "secretsmanager:UntagResource", SECRET_B,
           {**owned(RUNNER_B), "aws:TagKeys": [iam.OWNER_TAG]}),
    Attack("write a public policy on its own secret", "secretsmanager:PutResourcePolicy",
           a("secretsmanager:secret:flowrig/runa/tls-AbCdEf"),
           {**owned(RUNNER_A), "secretsmanager:BlockPublicPolicy": False}),
    Attack("stop another run's task", "ecs:StopTask", a("ecs:task/flowrig-runb/0123456789abcdef"), owned(RUNNER_B)),
    Attack("describe another run's task (its addresses)", "ecs:DescribeTasks",
           a("ecs:task/flowrig-runb/0123456789abcdef"), owned(RUNNER_B)),
    Attack("delete another run's cluster", "ecs:DeleteCluster", a("ecs:cluster/flowrig-runb"), owned(RUNNER_B)),
    Attack("open another run's security group", "ec2:AuthorizeSecurityGroupIngress",
           a("ec2:security-group/sg-0b"), owned(RUNNER_B)),
    Attack("delete another run's log group", "logs:DeleteLogGroup", a("logs:log-group:/flowrig/runb"),
           owned(RUNNER_B)),
    Attack("retag another run's cluster's lease", "ecs:TagResource", a("ecs:cluster/flowrig-runb"),
           {**owned(RUNNER_B), "aws:TagKeys": ["flowrig-lease-until"]}),
    Attack("give its own run role another policy", "iam:AttachRolePolicy", a("iam:role/flowrig/flowrig-runa-execution"),
           {**owned(RUNNER_A), "iam:PolicyARN": "arn:aws:iam::aws:policy/AdministratorAccess"}),
    Attack("give another run's role a policy", "iam:AttachRolePolicy", ROLE_B,
           {**owned(RUNNER_B), "iam:PolicyARN": iam.execution_policy_arn("aws")}),
    Attack("write an inline policy on a run role", "iam:PutRolePolicy", a("iam:role/flowrig/flowrig-runa-execution"),
           owned(RUNNER_A)),
    Attack("make a run role owned by another runner", "iam:CreateRole", a("iam:role/flowrig/flowrig-x-execution"),
           made(RUNNER_B)),
    Attack("take over another run's role by tagging it", "iam:TagRole", ROLE_B, {**owned(RUNNER_B),
                                                                                **made(RUNNER_A)}),
    Attack("delete another run's role", "iam:DeleteRole", ROLE_B, owned(RUNNER_B)),
    Attack("change a run role's trust", "iam:UpdateAssumeRolePolicy", a("iam:role/flowrig/flowrig-runa-execution"),
           owned(RUNNER_A)),
]


@pytest.mark.parametrize("attack", ATTACKS, ids=[attack.name for attack in ATTACKS])
def test_the_printed_policy_refuses_each_attack_on_another_run(attack):
    policy = printed_policy()
    assert decide(policy, attack.action, attack.resource, attack.context) != ALLOW, attack


#: What a run does itself, as the caller that made it: each must stay allowed.
OWN = [
    ("ecs:RegisterTaskDefinition", a("ecs:task-definition/flowrig-runa-worker:1"), made(RUNNER_A, **{
        iam.RUN_TAG: "runa"})),
    ("iam:PassRole", a("iam:role/flowrig/flowrig-runa-execution"), {"iam:PassedToService": iam.ECS_TASKS,
                                                                    **owned(RUNNER_A)}),
    ("ecs:RunTask", a("ecs:task-definition/flowrig-runa-worker:1"), {**owned(RUNNER_A), **made(RUNNER_A)}),
    ("ecs:StopTask", a("ecs:task/flowrig-runa/0123"), owned(RUNNER_A)),
    ("ecs:TagResource", a("ecs:cluster/flowrig-runa"), {**owned(RUNNER_A), "aws:TagKeys": ["flowrig-lease-until"]}),
    ("secretsmanager:CreateSecret", a("secretsmanager:secret:flowrig/runa/tls-AbCdEf"), made(RUNNER_A)),
    ("secretsmanager:TagResource", a("secretsmanager:secret:flowrig/runa/tls-AbCdEf"), made(RUNNER_A)),
    ("secretsmanager:PutResourcePolicy", a("secretsmanager:secret:flowrig/runa/tls-AbCdEf"),
     {**owned(RUNNER_A), "secretsmanager:BlockPublicPolicy": True}),
    ("secretsmanager:DeleteSecret", a("secretsmanager:secret:flowrig/runa/tls-AbCdEf"), owned(RUNNER_A)),
    ("iam:CreateRole", a("iam:role/flowrig/flowrig-runa-execution"), made(RUNNER_A)),
    ("iam:TagRole", a("iam:role/flowrig/flowrig-runa-execution"), made(RUNNER_A)),
    ("iam:AttachRolePolicy", a("iam:role/flowrig/flowrig-runa-execution"),
     {**owned(RUNNER_A), "iam:PolicyARN": iam.run_secret_reader_arn(ACCT)}),
    ("iam:DeleteRole", a("iam:role/flowrig/flowrig-runa-execution"), owned(RUNNER_A)),
    ("ec2:DeleteSecurityGroup", a("ec2:security-group/sg-0a"), owned(RUNNER_A)),
    ("logs:DeleteLogGroup", a("logs:log-group:/flowrig/runa"), owned(RUNNER_A)),
]


@pytest.mark.parametrize("action, resource, context", OWN, ids=[f"{a_}" for a_, _, _ in OWN])
def test_the_printed_policy_allows_a_run_its_own_resources(action, resource, context):
    assert decide(printed_policy(), action, resource, context) == ALLOW


def test_deregistering_is_only_granted_when_asked_and_then_on_everything():
    assert decide(printed_policy(), iam.DEREGISTER_ACTION, "*", {}) != ALLOW
    opted = printed_policy("--deregister-task-definitions")
    # IAM has no resource type for it: granting it means granting it on every task definition.
    assert decide(opted, iam.DEREGISTER_ACTION, "*", {}) == ALLOW
    assert decide(opted, "ecs:DeleteTaskDefinitions", DEFINITION_B, owned(RUNNER_B)) != ALLOW
    assert decide(opted, "ecs:DeleteTaskDefinitions", a("ecs:task-definition/flowrig-runa-worker:1"),
                  owned(RUNNER_A)) == ALLOW


def test_every_statement_on_an_existing_resource_asks_for_the_callers_own_tag():
    """Statement by statement: what creates needs the caller's id in the request's tags,
    what changes, uses or passes an existing resource needs it on the resource."""
    creating = {"ecs:CreateCluster", "ecs:RegisterTaskDefinition", "ec2:CreateSecurityGroup", "logs:CreateLogGroup",
                "secretsmanager:CreateSecret", "iam:CreateRole"}
    free = {"Describe", "WhoAmI", "ListTasks", "TagOnCreate", "SecurityGroupInVpc", "SecurityGroupTagOnCreate",
            "FindRunSecretReader"}
    for statement in printed_policy()["Statement"]:
        if statement["Sid"] in free:
            continue
        condition = json.dumps(statement["Condition"])
        actions = set(statement["Action"])
        if actions <= creating:
            assert f'"aws:RequestTag/{iam.OWNER_TAG}": "${{aws:userid}}"' in condition, statement
        else:
            assert f'"aws:ResourceTag/{iam.OWNER_TAG}": "${{aws:userid}}"' in condition, statement
    by_sid = {s["Sid"]: s for s in printed_policy()["Statement"]}
    # What is free of the owner tag reads, lists, or tags only while creating.
    assert set(by_sid["ListTasks"]["Action"]) == {"ecs:ListTasks"}
    assert by_sid["TagOnCreate"]["Condition"] == {"StringEquals": {"ecs:CreateAction": [
        "CreateCluster", "RegisterTaskDefinition", "RunTask"]}}
    assert by_sid["FindRunSecretReader"]["Resource"] == iam.run_secret_reader_arn(ACCT)


def test_the_policy_scopes_every_resource_to_the_account_and_flowrigs_names():
    policy = printed_policy()
    assert policy == runner_policy("ecs", ACCT)
    for statement in policy["Statement"]:
        assert statement["Effect"] == "Allow"
        resources = statement["Resource"] if isinstance(statement["Resource"], list) else [statement["Resource"]]
        if resources == ["*"]:
            assert set(statement["Action"]) <= set(iam.UNSCOPED_ACTIONS) or statement.get("Condition"), statement
            continue
        for resource in resources:
            assert resource.startswith("arn:aws:") and f":{ACCOUNT}:" in resource, resource
    actions = iam.policy_actions(policy)
    assert iam.DEREGISTER_ACTION not in actions
    assert not {"iam:PutRolePolicy", "iam:UpdateAssumeRolePolicy", "secretsmanager:GetSecretValue",
                "secretsmanager:DeleteResourcePolicy", "secretsmanager:UntagResource", "ecs:UntagResource",
                "ecs:ExecuteCommand", "iam:UntagRole"} & set(actions)


def test_a_run_role_reads_its_own_runs_secret_and_no_other():
    reader = iam.run_secret_reader_policy(ACCT)
    role_a = {"aws:PrincipalTag/flowrig-run-id": "runa", f"aws:PrincipalTag/{iam.OWNER_TAG}": RUNNER_A}
    own = a("secretsmanager:secret:flowrig/runa/tls-AbCdEf")
    assert evaluate(Request("secretsmanager:GetSecretValue", own, {**role_a, **owned(RUNNER_A)}), [reader]) == ALLOW
    # Another run's secret, whoever made it.
    for owner in (RUNNER_A, RUNNER_B):
        assert evaluate(Request("secretsmanager:GetSecretValue", SECRET_B, {**role_a, **owned(owner)}),
                        [reader]) != ALLOW
    # A role tagged with another run's id by its own runner still meets that run's owner.
    forged = {"aws:PrincipalTag/flowrig-run-id": "runb", f"aws:PrincipalTag/{iam.OWNER_TAG}": RUNNER_A}
    assert evaluate(Request("secretsmanager:GetSecretValue", SECRET_B, {**forged, **owned(RUNNER_B)}),
                    [reader]) != ALLOW
    # And the secret's own policy denies every principal but its run's role.
    deny = iam.secret_read_policy(SECRET_B, ROLE_B)
    assert evaluate(Request("secretsmanager:GetSecretValue", SECRET_B, {"aws:PrincipalArn": ROLE_B},
                            (ROLE_B,)), [{"Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}],
                    resource_policy=deny) == ALLOW
    other = a("iam:role/flowrig/flowrig-runa-execution")
    assert evaluate(Request("secretsmanager:GetSecretValue", SECRET_B, {"aws:PrincipalArn": other}, (other,)),
                    [{"Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}],
                    resource_policy=deny) != ALLOW


def test_trust_policy_names_the_account():
    [statement] = iam.trust_policy(ACCT)["Statement"]
    assert statement["Principal"] == {"Service": "ecs-tasks.amazonaws.com"}
    assert statement["Condition"] == {"StringEquals": {"aws:SourceAccount": ACCOUNT}}


def test_bad_account_is_bad_input():
    done = subprocess.run([sys.executable, "-m", "flowrig.cli", "ecs", "iam-policy", "--account", "12"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "12 digits" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


def test_a_caller_id_no_tag_can_hold_is_bad_input():
    assert iam.check_owner(RUNNER_A) == RUNNER_A
    with pytest.raises(ValueError, match="cannot be a tag value"):
        iam.check_owner("AROAEXAMPLE:alice,bob")


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
                       options={"scheduler_address": scheduler_address, "provision_timeout": 60, **options})


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
    assert [sid for sid, was in used.items() if not was] == [], used
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
