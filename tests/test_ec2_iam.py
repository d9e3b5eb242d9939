"""IAM of the ``ec2`` backend: the runner's least-privilege policy as a document, and
runs against a moto server that enforces IAM under exactly that policy's actions.

moto evaluates actions only (against ``Resource "*"``; it ignores resources and
conditions), so the resources and conditions are checked on the document itself: the
``iam:PermissionsBoundary`` condition on CreateRole and PutRolePolicy, which closes the
escalation through a run's instance role, is proven by the document tests alone (moto
would let a runner create a role without the boundary). What the runs themselves send
(the boundary on every CreateRole) is checked against the server. It
does not check ``iam:PassRole`` either, which AWS does on AddRoleToInstanceProfile and
on RunInstances with an instance profile; :func:`pass_role_enforced` makes the server
(in this process) check it on both, as AWS documents. moto has none of Canonical's
public SSM parameters: :func:`ubuntu_parameter` publishes the one a run reads.
"""

from __future__ import annotations

import fnmatch
import json
import shutil
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from flowrig.backends.base import ClusterSpec
from flowrig.backends.ecs import iam
from flowrig.backends.vm import ec2_iam
from flowrig.backends.vm.ec2 import EC2Backend
from flowrig.backends.vm.ec2_cloud import UBUNTU_PARAMETER
from flowrig.cli import app
from flowrig.errors import InfrastructureError
from flowrig.project.sizing import ClusterSize
from tests.run_support import FLOWRIG, SEED, TEN, marked_env
from tests.test_ec2_backend import AMI, IMAGE, assert_nothing_left, held, instances
from tests.test_ec2_backend import ec2_bootstrapped as ec2_bootstrapped  # a fixture
from tests.test_ecs_backend import local_scheduler
from tests.test_ecs_iam import ACCOUNT, _as_admin, _enforce

pytestmark = pytest.mark.filterwarnings("ignore:Scheduler already contains a plugin")

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
def test_the_ec2_policy_scopes_every_mutating_action_to_flowrigs_names_and_tags():
    policy = printed_policy("--backend", "ec2")
    assert policy == ec2_iam.runner_policy(iam.Account("aws", ACCOUNT))
    for statement in policy["Statement"]:
        assert statement["Effect"] == "Allow"
        resources = _resources(statement)
        if resources == ["*"]:
            # EC2's Describe actions have no resource types: IAM takes "*" only. So does
            # GetCallerIdentity, which AWS answers for any principal anyway.
            if statement["Action"] == [ec2_iam.WHOAMI_ACTION]:
                continue
            assert set(statement["Action"]) <= set(ec2_iam.UNSCOPED_ACTIONS), statement
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
    # The runner pulls no image itself: the VM's own role does. Of STS, it only asks who it is.
    assert not [a for a in actions if a.startswith(("ecr:", "ecs:", "logs:", "kms:"))], actions
    assert [a for a in actions if a.startswith("sts:")] == ["sts:GetCallerIdentity"]


def test_instances_are_made_tagged_and_only_tagged_ones_are_changed():
    by_sid = {s["Sid"]: s for s in printed_policy("--backend", "ec2")["Statement"]}
    arn = f"arn:aws:ec2:*:{ACCOUNT}"
    created = by_sid["InstancesCreateTagged"]
    assert created["Action"] == ["ec2:RunInstances"]
    assert created["Resource"] == [f"{arn}:instance/*", f"{arn}:volume/*"]
    assert created["Condition"] == {"Null": {"aws:RequestTag/flowrig-run-id": "false"}}
    run_tagged = {"Null": {"aws:ResourceTag/flowrig-run-id": "false"}}
    assert by_sid["InstancesTerminate"]["Action"] == ["ec2:TerminateInstances"]
    assert by_sid["InstancesTerminate"]["Resource"] == f"{arn}:instance/*"
    assert by_sid["InstancesTerminate"]["Condition"] == run_tagged
    assert by_sid["SecurityGroupCreateTagged"]["Condition"] == {
        "Null": {"aws:RequestTag/flowrig-run-id": "false"}}
    assert by_sid["SecurityGroupOwn"]["Condition"] == run_tagged
    assert by_sid["TagOnCreate"]["Condition"] == {
        "StringEquals": {"ec2:CreateAction": ["CreateSecurityGroup", "RunInstances"]}}
    # Renewing the lease: that one tag, only on what carries the run tag.
    assert by_sid["RenewLease"]["Condition"] == {
        **run_tagged, "ForAllValues:StringEquals": {"aws:TagKeys": ["flowrig-lease-until"]}}
    # Every ec2:CreateTags statement has a condition: no tagging of others' resources.
    for statement in by_sid.values():
        if "ec2:CreateTags" in statement["Action"]:
            assert statement.get("Condition"), statement


