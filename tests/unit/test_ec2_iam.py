"""IAM of the ``ec2`` backend as documents: the runner's least-privilege policy, statement by
statement under the evaluator of tests/iam_eval.py (refused attacks on another run, roles and
profiles, the bootstrap boundary, the one readable SSM parameter), and ``flowrig aws
iam-policy`` / ``bootstrap`` bad input in process. Runs under exactly the printed policy
against moto's enforced IAM: tests/e2e/aws/test_ec2_iam.py.
"""

from __future__ import annotations

import fnmatch
import json

import pytest
from typer.testing import CliRunner

from flowrig.backends.aws import policies as iam
from flowrig.backends.aws import runner_policy as ec2_iam
from flowrig.backends.aws.ec2.cloud import UBUNTU_PARAMETER
from flowrig.cli import app
from tests.iam_eval import ALLOW, Request, evaluate
from tests.run_support import invoke
from tests.unit.test_ecs_iam import ACCOUNT

pytestmark = pytest.mark.filterwarnings("ignore:Scheduler already contains a plugin")


#: The statements of what the preflight checks read (free of the owner tag: nothing is changed).
PREFLIGHT_SIDS = {"PreflightNetwork", "PreflightImage", "PreflightOwnRights", "PreflightRolePath", "PreflightQuotas"}
#: Actions that change something (anything but reading).
_READING = ("Describe", "Get", "List")
#: The permissions boundary `flowrig aws bootstrap --backend ec2` makes.
BOUNDARY = f"arn:aws:iam::{ACCOUNT}:policy/flowrig/flowrig-instance-boundary"


def printed_policy(*args: str) -> dict:
    result = CliRunner().invoke(app, ["aws", "iam-policy", "--account", ACCOUNT, *args])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def _resources(statement: dict) -> list[str]:
    resource = statement["Resource"]
    return resource if isinstance(resource, list) else [resource]


# --- the document --------------------------------------------------------------------
def test_the_ec2_policy_scopes_every_mutating_action_to_flowrigs_names_and_the_callers_own():
    policy = printed_policy("--backend", "ec2")
    assert policy == ec2_iam.runner_policy("ec2", iam.Account("aws", ACCOUNT))
    for statement in policy["Statement"]:
        assert statement["Effect"] == "Allow"
        resources = _resources(statement)
        if resources == ["*"]:
            # EC2's Describe actions have no resource types: IAM takes "*" only. So does
            # GetCallerIdentity, which AWS answers for any principal anyway.
            if statement["Action"] == [ec2_iam.WHOAMI_ACTION]:
                continue
            # The preflight checks' reads are Describe actions on "*" too.
            unscoped = {*ec2_iam.EC2_UNSCOPED_ACTIONS, *ec2_iam.EC2_PREFLIGHT_DESCRIBE_ACTIONS}
            assert set(statement["Action"]) <= unscoped, statement
            assert all(a.split(":")[1].startswith("Describe") for a in statement["Action"])
            continue
        for resource in resources:
            assert resource.startswith("arn:aws:") and "*" != resource, resource
            # The account's own resources, or a publisher's (AMIs, snapshots, SSM public
            # parameters), whose ARNs carry no account of ours.
            assert f":{ACCOUNT}:" in resource or resource.startswith(
                ("arn:aws:ec2:*::image/", "arn:aws:ec2:*::snapshot/", "arn:aws:ssm:*:*:parameter/aws/service/")
            ), resource
    actions = iam.policy_actions(policy)
    mutating = [a for a in actions if not a.split(":")[1].startswith(_READING)]
    assert "ec2:RunInstances" in mutating and "iam:PassRole" in mutating
    for statement in policy["Statement"]:
        if set(statement["Action"]) & set(mutating):
            assert "*" not in _resources(statement), statement
    # The runner pulls no image itself: the VM's own role does. Preflight reads whether the
    # image exists and its manifest's platforms (no layer). Of STS, it only asks who it is.
    assert [a for a in actions if a.startswith("ecr:")] == ["ecr:BatchGetImage", "ecr:DescribeImages"], actions
    assert not [a for a in actions if a.startswith(("ecr:GetDownloadUrlForLayer", "ecs:", "logs:", "kms:"))], actions
    assert [a for a in actions if a.startswith("sts:")] == ["sts:GetCallerIdentity"]
    assert not {"secretsmanager:GetSecretValue", "secretsmanager:DeleteResourcePolicy", "iam:UntagRole",
                "iam:UntagInstanceProfile", "ec2:DeleteTags"} & set(actions)


