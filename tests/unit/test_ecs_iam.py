"""IAM of the ECS backends as documents: the printed policy, statement by statement, under
the evaluator of tests/iam_eval.py (AWS's documented semantics, checked in
tests/unit/test_iam_eval.py): each attack of a runner on another run's resources is
refused (``ATTACKS``), and what a run does itself is allowed. Runs under exactly that
policy against moto's enforced IAM: tests/e2e/aws/test_ecs_iam.py.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import pytest
from typer.testing import CliRunner

from flowrig.backends.aws import policies as iam
from flowrig.backends.aws.runner_policy import runner_policy
from flowrig.cli.ecs import app
from tests.iam_eval import ALLOW, Request, evaluate
from tests.run_support import invoke

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
    Attack("read the log lines of a stream outside flowrig's log groups", "logs:GetLogEvents",
           a("logs:log-group:/aws/lambda/payments:log-stream:2026/12/07/abc"), {}),
    Attack("read a flowrig log group's stream of another writer's", "logs:GetLogEvents",
           a("logs:log-group:/flowrig/runb:log-stream:payments/app/0123"), {}),
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
    # A stopped worker's last lines, for its stop's reason.
    ("logs:GetLogEvents", a("logs:log-group:/flowrig/runa:log-stream:flowrig-runa/dask-worker/0123"), {}),
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
    # The preflight checks only read (the network, the image, the runner's own rights, quotas), and so
    # do the checks of the workers' shape (capacity provider, instance types).
    free = {"Describe", "WhoAmI", "ListTasks", "TagOnCreate", "SecurityGroupInVpc", "SecurityGroupTagOnCreate",
            "FindRunSecretReader", "PreflightNetwork", "PreflightImage", "PreflightOwnRights", "PreflightRolePath",
            "PreflightQuotas", "WorkerShape", "WorkerCapacity", "RoleLogLines"}
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
    # IAM has no tag condition for log streams: the read of a role's last lines is scoped by name.
    assert by_sid["RoleLogLines"]["Action"] == ["logs:GetLogEvents"]
    assert by_sid["RoleLogLines"]["Resource"] == f"arn:aws:logs:*:{ACCOUNT}:log-group:/flowrig/*:log-stream:flowrig-*/*"


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
    done = invoke("ecs", "iam-policy", "--account", "12")
    assert done.returncode == 2 and "12 digits" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


def test_a_caller_id_no_tag_can_hold_is_bad_input():
    assert iam.check_owner(RUNNER_A) == RUNNER_A
    with pytest.raises(ValueError, match="cannot be a tag value"):
        iam.check_owner("AROAEXAMPLE:alice,bob")