def test_roles_and_profiles_are_the_runs_own_and_passed_to_ec2_only():
    by_sid = {s["Sid"]: s for s in printed_policy("--backend", "ec2")["Statement"]}
    role = f"arn:aws:iam::{ACCOUNT}:role/flowrig/flowrig-*-instance"
    assert by_sid["InstanceRole"]["Resource"] == role
    assert by_sid["InstanceProfile"]["Resource"] == f"arn:aws:iam::{ACCOUNT}:instance-profile/flowrig/flowrig-*-instance"
    assert by_sid["PassInstanceRoleToEC2"] == {
        "Sid": "PassInstanceRoleToEC2", "Effect": "Allow", "Action": ["iam:PassRole"], "Resource": role,
        "Condition": {"StringEquals": {"iam:PassedToService": "ec2.amazonaws.com"}}}
    # IAM's wildcard, as fnmatch reads it: a run's role matches; the bootstrap role and
    # a project's own roles (off flowrig's path) do not.
    assert fnmatch.fnmatchcase(f"arn:aws:iam::{ACCOUNT}:role/flowrig/flowrig-abc123-instance", role)
    assert not fnmatch.fnmatchcase(f"arn:aws:iam::{ACCOUNT}:role/flowrig/{iam.EXECUTION_ROLE_NAME}", role)
    assert not fnmatch.fnmatchcase(f"arn:aws:iam::{ACCOUNT}:role/flowrig-abc123-instance", role)
    iam_statements = [s for s in by_sid.values() if any(a.startswith("iam:") for a in s["Action"])]
    assert {s["Sid"] for s in iam_statements} == {
        "InstanceRoleBounded", "InstanceRole", "FindInstanceBoundary", "InstanceProfile", "PassInstanceRoleToEC2"}
    # No managed policy is ever attached to an instance role.
    actions = iam.policy_actions({"Statement": iam_statements})
    assert "iam:AttachRolePolicy" not in actions and "iam:DetachRolePolicy" not in actions
    assert by_sid["RunSecret"]["Resource"] == f"arn:aws:secretsmanager:*:{ACCOUNT}:secret:flowrig/*"
    assert fnmatch.fnmatchcase(
        f"arn:aws:secretsmanager:us-east-1:{ACCOUNT}:secret:{iam.secret_name('abc123')}-AbCdEf",
        by_sid["RunSecret"]["Resource"])


def test_instance_roles_are_made_and_given_policies_only_with_the_bootstrap_boundary():
    # moto does not evaluate conditions: this document is what proves the condition.
    policy = printed_policy("--backend", "ec2")
    by_sid = {s["Sid"]: s for s in policy["Statement"]}
    role = f"arn:aws:iam::{ACCOUNT}:role/flowrig/flowrig-*-instance"
    assert by_sid["InstanceRoleBounded"] == {
        "Sid": "InstanceRoleBounded", "Effect": "Allow", "Action": ["iam:CreateRole", "iam:PutRolePolicy"],
        "Resource": role, "Condition": {"StringEquals": {"iam:PermissionsBoundary": BOUNDARY}}}
    assert iam.instance_boundary_arn(iam.Account("aws", ACCOUNT)) == BOUNDARY
    # Nowhere else, and never the calls that lift or change a boundary, or the boundary itself.
    for statement in policy["Statement"]:
        if statement["Sid"] != "InstanceRoleBounded":
            assert not {"iam:CreateRole", "iam:PutRolePolicy"} & set(statement["Action"]), statement
    actions = iam.policy_actions(policy)
    assert not set(ec2_iam.BOUNDARY_CHANGES) & set(actions)
    assert not [a for a in actions if "PermissionsBoundary" in a or "PolicyVersion" in a], actions
    assert not {"iam:CreatePolicy", "iam:DeletePolicy", "iam:UpdateAssumeRolePolicy"} & set(actions)
    # Reading the boundary is how a run finds it is there; on that one policy only.
    assert by_sid["FindInstanceBoundary"]["Action"] == ["iam:GetPolicy"]
    assert by_sid["FindInstanceBoundary"]["Resource"] == BOUNDARY


