"""IAM of the ``ec2`` backend: the runner's least-privilege policy, statement by
statement under the evaluator of tests/iam_eval.py, and runs against a moto server whose
IAM checks are those of AWS for the operations flowrig makes (tests/iam_support.py:
resources, conditions, ``iam:PassRole`` on AddRoleToInstanceProfile and on
RunInstances with an instance profile, permissions boundaries, secret policies), under
exactly the printed policy. moto has none of Canonical's public SSM parameters:
:func:`ubuntu_parameter` publishes the one a run reads.

The policy documents alone, statement by statement, are checked in tests/unit/test_ec2_iam.py.
"""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest
from typer.testing import CliRunner

from flowrig.backends.aws import policies as iam
from flowrig.backends.aws import runner_policy as ec2_iam
from flowrig.backends.aws.ec2.backend import EC2Backend
from flowrig.backends.aws.ec2.cloud import UBUNTU_PARAMETER
from flowrig.backends.base import ClusterSpec
from flowrig.cli import app
from flowrig.errors import InfrastructureError
from flowrig.project.sizing import ClusterSize
from tests.e2e.aws.test_ec2_backend import AMI, IMAGE, assert_nothing_left, held, instances
from tests.e2e.aws.test_ec2_backend import ec2_bootstrapped as ec2_bootstrapped  # a fixture
from tests.e2e.aws.test_ecs_iam import ACCOUNT
from tests.iam_support import enforcement, statements_used
from tests.run_support import FLOWRIG, SEED, TEN, marked_env
from tests.tls_support import local_scheduler
from tests.unit.test_ec2_iam import BOUNDARY, printed_policy

pytestmark = pytest.mark.filterwarnings("ignore:Scheduler already contains a plugin")


def _as_admin(monkeypatch, aws) -> None:
    enforcement(aws.endpoint, "inf")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")


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
    [bounded] = [s for s in printed_policy("--backend", "ec2")["Statement"] if s["Sid"] == "InstanceRoleCreate"]
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
def test_each_bootstrap_makes_its_own_policy_alone(aws):
    """ECS users' bootstrap makes the run-secret reader, ec2's the boundary; neither a role."""
    import boto3

    client = boto3.client("iam")
    reader = iam.run_secret_reader_arn(iam.Account("aws", ACCOUNT))
    output = _bootstrap("ecs", "bootstrap")
    assert f"policy {reader}: created" in output and "flowrig-instance-boundary" not in output
    assert [p["Arn"] for p in client.list_policies(Scope="Local")["Policies"]] == [reader]
    fargate = _bootstrap("aws", "bootstrap", "--backend", "fargate")
    assert f"policy {reader}: exists" in fargate and "flowrig-instance-boundary" not in fargate
    ec2 = _bootstrap("aws", "bootstrap", "--backend", "ec2")
    assert f"policy {BOUNDARY}: created" in ec2 and iam.RUN_SECRET_READER_NAME not in ec2
    assert [r["RoleName"] for r in client.list_roles()["Roles"] if r["RoleName"].startswith("flowrig")] == []