def test_every_statement_on_an_existing_resource_asks_for_the_callers_own_tag():
    creating = {"ec2:CreateSecurityGroup", "ec2:RunInstances", "iam:CreateRole", "iam:CreateInstanceProfile",
                "secretsmanager:CreateSecret"}
    # The preflight checks only read (the network, the image, the runner's own rights, quotas).
    free = {"Describe", "WhoAmI", "UbuntuImageParameter", "SecurityGroupInVpc", "InstancesUse", "TagOnCreate",
            "FindInstanceBoundary", *PREFLIGHT_SIDS}
    for statement in printed_policy("--backend", "ec2")["Statement"]:
        if statement["Sid"] in free:
            continue
        condition = json.dumps(statement["Condition"])
        if set(statement["Action"]) <= creating and statement["Sid"] != "InstancesInOwnGroup":
            assert f'"aws:RequestTag/{iam.OWNER_TAG}": "${{aws:userid}}"' in condition, statement
        else:
            assert f'"aws:ResourceTag/{iam.OWNER_TAG}": "${{aws:userid}}"' in condition, statement
    by_sid = {s["Sid"]: s for s in printed_policy("--backend", "ec2")["Statement"]}
    # What is free of the owner tag: reads, and what a new instance is made in and from.
    assert by_sid["InstancesUse"]["Action"] == ["ec2:RunInstances"]
    assert not [r for r in _resources(by_sid["InstancesUse"]) if "instance/" in r or "security-group" in r]
    assert by_sid["TagOnCreate"]["Condition"] == {
        "StringEquals": {"ec2:CreateAction": ["CreateSecurityGroup", "RunInstances"]}}
    # Every ec2:CreateTags statement has a condition: no tagging of others' resources.
    for statement in by_sid.values():
        if "ec2:CreateTags" in statement["Action"]:
            assert statement.get("Condition"), statement


RUNNER_A = "AROAEXAMPLERUNNER:0a1b2c3d4e5f"
RUNNER_B = "AROAEXAMPLERUNNER:9f8e7d6c5b4a"


def _owned(owner: str) -> dict:
    return {f"aws:ResourceTag/{iam.OWNER_TAG}": owner, "aws:ResourceTag/createdBy": "flowrig",
            "aws:ResourceTag/flowrig-run-id": "runb" if owner == RUNNER_B else "runa"}


def _made(owner: str | None) -> dict:
    tags = {iam.OWNER_TAG: owner} if owner else {}
    tags["flowrig-run-id"] = "x"
    return {**{f"aws:RequestTag/{k}": v for k, v in tags.items()}, "aws:TagKeys": list(tags)}


_ROLE_B = f"arn:aws:iam::{ACCOUNT}:role/flowrig/flowrig-runb-instance"
_PROFILE_B = f"arn:aws:iam::{ACCOUNT}:instance-profile/flowrig/flowrig-runb-instance"
_SECRET_B = f"arn:aws:secretsmanager:us-east-1:{ACCOUNT}:secret:flowrig/runb/tls-AbCdEf"
#: What runner A tries against run B: each must be refused.
EC2_ATTACKS = [
    ("pass another run's instance role to EC2", "iam:PassRole", _ROLE_B,
     {"iam:PassedToService": "ec2.amazonaws.com", **_owned(RUNNER_B)}),
    ("put another run's role in its own profile's place", "iam:AddRoleToInstanceProfile", _PROFILE_B,
     _owned(RUNNER_B)),
    ("take another run's role out of its profile", "iam:RemoveRoleFromInstanceProfile", _PROFILE_B,
     _owned(RUNNER_B)),
    ("write another run's role's policy", "iam:PutRolePolicy", _ROLE_B,
     {**_owned(RUNNER_B), "iam:PermissionsBoundary": BOUNDARY}),
    ("delete another run's role", "iam:DeleteRole", _ROLE_B, _owned(RUNNER_B)),
    ("make an instance role claiming another runner", "iam:CreateRole",
     f"arn:aws:iam::{ACCOUNT}:role/flowrig/flowrig-x-instance",
     {**_made(RUNNER_B), "iam:PermissionsBoundary": BOUNDARY}),
    ("make an instance role without the boundary", "iam:CreateRole",
     f"arn:aws:iam::{ACCOUNT}:role/flowrig/flowrig-x-instance", _made(RUNNER_A)),
    ("take over another run's role by tagging it", "iam:TagRole", _ROLE_B, {**_owned(RUNNER_B), **_made(RUNNER_A)}),
    ("terminate another run's instance", "ec2:TerminateInstances",
     f"arn:aws:ec2:us-east-1:{ACCOUNT}:instance/i-0b", _owned(RUNNER_B)),
    ("start an instance in another run's security group", "ec2:RunInstances",
     f"arn:aws:ec2:us-east-1:{ACCOUNT}:security-group/sg-0b", _owned(RUNNER_B)),
    ("start an instance claiming another runner", "ec2:RunInstances",
     f"arn:aws:ec2:us-east-1:{ACCOUNT}:instance/*", _made(RUNNER_B)),
    ("start an instance owned by nobody", "ec2:RunInstances", f"arn:aws:ec2:us-east-1:{ACCOUNT}:instance/*",
     _made(None)),
    ("open another run's security group", "ec2:AuthorizeSecurityGroupIngress",
     f"arn:aws:ec2:us-east-1:{ACCOUNT}:security-group/sg-0b", _owned(RUNNER_B)),
    ("rewrite another run's secret policy", "secretsmanager:PutResourcePolicy", _SECRET_B,
     {**_owned(RUNNER_B), "secretsmanager:BlockPublicPolicy": True}),
    ("delete another run's secret", "secretsmanager:DeleteSecret", _SECRET_B, _owned(RUNNER_B)),
]