def _allowed_by(boundary: dict, action: str, resource: str) -> bool:
    """Whether an Allow statement of ``boundary`` covers ``action`` on ``resource``, as
    IAM's wildcards read (fnmatch; conditions aside)."""
    for statement in boundary["Statement"]:
        resources = _resources(statement)
        if action in statement["Action"] and any(fnmatch.fnmatchcase(resource, r) for r in resources):
            return True
    return False


def test_the_boundary_allows_what_a_runs_role_is_given_and_nothing_else():
    account = iam.Account("aws", ACCOUNT)
    boundary = iam.instance_boundary_policy(account)
    secret = f"arn:aws:secretsmanager:eu-west-1:{ACCOUNT}:secret:{iam.secret_name('abc123')}-AbCdEf"
    repositories = [f"arn:aws:ecr:eu-west-1:{ACCOUNT}:repository/team/seed",
                    "arn:aws:ecr:us-east-1:210987654321:repository/shared"]  # an image of another account
    given = [iam.instance_secret_policy(secret), *(iam.image_pull_policy(r) for r in repositories)]
    for document in given:
        for statement in document["Statement"]:
            actions = statement["Action"] if isinstance(statement["Action"], list) else [statement["Action"]]
            for action in actions:
                assert _allowed_by(boundary, action, statement["Resource"]), (action, statement["Resource"])
    assert iam.policy_actions(boundary) == sorted([
        "secretsmanager:GetSecretValue", "kms:Decrypt", "ecr:GetAuthorizationToken",
        "ecr:BatchCheckLayerAvailability", "ecr:BatchGetImage", "ecr:GetDownloadUrlForLayer"])
    # Other secrets of the account, IAM, EC2: out of any instance role's reach.
    assert not _allowed_by(boundary, "secretsmanager:GetSecretValue",
                           f"arn:aws:secretsmanager:eu-west-1:{ACCOUNT}:secret:team/db-password-AbCdEf")
    assert not _allowed_by(boundary, "secretsmanager:PutSecretValue", secret)
    assert not [a for a in iam.policy_actions(boundary) if a.startswith(("iam:", "ec2:", "sts:", "s3:"))]
    # Keys only through Secrets Manager, and only the account's.
    [decrypt] = [s for s in boundary["Statement"] if s["Action"] == ["kms:Decrypt"]]
    assert decrypt["Resource"] == f"arn:aws:kms:*:{ACCOUNT}:key/*"
    assert decrypt["Condition"] == {"StringLike": {"kms:ViaService": "secretsmanager.*.amazonaws.com"}}
    for statement in boundary["Statement"]:
        assert statement["Effect"] == "Allow" and "*" not in statement["Action"]
        if _resources(statement) == ["*"]:
            assert statement["Action"] == ["ecr:GetAuthorizationToken"]


def test_the_ubuntu_parameter_is_the_only_one_readable():
    [statement] = [s for s in printed_policy("--backend", "ec2")["Statement"] if s["Sid"] == "UbuntuImageParameter"]
    assert statement["Action"] == ["ssm:GetParameter"]
    for arch in ("amd64", "arm64"):
        # Public parameters' ARNs have an empty account.
        arn = f"arn:aws:ssm:eu-west-1::parameter{UBUNTU_PARAMETER.format(arch=arch)}"
        assert fnmatch.fnmatchcase(arn, statement["Resource"]), arn
    assert not fnmatch.fnmatchcase(f"arn:aws:ssm:eu-west-1:{ACCOUNT}:parameter/team/db-password",
                                   statement["Resource"])