# --- enforced by moto -------------------------------------------------------------------
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
def ec2_runner_unbootstrapped(aws, iam_enforced, ubuntu_parameter, monkeypatch):
    """Users whose only policy is exactly `flowrig aws iam-policy --backend ec2`.
    ``as_runner(name="flowrig-ec2-runner", without=())`` makes that user's key the
    credentials (its policy less the given actions), turns IAM enforcement on (as AWS
    checks it: tests/iam_support.py) and returns the key."""
    import boto3

    client = boto3.client("iam")
    keys: dict[str, dict[str, str]] = {}

    def as_runner(name: str = "flowrig-ec2-runner", without: tuple[str, ...] = ()) -> dict[str, str]:
        enforcement(aws.endpoint, "inf")
        policy = printed_policy("--backend", "ec2")
        for statement in policy["Statement"]:
            statement["Action"] = [a for a in statement["Action"] if a not in without] or [ec2_iam.WHOAMI_ACTION]
        if name not in keys:
            client.create_user(UserName=name)
            key = client.create_access_key(UserName=name)["AccessKey"]
            keys[name] = {"AWS_ACCESS_KEY_ID": key["AccessKeyId"], "AWS_SECRET_ACCESS_KEY": key["SecretAccessKey"]}
        client.put_user_policy(UserName=name, PolicyName="flowrig-runner", PolicyDocument=json.dumps(policy))
        for variable, value in keys[name].items():
            monkeypatch.setenv(variable, value)
        enforcement(aws.endpoint, "0")
        return keys[name]

    as_runner.enforcer = iam_enforced  # type: ignore[attr-defined]
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
def test_an_ec2_run_completes_under_exactly_the_printed_policy(aws, ec2_runner, tls, tmp_path, monkeypatch):
    certs = tmp_path / "certs"
    tls.write_to_dir(certs)
    project = tmp_path / "seed"
    shutil.copytree(SEED, project)
    with local_scheduler(tls, workers=1) as scheduler:
        # No ami: the run reads Ubuntu's from SSM, as a project without one does.
        with open(project / "flowrig.toml", "a") as toml:
            toml.write(f'\n[cluster.options]\nscheduler_address = "{scheduler.scheduler_address}"\n'
                       'provision_timeout = 120\npreflight = false\n')
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
    assert ec2_runner.enforcer.refused() == [], ec2_runner.enforcer.refused()
    # Least: every statement of the printed policy was needed by the run.
    used = statements_used(printed_policy("--backend", "ec2"), ec2_runner.enforcer,
                           f"arn:aws:iam::{ACCOUNT}:user/flowrig-ec2-runner")
    # This run skips preflight; tests/e2e/aws/test_preflight.py shows its statements used.
    assert [sid for sid, was in used.items() if not was and not sid.startswith("Preflight")] == [], used
    operations = set(aws.operations())
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
            options={"scheduler_address": scheduler.scheduler_address, "provision_timeout": 60, "preflight": False},
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
        toml.write('\n[cluster.options]\nscheduler_address = "tls://127.0.0.1:9"\npreflight = false\n')
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
    from flowrig.backends.aws import resources as aws_calls

    # A refusal on the run's new role (iam:PassRole of it) is tried again while the role
    # may still be propagating (60 s): a few seconds of that show the same end.
    monkeypatch.setattr(aws_calls, "ROLE_PROPAGATION", 4.0)
    run_id = "ec2" + action.split(":")[1].lower()[:8]
    with local_scheduler(tls, workers=1) as scheduler:
        ec2_runner(without=(action,))
        with pytest.raises(InfrastructureError) as info:
            EC2Backend().start(ClusterSpec(
                run_id=run_id, size=ClusterSize(1), tls=tls, image=IMAGE, worker_env={"FLOWRIG_RUN_ID": run_id},
                # No ami: Ubuntu's, from SSM.
                options={"scheduler_address": scheduler.scheduler_address, "provision_timeout": 60, "preflight": False},
            ))
        _as_admin(monkeypatch, aws)
    assert info.value.exit_code == 3
    message = str(info.value)
    assert "\n" not in message and f"not authorized to perform: {action}" in message, message
    # What the run made before the refusal is gone again (the user could delete it all).
    assert_nothing_left(run_id)


def _ec2_spec(tls, run_id, scheduler_address) -> ClusterSpec:
    return ClusterSpec(run_id=run_id, size=ClusterSize(1), tls=tls, image=IMAGE, worker_env={"FLOWRIG_RUN_ID": run_id},
                       options={"scheduler_address": scheduler_address, "provision_timeout": 60,
                                "preflight": False})