@pytest.mark.parametrize("name, action, resource, context", EC2_ATTACKS, ids=[a[0] for a in EC2_ATTACKS])
def test_the_ec2_policy_refuses_each_attack_on_another_run(name, action, resource, context):
    request = Request(action, resource, {"aws:userid": RUNNER_A, **context})
    assert evaluate(request, [printed_policy("--backend", "ec2")]) != ALLOW, name


def test_an_instance_role_reads_its_own_runs_secret_and_no_other_whatever_its_policy_says():
    boundary = iam.instance_boundary_policy(iam.Account("aws", ACCOUNT))
    # Even a role whose runner wrote it every secret of the account...
    everything = {"Statement": [{"Effect": "Allow", "Action": "secretsmanager:GetSecretValue", "Resource": "*"}]}
    role_a = {"aws:PrincipalTag/flowrig-run-id": "runa", f"aws:PrincipalTag/{iam.OWNER_TAG}": RUNNER_A}
    own = _SECRET_B.replace("runb", "runa")
    read = "secretsmanager:GetSecretValue"
    assert evaluate(Request(read, own, {**role_a, **_owned(RUNNER_A)}), [everything], boundary=boundary) == ALLOW
    # ...reads no other run's: not another runner's, not another of its own runner's.
    for owner in (RUNNER_A, RUNNER_B):
        assert evaluate(Request(read, _SECRET_B, {**role_a, **_owned(owner)}), [everything],
                        boundary=boundary) != ALLOW
    forged = {"aws:PrincipalTag/flowrig-run-id": "runb", f"aws:PrincipalTag/{iam.OWNER_TAG}": RUNNER_A}
    assert evaluate(Request(read, _SECRET_B, {**forged, **_owned(RUNNER_B)}), [everything],
                    boundary=boundary) != ALLOW


def test_roles_and_profiles_are_the_runs_own_and_passed_to_ec2_only():
    by_sid = {s["Sid"]: s for s in printed_policy("--backend", "ec2")["Statement"]}
    role = f"arn:aws:iam::{ACCOUNT}:role/flowrig/flowrig-*-instance"
    assert by_sid["InstanceRole"]["Resource"] == role
    assert by_sid["InstanceProfile"]["Resource"] == f"arn:aws:iam::{ACCOUNT}:instance-profile/flowrig/flowrig-*-instance"
    assert by_sid["PassInstanceRoleToEC2"] == {
        "Sid": "PassInstanceRoleToEC2", "Effect": "Allow", "Action": ["iam:PassRole"], "Resource": role,
        "Condition": {"StringEquals": {"iam:PassedToService": "ec2.amazonaws.com",
                                       f"aws:ResourceTag/{iam.OWNER_TAG}": "${aws:userid}"}}}
    # IAM's wildcard, as fnmatch reads it: a run's role matches; the old shared role and
    # a project's own roles (off flowrig's path) do not.
    assert fnmatch.fnmatchcase(f"arn:aws:iam::{ACCOUNT}:role/flowrig/flowrig-abc123-instance", role)
    assert not fnmatch.fnmatchcase(f"arn:aws:iam::{ACCOUNT}:role/flowrig/{iam.EXECUTION_ROLE_NAME}", role)
    assert not fnmatch.fnmatchcase(f"arn:aws:iam::{ACCOUNT}:role/flowrig-abc123-instance", role)
    iam_statements = [s for s in by_sid.values() if any(a.startswith("iam:") for a in s["Action"])]
    # Besides, preflight's reads: simulating the runner's own rights, and a role's path.
    assert {s["Sid"] for s in iam_statements} == {
        "InstanceRoleCreate", "InstanceRolePolicy", "InstanceRoleTag", "InstanceRole", "FindInstanceBoundary",
        "InstanceProfileCreate", "InstanceProfileTag", "InstanceProfile", "PassInstanceRoleToEC2",
        "PreflightOwnRights", "PreflightRolePath"}
    assert {a for s in iam_statements if s["Sid"].startswith("Preflight") for a in s["Action"]} == {
        "iam:SimulatePrincipalPolicy", "iam:GetRole"}
    iam_statements = [s for s in iam_statements if not s["Sid"].startswith("Preflight")]
    # No managed policy is ever attached to an instance role.
    actions = iam.policy_actions({"Statement": iam_statements})
    assert "iam:AttachRolePolicy" not in actions and "iam:DetachRolePolicy" not in actions
    assert by_sid["RunSecretCreate"]["Resource"] == f"arn:aws:secretsmanager:*:{ACCOUNT}:secret:flowrig/*"