def test_flowrig_ecs_iam_policy_is_unchanged_and_the_same_as_aws_iam_policy_for_ecs():
    ecs = CliRunner().invoke(app, ["ecs", "iam-policy", "--account", ACCOUNT])
    assert ecs.exit_code == 0, ecs.output
    assert json.loads(ecs.stdout) == iam.runner_policy(iam.Account("aws", ACCOUNT))
    assert json.loads(ecs.stdout) == printed_policy("--backend", "ecs") == printed_policy("--backend", "fargate")
    assert printed_policy("--backend", "fargate", "--create-roles") == iam.runner_policy(
        iam.Account("aws", ACCOUNT), create_roles=True)


@pytest.mark.parametrize("args, expected", [
    (["--backend", "ec2", "--create-roles"], "--create-roles is for ecs/fargate runs"),
    (["--backend", "ec3"], "--backend 'ec3': use one of ecs, fargate, ec2"),
    (["--backend", "ec2", "--account", "12"], "12 digits"),
])
def test_bad_arguments_are_one_line_exit_2(args, expected):
    done = subprocess.run([sys.executable, "-m", "flowrig.cli", "aws", "iam-policy", "--account", ACCOUNT, *args],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and expected in done.stderr, done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and done.stdout == ""


def test_bootstrap_of_an_unknown_backend_is_one_line_exit_2():
    done = subprocess.run([sys.executable, "-m", "flowrig.cli", "aws", "bootstrap", "--backend", "ec3"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "--backend 'ec3': use one of ecs, fargate, ec2" in done.stderr, done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and done.stdout == ""


# --- the bootstrap ----------------------------------------------------------------------
def _bootstrap(*args: str) -> str:
    result = CliRunner().invoke(app, list(args))
    assert result.exit_code == 0, result.output
    return result.output


def _boundary_document() -> dict:
    import boto3

    client = boto3.client("iam")
    version = client.get_policy(PolicyArn=BOUNDARY)["Policy"]["DefaultVersionId"]
    return client.get_policy_version(PolicyArn=BOUNDARY, VersionId=version)["PolicyVersion"]["Document"]


@pytest.mark.aws
def test_aws_bootstrap_ec2_makes_the_boundary_once_and_nothing_else(aws):
    import boto3

    client = boto3.client("iam")
    assert f"policy {BOUNDARY}: created" in _bootstrap("aws", "bootstrap", "--backend", "ec2")
    assert f"policy {BOUNDARY}: exists, document checked" in _bootstrap("aws", "bootstrap", "--backend", "ec2")
    [policy] = client.list_policies(Scope="Local")["Policies"]
    assert (policy["Arn"], policy["Path"], policy["PolicyName"]) == (
        BOUNDARY, "/flowrig/", "flowrig-instance-boundary")
    assert policy["DefaultVersionId"] == "v1"  # checked, not rewritten
    assert _boundary_document() == iam.instance_boundary_policy(iam.Account("aws", ACCOUNT))
    # The ARN the runner's policy demands is the one the bootstrap made.
    [bounded] = [s for s in printed_policy("--backend", "ec2")["Statement"] if s["Sid"] == "InstanceRoleBounded"]
    assert bounded["Condition"]["StringEquals"]["iam:PermissionsBoundary"] == policy["Arn"]
    # ec2 runs need no ECS execution role.
    assert [r["RoleName"] for r in client.list_roles()["Roles"] if r["RoleName"].startswith("flowrig")] == []


@pytest.mark.aws
def test_an_older_boundary_is_brought_up_to_date_keeping_within_iams_five_versions(aws):
    import boto3

    client = boto3.client("iam")
    older = {"Version": "2012-10-17", "Statement": [
        {"Sid": "Older", "Effect": "Allow", "Action": "secretsmanager:GetSecretValue", "Resource": "*"}]}
    client.create_policy(PolicyName="flowrig-instance-boundary", Path="/flowrig/", PolicyDocument=json.dumps(older))
    for _ in range(4):
        client.create_policy_version(PolicyArn=BOUNDARY, PolicyDocument=json.dumps(older), SetAsDefault=True)
    assert "exists, updated" in _bootstrap("aws", "bootstrap", "--backend", "ec2")
    assert _boundary_document() == iam.instance_boundary_policy(iam.Account("aws", ACCOUNT))
    versions = client.list_policy_versions(PolicyArn=BOUNDARY)["Versions"]
    assert len(versions) == 5 and "v1" not in [v["VersionId"] for v in versions]
    assert "exists, document checked" in _bootstrap("aws", "bootstrap", "--backend", "ec2")


@pytest.mark.aws
def test_ecs_bootstrap_makes_the_execution_role_alone_as_before(aws):
    """ECS users' bootstrap needs no rights on policies: the boundary is ec2's alone."""
    import boto3

    client = boto3.client("iam")
    output = _bootstrap("ecs", "bootstrap")
    assert f"role arn:aws:iam::{ACCOUNT}:role/flowrig/flowrig-execution: created" in output
    assert "flowrig-instance-boundary" not in output
    assert client.list_policies(Scope="Local")["Policies"] == []
    fargate = _bootstrap("aws", "bootstrap", "--backend", "fargate")
    assert "flowrig-execution: exists" in fargate and "flowrig-instance-boundary" not in fargate
    ec2 = _bootstrap("aws", "bootstrap", "--backend", "ec2")
    assert f"policy {BOUNDARY}: created" in ec2 and "flowrig-execution" not in ec2


# --- enforced by moto -------------------------------------------------------------------
@pytest.fixture
def pass_role_enforced(aws, monkeypatch):
    """The server checks ``iam:PassRole`` of the role on AddRoleToInstanceProfile and
    on RunInstances with an instance profile, as AWS does, while IAM is enforced."""
    from moto import settings
    from moto.core.authorization import ActionAuthenticatorMixin
    from moto.ec2.responses.instances import InstanceResponse
    from moto.iam.access_control import IAMRequest
    from moto.iam.models import iam_backends
    from moto.iam.responses import IamResponse

    def check(response, role_arn: str) -> None:
        if ActionAuthenticatorMixin.request_count < settings.INITIAL_NO_AUTH_ACTION_COUNT:
            return
        request = IAMRequest(account_id=response.current_account, method=response.method, path=response.raw_path,
                             data=response.data, body=response.raw_body, headers=response.headers,
                             action="PassRole")
        request._action = "iam:PassRole"  # moto names the action after the request's service
        request.check_action_permitted(role_arn)

    add_role, run_instances = IamResponse.add_role_to_instance_profile, InstanceResponse.run_instances

    def adding_role(self):
        check(self, iam_backends[self.current_account]["aws"].get_role(self._get_param("RoleName")).arn)
        return add_role(self)

    def running(self):
        profile_arn = self._get_param("IamInstanceProfile.Arn")
        if profile_arn:
            profile = iam_backends[self.current_account]["aws"].get_instance_profile_by_arn(profile_arn)
            for role in profile.roles:
                check(self, role.arn)
        return run_instances(self)

    monkeypatch.setattr(IamResponse, "add_role_to_instance_profile", adding_role)
    monkeypatch.setattr(InstanceResponse, "run_instances", running)


@pytest.fixture
def ubuntu_parameter(aws):
    """Canonical's public parameter of the current Ubuntu LTS (amd64), as AWS serves it,
    naming an AMI moto knows."""
    from datetime import datetime, timezone

    from moto.ssm.models import Parameter, ssm_backends

    name = UBUNTU_PARAMETER.format(arch="amd64")
    ssm_backends[ACCOUNT]["us-east-1"]._parameters[name].append(Parameter(
        account_id=ACCOUNT, name=name, value=AMI, parameter_type="String", description=None,
        allowed_pattern=None, keyid=None, last_modified_date=datetime.now(timezone.utc), version=1,
        data_type="aws:ec2:image",
    ))
    return name


@pytest.fixture
def ec2_runner_unbootstrapped(aws, pass_role_enforced, ubuntu_parameter, monkeypatch):
    """A user whose only policy allows the actions of `flowrig aws iam-policy --backend
    ec2` on "*". Yields a function that makes the user's key the credentials, minus the
    given actions, with IAM enforced, and returns the key."""
    import boto3

    actions = iam.policy_actions(printed_policy("--backend", "ec2"))
    client = boto3.client("iam")
    client.create_user(UserName="flowrig-ec2-runner")
    key = client.create_access_key(UserName="flowrig-ec2-runner")["AccessKey"]

    def as_runner(without: tuple[str, ...] = ()) -> dict[str, str]:
        allowed = [a for a in actions if a not in without]
        client.put_user_policy(UserName="flowrig-ec2-runner", PolicyName="flowrig-runner", PolicyDocument=json.dumps(
            {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": allowed, "Resource": "*"}]}))
        credentials = {"AWS_ACCESS_KEY_ID": key["AccessKeyId"], "AWS_SECRET_ACCESS_KEY": key["SecretAccessKey"]}
        for name, value in credentials.items():
            monkeypatch.setenv(name, value)
        _enforce(aws, "0")
        return credentials

    try:
        yield as_runner
    finally:
        _as_admin(monkeypatch, aws)


@pytest.fixture
def ec2_runner(ec2_bootstrapped, ec2_runner_unbootstrapped):
    """:func:`ec2_runner_unbootstrapped` after `flowrig aws bootstrap --backend ec2` (as
    the administrator)."""
    return ec2_runner_unbootstrapped


@pytest.mark.aws
def test_an_ec2_run_completes_under_exactly_the_printed_actions(aws, ec2_runner, tls, tmp_path, monkeypatch):
    certs = tmp_path / "certs"
    tls.write_to_dir(certs)
    project = tmp_path / "seed"
    shutil.copytree(SEED, project)
    with local_scheduler(tls, workers=1) as scheduler:
        # No ami: the run reads Ubuntu's from SSM, as a project without one does.
        with open(project / "flowrig.toml", "a") as toml:
            toml.write(f'\n[cluster.options]\nscheduler_address = "{scheduler.scheduler_address}"\n'
                       'provision_timeout = 120\n')
        credentials = ec2_runner()
        done = subprocess.run(
            [*FLOWRIG, "run", str(project), "--backend", "ec2", "--image", IMAGE, "--certs", str(certs),
             "--param", TEN, "--output", "json"],
            # A 2 s lease: renewals (ec2:CreateTags) happen under the policy too.
            env={**marked_env("ec2-iam"), **credentials, "FLOWRIG_RUN_ID": "ec2iam1",
                 "FLOWRIG_AWS_LEASE_SECONDS": "2"},
            capture_output=True, text=True, timeout=300,
        )
        _as_admin(monkeypatch, aws)
    assert done.returncode == 0, done.stderr[-3000:]
    outcome = json.loads(done.stdout.strip().splitlines()[-1])
    assert outcome["state"] == "Completed" and outcome["result"] == 90, outcome
    assert "could not renew" not in done.stderr and "not authorized" not in done.stderr, done.stderr[-3000:]
    assert len(instances("ec2iam1", ("terminated",))) == 2
    assert_nothing_left("ec2iam1")
    # Least: every printed action was used, or is authorized as part of a call that was.
    operations = set(aws.operations())
    printed = iam.policy_actions(printed_policy("--backend", "ec2"))
    unused = [a for a in printed if a.split(":")[1] not in operations and a not in ec2_iam.IMPLIED_ACTIONS]
    assert unused == [], unused
    for operation in ("GetParameter", "RunInstances", "AddRoleToInstanceProfile", "CreateTags",
                      "TerminateInstances", "DeleteInstanceProfile", "DeleteSecret", "GetPolicy"):
        assert operation in operations, operation
    # The role was made with the boundary (the condition moto does not check is met).
    [created] = aws.query_requests("CreateRole")
    assert created["RoleName"] == ["flowrig-ec2iam1-instance"] and created["PermissionsBoundary"] == [BOUNDARY]


@pytest.mark.aws
def test_the_runners_instance_role_carries_the_boundary(aws, ec2_runner, tls, monkeypatch):
    import boto3

    with local_scheduler(tls, workers=1) as scheduler:
        ec2_runner()
        started = EC2Backend().start(ClusterSpec(
            run_id="ec2bound", size=ClusterSize(1), tls=tls, image=IMAGE, worker_env={"FLOWRIG_RUN_ID": "ec2bound"},
            options={"scheduler_address": scheduler.scheduler_address, "provision_timeout": 60},
        ))
        try:
            _as_admin(monkeypatch, aws)
            role = boto3.client("iam").get_role(RoleName="flowrig-ec2bound-instance")["Role"]
            assert role["PermissionsBoundary"] == {
                "PermissionsBoundaryType": "PermissionsBoundaryPolicy", "PermissionsBoundaryArn": BOUNDARY}
            # Both its inline policies were written under the boundary.
            assert sorted(boto3.client("iam").list_role_policies(RoleName=role["RoleName"])["PolicyNames"]) == [
                "pull-run-image", "read-run-secret"]
        finally:
            started.close()
    assert_nothing_left("ec2bound")


@pytest.mark.aws
def test_without_the_boundary_the_run_exits_2_naming_the_bootstrap_and_makes_nothing(
        aws, ec2_runner_unbootstrapped, tls, tmp_path, monkeypatch):
    certs = tmp_path / "certs"
    tls.write_to_dir(certs)
    project = tmp_path / "seed"
    shutil.copytree(SEED, project)
    with open(project / "flowrig.toml", "a") as toml:
        toml.write('\n[cluster.options]\nscheduler_address = "tls://127.0.0.1:9"\n')
    credentials = ec2_runner_unbootstrapped()
    before = len(aws.operations())
    done = subprocess.run(
        [*FLOWRIG, "run", str(project), "--backend", "ec2", "--image", IMAGE, "--certs", str(certs),
         "--param", TEN],
        env={**marked_env("ec2-noboundary"), **credentials, "FLOWRIG_RUN_ID": "ec2nobound"},
        capture_output=True, text=True, timeout=120,
    )
    _as_admin(monkeypatch, aws)
    assert done.returncode == 2, done.stderr[-3000:]
    [line] = [line for line in done.stderr.splitlines() if "flowrig-instance-boundary" in line]
    assert f"IAM policy {BOUNDARY}" in line and "does not exist" in line, line
    assert "`flowrig aws bootstrap --backend ec2`" in line and "iam_instance_profile" in line, line
    assert "Traceback" not in done.stderr
    # Found before anything is made: nothing was asked to be created, nothing is left.
    asked = aws.operations()[before:]
    assert "GetPolicy" in asked, asked
    creating = [op for op in asked if op.startswith(("Create", "Put", "RunInstances", "Add"))]
    assert creating == [], creating
    assert_nothing_left("ec2nobound")
    assert held("ec2nobound")["roles"] == []


@pytest.mark.aws
@pytest.mark.parametrize("action", ["ec2:RunInstances", "iam:CreateInstanceProfile", "secretsmanager:CreateSecret",
                                    "ec2:CreateSecurityGroup", "iam:PassRole"])
def test_without_one_action_the_run_exits_3_naming_it_and_leaves_nothing(aws, ec2_runner, tls, monkeypatch, action):
    run_id = "ec2" + action.split(":")[1].lower()[:8]
    with local_scheduler(tls, workers=1) as scheduler:
        ec2_runner(without=(action,))
        with pytest.raises(InfrastructureError) as info:
            EC2Backend().start(ClusterSpec(
                run_id=run_id, size=ClusterSize(1), tls=tls, image=IMAGE, worker_env={"FLOWRIG_RUN_ID": run_id},
                # No ami: Ubuntu's, from SSM.
                options={"scheduler_address": scheduler.scheduler_address, "provision_timeout": 60},
            ))
        _as_admin(monkeypatch, aws)
    assert info.value.exit_code == 3
    message = str(info.value)
    assert "\n" not in message and f"not authorized to perform: {action}" in message, message
    # What the run made before the refusal is gone again (the user could delete it all).
    assert_nothing_left(run_id)