@pytest.mark.aws
def test_an_instance_of_one_run_cannot_read_another_runs_secret_nor_its_runner_reach_the_other_run(
        aws, ec2_runner, tls, monkeypatch):
    import boto3
    from botocore.exceptions import ClientError

    from flowrig.certs import delivery

    with local_scheduler(tls, workers=1) as scheduler:
        started = []
        for run_id, runner in (("ec2x", "runner-x"), ("ec2y", "runner-y")):
            ec2_runner(runner)
            started.append(EC2Backend().start(_ec2_spec(tls, run_id, scheduler.scheduler_address)))
            _as_admin(monkeypatch, aws)
        try:
            secrets = {run_id: held(run_id)["secrets"][0] for run_id in ("ec2x", "ec2y")}
            [instance_y] = instances("ec2y")
            # An instance of run x holds its role's session, named after the instance.
            found = boto3.client("sts").assume_role(
                RoleArn=f"arn:aws:iam::{ACCOUNT}:role/flowrig/flowrig-ec2x-instance",
                RoleSessionName="i-0123456789abcdef0")["Credentials"]
            instance_x = boto3.client("secretsmanager", aws_access_key_id=found["AccessKeyId"],
                                      aws_secret_access_key=found["SecretAccessKey"],
                                      aws_session_token=found["SessionToken"])
            enforcement(aws.endpoint, "0")
            try:
                assert delivery.decode(instance_x.get_secret_value(SecretId=secrets["ec2x"])["SecretString"]) == tls
                with pytest.raises(ClientError) as info:
                    instance_x.get_secret_value(SecretId=secrets["ec2y"])
                assert "not authorized to perform: secretsmanager:GetSecretValue" in str(info.value)
            finally:
                enforcement(aws.endpoint, "inf")
            # Runner x against run y: its role, instance and secret are out of reach.
            ec2_runner("runner-x")
            session = boto3.session.Session()
            iam_x, ec2_x, sm_x = session.client("iam"), session.client("ec2"), session.client("secretsmanager")

            def refused(call, action):
                with pytest.raises(ClientError) as info:
                    call()
                assert f"not authorized to perform: {action}" in str(info.value), info.value

            # Run y's role (the reader of y's secret) into run x's own profile: no PassRole.
            iam_x.remove_role_from_instance_profile(InstanceProfileName="flowrig-ec2x-instance",
                                                    RoleName="flowrig-ec2x-instance")
            refused(lambda: iam_x.add_role_to_instance_profile(InstanceProfileName="flowrig-ec2x-instance",
                                                               RoleName="flowrig-ec2y-instance"), "iam:PassRole")
            refused(lambda: iam_x.put_role_policy(
                RoleName="flowrig-ec2y-instance", PolicyName="more",
                PolicyDocument=json.dumps(iam.instance_secret_policy(secrets["ec2x"]))), "iam:PutRolePolicy")
            refused(lambda: iam_x.remove_role_from_instance_profile(
                InstanceProfileName="flowrig-ec2y-instance", RoleName="flowrig-ec2y-instance"),
                "iam:RemoveRoleFromInstanceProfile")
            refused(lambda: ec2_x.terminate_instances(InstanceIds=[instance_y["InstanceId"]]),
                    "ec2:TerminateInstances")
            refused(lambda: sm_x.put_resource_policy(
                SecretId=secrets["ec2y"], BlockPublicPolicy=True,
                ResourcePolicy=json.dumps(iam.secret_read_policy(secrets["ec2y"], "x", grant=False))),
                "secretsmanager:PutResourcePolicy")
            refused(lambda: sm_x.delete_secret(SecretId=secrets["ec2y"], ForceDeleteWithoutRecovery=True),
                    "secretsmanager:DeleteSecret")
            iam_x.add_role_to_instance_profile(InstanceProfileName="flowrig-ec2x-instance",
                                               RoleName="flowrig-ec2x-instance")
            _as_admin(monkeypatch, aws)
            assert [i["InstanceId"] for i in instances("ec2y")] == [instance_y["InstanceId"]]
        finally:
            for runner, cluster in zip(("runner-x", "runner-y"), started):
                ec2_runner(runner)
                cluster.close()
                _as_admin(monkeypatch, aws)
    assert_nothing_left("ec2x")
    assert_nothing_left("ec2y")