def test_instance_roles_are_made_and_given_policies_only_with_the_bootstrap_boundary():
    policy = printed_policy("--backend", "ec2")
    by_sid = {s["Sid"]: s for s in policy["Statement"]}
    role = f"arn:aws:iam::{ACCOUNT}:role/flowrig/flowrig-*-instance"
    assert by_sid["InstanceRoleCreate"] == {
        "Sid": "InstanceRoleCreate", "Effect": "Allow", "Action": ["iam:CreateRole"], "Resource": role,
        "Condition": {"StringEquals": {"iam:PermissionsBoundary": BOUNDARY,
                                       f"aws:RequestTag/{iam.OWNER_TAG}": "${aws:userid}"}}}
    assert by_sid["InstanceRolePolicy"]["Condition"] == {"StringEquals": {
        "iam:PermissionsBoundary": BOUNDARY, f"aws:ResourceTag/{iam.OWNER_TAG}": "${aws:userid}"}}
    assert iam.instance_boundary_arn(iam.Account("aws", ACCOUNT)) == BOUNDARY
    # Nowhere else, and never the calls that lift or change a boundary, or the boundary itself.
    for statement in policy["Statement"]:
        if statement["Sid"] not in ("InstanceRoleCreate", "InstanceRolePolicy"):
            assert not {"iam:CreateRole", "iam:PutRolePolicy"} & set(statement["Action"]), statement
    actions = iam.policy_actions(policy)
    assert not set(ec2_iam.BOUNDARY_CHANGES) & set(actions)
    assert not [a for a in actions if "PermissionsBoundary" in a or "PolicyVersion" in a], actions
    assert not {"iam:CreatePolicy", "iam:DeletePolicy", "iam:UpdateAssumeRolePolicy"} & set(actions)
    # Reading the boundary is how a run finds it is there; on that one policy only.
    assert by_sid["FindInstanceBoundary"]["Action"] == ["iam:GetPolicy"]
    assert by_sid["FindInstanceBoundary"]["Resource"] == BOUNDARY


