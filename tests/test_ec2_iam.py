"""IAM of the ``ec2`` backend: the runner's least-privilege policy as a document, and
runs against a moto server that enforces IAM under exactly that policy's actions.

moto evaluates actions only (against ``Resource "*"``; it ignores resources and
conditions), so the resources and conditions are checked on the document itself. It
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
from tests.test_ec2_backend import AMI, IMAGE, assert_nothing_left, instances
from tests.test_ecs_backend import local_scheduler
from tests.test_ecs_iam import ACCOUNT, _as_admin, _enforce

pytestmark = pytest.mark.filterwarnings("ignore:Scheduler already contains a plugin")

#: Actions that change something (anything but reading).
_READING = ("Describe", "Get", "List")


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
            # EC2's Describe actions have no resource types: IAM takes "*" only.
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
    # The runner pulls no image itself: the VM's own role does.
    assert not [a for a in actions if a.startswith(("ecr:", "ecs:", "logs:", "sts:"))], actions


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
    assert {s["Sid"] for s in iam_statements} == {"InstanceRole", "InstanceProfile", "PassInstanceRoleToEC2"}
    # No managed policy is ever attached to an instance role.
    actions = iam.policy_actions({"Statement": iam_statements})
    assert "iam:AttachRolePolicy" not in actions and "iam:DetachRolePolicy" not in actions
    assert by_sid["RunSecret"]["Resource"] == f"arn:aws:secretsmanager:*:{ACCOUNT}:secret:flowrig/*"
    assert fnmatch.fnmatchcase(
        f"arn:aws:secretsmanager:us-east-1:{ACCOUNT}:secret:{iam.secret_name('abc123')}-AbCdEf",
        by_sid["RunSecret"]["Resource"])


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
def ec2_runner(aws, pass_role_enforced, ubuntu_parameter, monkeypatch):
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
                      "TerminateInstances", "DeleteInstanceProfile", "DeleteSecret"):
        assert operation in operations, operation


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