def test_the_boundary_allows_what_a_runs_role_is_given_and_nothing_else():
    account = iam.Account("aws", ACCOUNT)
    boundary = iam.instance_boundary_policy(account)
    secret = f"arn:aws:secretsmanager:eu-west-1:{ACCOUNT}:secret:{iam.secret_name('abc123')}-AbCdEf"
    repositories = [f"arn:aws:ecr:eu-west-1:{ACCOUNT}:repository/team/seed",
                    "arn:aws:ecr:us-east-1:210987654321:repository/shared"]  # an image of another account
    # The run's role, as its runner made it: tagged with the run and its owner.
    role = {"aws:PrincipalTag/flowrig-run-id": "abc123", f"aws:PrincipalTag/{iam.OWNER_TAG}": RUNNER_A,
            f"aws:ResourceTag/{iam.OWNER_TAG}": RUNNER_A}
    given = [iam.instance_secret_policy(secret), *(iam.image_pull_policy(r) for r in repositories)]
    for document in given:
        for statement in document["Statement"]:
            actions = statement["Action"] if isinstance(statement["Action"], list) else [statement["Action"]]
            for action in actions:
                request = Request(action, statement["Resource"], role)
                assert evaluate(request, [document], boundary=boundary) == ALLOW, (action, statement["Resource"])
    assert iam.policy_actions(boundary) == sorted([
        "secretsmanager:GetSecretValue", "kms:Decrypt", "ecr:GetAuthorizationToken",
        "ecr:BatchCheckLayerAvailability", "ecr:BatchGetImage", "ecr:GetDownloadUrlForLayer"])
    anything = {"Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}
    # Other secrets of the account, IAM, EC2: out of any instance role's reach.
    for action, resource in [
        ("secretsmanager:GetSecretValue", f"arn:aws:secretsmanager:eu-west-1:{ACCOUNT}:secret:team/db-password-Ab"),
        ("secretsmanager:PutSecretValue", secret),
        ("iam:PassRole", f"arn:aws:iam::{ACCOUNT}:role/x"),
        ("ec2:RunInstances", f"arn:aws:ec2:eu-west-1:{ACCOUNT}:instance/*"),
    ]:
        assert evaluate(Request(action, resource, role), [anything], boundary=boundary) != ALLOW, action
    assert not [a for a in iam.policy_actions(boundary) if a.startswith(("iam:", "ec2:", "sts:", "s3:"))]
    # Keys only through Secrets Manager, and only the account's.
    [decrypt] = [s for s in boundary["Statement"] if s["Action"] == ["kms:Decrypt"]]
    assert decrypt["Resource"] == f"arn:aws:kms:*:{ACCOUNT}:key/*"
    assert decrypt["Condition"] == {"StringLike": {"kms:ViaService": "secretsmanager.*.amazonaws.com"}}
    for statement in boundary["Statement"]:
        assert statement["Effect"] == "Allow" and "*" not in statement["Action"]
        if _resources(statement) == ["*"]:
            assert statement["Action"] == ["ecr:GetAuthorizationToken"]


def test_the_ubuntu_and_deep_learning_parameters_are_the_only_ones_readable():
    from flowrig.backends.aws.ec2.cloud import GPU_PARAMETER

    [statement] = [s for s in printed_policy("--backend", "ec2")["Statement"] if s["Sid"] == "UbuntuImageParameter"]
    assert statement["Action"] == ["ssm:GetParameter"]

    def readable(arn: str) -> bool:
        return any(fnmatch.fnmatchcase(arn, pattern) for pattern in statement["Resource"])

    for arch in ("amd64", "arm64"):
        # Public parameters' ARNs have an empty account.
        assert readable(f"arn:aws:ssm:eu-west-1::parameter{UBUNTU_PARAMETER.format(arch=arch)}"), arch
    for arch in ("x86_64", "arm64"):
        assert readable(f"arn:aws:ssm:eu-west-1::parameter{GPU_PARAMETER.format(arch=arch)}"), arch
    assert not readable(f"arn:aws:ssm:eu-west-1:{ACCOUNT}:parameter/team/db-password")


def test_flowrig_ecs_iam_policy_is_the_same_as_aws_iam_policy_for_ecs():
    ecs = CliRunner().invoke(app, ["ecs", "iam-policy", "--account", ACCOUNT])
    assert ecs.exit_code == 0, ecs.output
    assert json.loads(ecs.stdout) == ec2_iam.runner_policy("ecs", iam.Account("aws", ACCOUNT))
    assert json.loads(ecs.stdout) == printed_policy("--backend", "ecs") == printed_policy("--backend", "fargate")
    # --create-roles is accepted from older scripts and changes nothing: every run makes its roles.
    assert printed_policy("--backend", "fargate", "--create-roles") == ec2_iam.runner_policy("ecs", iam.Account("aws", ACCOUNT))
    assert printed_policy("--backend", "fargate", "--deregister-task-definitions") == ec2_iam.runner_policy("ecs",
        iam.Account("aws", ACCOUNT), deregister=True)


@pytest.mark.parametrize("args, expected", [
    (["--backend", "ec2", "--deregister-task-definitions"], "--deregister-task-definitions is for ecs/fargate runs"),
    (["--backend", "ec3"], "--backend 'ec3': use one of ecs, fargate, ec2"),
    (["--backend", "ec2", "--account", "12"], "12 digits"),
])
def test_bad_arguments_are_one_line_exit_2(args, expected):
    done = invoke("aws", "iam-policy", "--account", ACCOUNT, *args)
    assert done.returncode == 2 and expected in done.stderr, done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and done.stdout == ""


def test_bootstrap_of_an_unknown_backend_is_one_line_exit_2():
    done = invoke("aws", "bootstrap", "--backend", "ec3")
    assert done.returncode == 2 and "--backend 'ec3': use one of ecs, fargate, ec2" in done.stderr, done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and done.stdout == ""
