"""The ``ec2`` backend against a real moto server.

Moto boots no VM and gives instances made-up private addresses, which nothing here may
connect to. The clusters are therefore pointed at a real mutual-TLS scheduler on
127.0.0.1 with the run's certificates and a stand-in worker (``scheduler_address``: no
scheduler VM is made, the worker VMs are), or their instances stay pending so that no
address is ever used. What the VMs would run is read back from moto: each instance's
user data (DescribeInstanceAttribute), parsed as flowrig's cloud-init.
"""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
import time

import pytest

from flowrig.backends.aws.ec2.backend import EC2Backend
from flowrig.backends.base import ClusterSpec
from flowrig.backends.pool import Observed
from flowrig.backends.vm import cloudinit
from flowrig.backends.vm import scheduler_reach as reach
from flowrig.certs.scan import private_keys_in_bytes
from flowrig.errors import BadInput, InfrastructureError
from flowrig.project.sizing import ClusterSize
from tests.e2e.aws.test_ecs_backend import assert_no_key_in, closed_port, secret_arns, tags
from tests.net_support import silent_loopback_port
from tests.run_support import FLOWRIG, SEED, TEN, marked_env
from tests.tls_support import local_scheduler

#: Ubuntu 14.04 in moto's default images (any AMI moto knows will do).
AMI = "ami-1e749f67"
IMAGE = "123456789012.dkr.ecr.us-east-1.amazonaws.com/seed:run-image"
pytestmark = pytest.mark.filterwarnings("ignore:Scheduler already contains a plugin")


@pytest.fixture
def ec2_bootstrapped(aws):
    """The account after `flowrig aws bootstrap --backend ec2` (as its administrator):
    the permissions boundary of the runs' instance roles exists."""
    from typer.testing import CliRunner

    from flowrig.cli import app

    result = CliRunner().invoke(app, ["aws", "bootstrap", "--backend", "ec2"])
    assert result.exit_code == 0, result.output
    return aws


def spec(tls, run_id, size=ClusterSize(2), image=IMAGE, **options) -> ClusterSpec:
    return ClusterSpec(
        run_id=run_id, size=size, tls=tls, image=image,
        worker_env={"PREFECT_API_URL": "https://10.0.0.5:4200/api", "FLOWRIG_RUN_ID": run_id},
        # No preflight: see NO_PREFLIGHT in test_ecs_backend.py.
        options={"ami": AMI, "preflight": False, **options}, worker_threads=2,
    )


def instances(run_id: str, states=("pending", "running")) -> list[dict]:
    import boto3

    pages = boto3.client("ec2").get_paginator("describe_instances").paginate(Filters=[
        {"Name": "tag:flowrig-run-id", "Values": [run_id]},
        {"Name": "instance-state-name", "Values": list(states)},
    ])
    return [i for page in pages for r in page["Reservations"] for i in r["Instances"]]


def role_policy(role_name: str, policy_name: str) -> dict:
    import boto3

    document = boto3.client("iam").get_role_policy(RoleName=role_name, PolicyName=policy_name)["PolicyDocument"]
    return json.loads(document) if isinstance(document, str) else document


def user_data(instance_id: str) -> str:
    import boto3

    value = boto3.client("ec2").describe_instance_attribute(InstanceId=instance_id, Attribute="userData")
    return base64.b64decode(value["UserData"]["Value"]).decode()


def held(run_id: str) -> dict[str, list]:
    """What AWS holds of a run, found by its tag or name (as an operator would)."""
    import boto3

    ec2, iam = boto3.client("ec2"), boto3.client("iam")
    groups = ec2.describe_security_groups(
        Filters=[{"Name": "tag:flowrig-run-id", "Values": [run_id]}])["SecurityGroups"]
    return {
        "instances": instances(run_id, ("pending", "running", "stopping", "stopped", "shutting-down")),
        "security_groups": groups,
        "roles": [r for r in iam.list_roles()["Roles"] if r["RoleName"].startswith(f"flowrig-{run_id}")],
        "instance_profiles": [p for p in iam.list_instance_profiles()["InstanceProfiles"]
                              if p["InstanceProfileName"].startswith(f"flowrig-{run_id}")],
        "secrets": secret_arns(run_id),
    }


def assert_nothing_left(run_id: str) -> None:
    after = held(run_id)
    assert after == {k: [] for k in after}, after


# --- a whole run -------------------------------------------------------------------------
@pytest.mark.aws
@pytest.mark.usefixtures("ec2_bootstrapped")
def test_flowrig_run_ec2_gives_90_and_removes_every_tagged_resource(aws, tls, tmp_path):
    certs = tmp_path / "certs"
    tls.write_to_dir(certs)
    project = tmp_path / "seed"
    shutil.copytree(SEED, project)
    with local_scheduler(tls, workers=1) as scheduler:
        with open(project / "flowrig.toml", "a") as toml:
            toml.write(f'\n[cluster.options]\nscheduler_address = "{scheduler.scheduler_address}"\n'
                       f'ami = "{AMI}"\nprovision_timeout = 120\ninstance_tags = {{ team = "data" }}\npreflight = false\n')
        done = subprocess.run(
            [*FLOWRIG, "run", str(project), "--backend", "ec2", "--image", IMAGE, "--certs", str(certs),
             "--param", TEN, "--output", "json"],
            env={**marked_env("ec2-run"), "FLOWRIG_RUN_ID": "ec2run1"}, capture_output=True, text=True,
            timeout=300,
        )
    assert done.returncode == 0, done.stderr[-3000:]
    outcome = json.loads(done.stdout.strip().splitlines()[-1])
    assert outcome["state"] == "Completed" and outcome["result"] == 90, outcome

    # The run's worker instances, terminated now, as EC2 keeps listing them for a while.
    made = instances("ec2run1", ("terminated",))
    assert len(made) == 2, made  # the seed's sizing: one worker per five items
    names = sorted(tags(i["Tags"])["Name"] for i in made)
    assert names == ["flowrig-ec2run1-worker-1", "flowrig-ec2run1-worker-2"]
    for instance in made:
        labels = tags(instance["Tags"])
        assert labels["flowrig-run-id"] == "ec2run1" and labels["createdBy"] == "flowrig"
        assert labels["team"] == "data" and "flowrig-lease-until" in labels
        text = user_data(instance["InstanceId"])
        assert list(private_keys_in_bytes(text.encode())) == []
        assert_no_key_in(text, tls)
        role = cloudinit.parse(text)
        assert (role.run_id, role.role, role.name, role.image) == ("ec2run1", "worker", labels["Name"], IMAGE)
        assert role.command[:2] == ("worker", scheduler.scheduler_address)
        assert role.command[role.command.index("--name") + 1] == labels["Name"]
        assert role.tls.source == "aws-secret" and role.tls.ref.startswith(
            "arn:aws:secretsmanager:us-east-1:123456789012:secret:flowrig/ec2run1/tls")
        assert role.registry is not None and role.registry.kind == "ecr"
    # Everything it made was tagged and has gone.
    ops = aws.operations()
    for operation in ("CreateSecurityGroup", "CreateRole", "CreateInstanceProfile", "CreateSecret", "RunInstances"):
        assert operation in ops, ops
    assert_nothing_left("ec2run1")


@pytest.mark.aws
@pytest.mark.usefixtures("ec2_bootstrapped")
def test_instances_security_group_and_identity_of_a_run(aws, tls, monkeypatch):
    import boto3

    from flowrig.backends.aws.lease import LEASE_SECONDS_ENV
    from tests.e2e.aws.test_aws_leftovers import listed

    # Resources are created with a 2 s lease; only renewals keep the live run off the list.
    monkeypatch.setenv(LEASE_SECONDS_ENV, "2")
    with local_scheduler(tls, workers=1) as scheduler:
        started = EC2Backend().start(spec(
            tls, "ec2a", scheduler_address=scheduler.scheduler_address, provision_timeout=120,
            worker_instance_type="m5.large", filesystem_size=60, key_name="ops",
        ))
        try:
            now = held("ec2a")
            ec2, iam, manager = boto3.client("ec2"), boto3.client("iam"), boto3.client("secretsmanager")

            # The security group: 8786 from the VPC only, every TCP port between members.
            [group] = now["security_groups"]
            vpc = ec2.describe_vpcs(VpcIds=[group["VpcId"]])["Vpcs"][0]
            from_vpc = [p for p in group["IpPermissions"] if p.get("IpRanges")]
            assert [(p["FromPort"], p["ToPort"]) for p in from_vpc] == [(8786, 8786)]
            assert [r["CidrIp"] for r in from_vpc[0]["IpRanges"]] == [vpc["CidrBlock"]]
            for permission in group["IpPermissions"]:
                assert "0.0.0.0/0" not in [r["CidrIp"] for r in permission.get("IpRanges", [])]
                assert not permission.get("Ipv6Ranges")
                if not permission.get("IpRanges"):
                    assert [p["GroupId"] for p in permission["UserIdGroupPairs"]] == [group["GroupId"]]
            assert EC2Backend().name == "ec2"

            # The identity: a role only EC2 may assume, whose one policy reads the run's secret.
            [role] = now["roles"]
            [profile] = now["instance_profiles"]
            [secret_arn] = now["secrets"]
            assert role["Path"] == "/flowrig/" and role["RoleName"] == "flowrig-ec2a-instance"
            # Whatever inline policy it is given, it can do no more than the boundary allows.
            assert iam.get_role(RoleName=role["RoleName"])["Role"]["PermissionsBoundary"] == {
                "PermissionsBoundaryType": "PermissionsBoundaryPolicy",
                "PermissionsBoundaryArn": "arn:aws:iam::123456789012:policy/flowrig/flowrig-instance-boundary"}
            [trust] = role["AssumeRolePolicyDocument"]["Statement"]
            assert trust["Principal"] == {"Service": "ec2.amazonaws.com"} and trust["Action"] == "sts:AssumeRole"
            assert iam.list_attached_role_policies(RoleName=role["RoleName"])["AttachedPolicies"] == []
            # The image is on ECR: the VM logs in with this role, so it may pull that repository too.
            assert sorted(iam.list_role_policies(RoleName=role["RoleName"])["PolicyNames"]) == [
                "pull-run-image", "read-run-secret"]
            assert role_policy(role["RoleName"], "read-run-secret")["Statement"] == [{
                "Sid": "ReadRunSecret", "Effect": "Allow", "Action": "secretsmanager:GetSecretValue",
                "Resource": secret_arn}]
            login, pull = role_policy(role["RoleName"], "pull-run-image")["Statement"]
            assert login["Action"] == "ecr:GetAuthorizationToken" and login["Resource"] == "*"
            assert pull["Resource"] == "arn:aws:ecr:us-east-1:123456789012:repository/seed"
            assert sorted(pull["Action"]) == [
                "ecr:BatchCheckLayerAvailability", "ecr:BatchGetImage", "ecr:GetDownloadUrlForLayer"]
            assert [r["Arn"] for r in profile["Roles"]] == [role["Arn"]]
            # Role, profile, secret and instances name the run and their maker (the
            # caller, as IAM names it): what the boundary and the runner policy check.
            owner = boto3.client("sts").get_caller_identity()["UserId"]
            for found in (iam.list_role_tags(RoleName=role["RoleName"])["Tags"],
                          iam.get_instance_profile(InstanceProfileName=profile["InstanceProfileName"])[
                              "InstanceProfile"]["Tags"],
                          manager.describe_secret(SecretId=secret_arn)["Tags"],
                          *(instance["Tags"] for instance in now["instances"])):
                assert (tags(found)["flowrig-run-id"], tags(found)["flowrig-owner"]) == ("ec2a", owner)
            policy = json.loads(manager.get_resource_policy(SecretId=secret_arn)["ResourcePolicy"])
            # Every principal but the run's role is denied; the role's own right is its
            # inline policy (no principal named that IAM might not know yet).
            [deny] = policy["Statement"]
            assert deny["Effect"] == "Deny" and deny["Resource"] == secret_arn and deny["Condition"] == {
                "StringNotEquals": {"aws:PrincipalArn": role["Arn"]}}

            # The instances: private, IMDSv2 with a hop for the container, the run's profile.
            assert len(now["instances"]) == 2
            for instance in now["instances"]:
                assert instance["InstanceType"] == "m5.large" and instance["ImageId"] == AMI
                assert instance["KeyName"] == "ops"
                assert instance["IamInstanceProfile"]["Arn"] == profile["Arn"]
                [interface] = instance["NetworkInterfaces"]
                assert [g["GroupId"] for g in interface["Groups"]] == [group["GroupId"]]
                assert instance["VpcId"] == group["VpcId"]
                assert not instance.get("PublicIpAddress")
                assert instance["MetadataOptions"]["HttpTokens"] == "required"
                assert instance["MetadataOptions"]["HttpPutResponseHopLimit"] == 2
            requests = aws.query_requests("RunInstances")
            assert len(requests) == 2
            for form in requests:
                assert form["NetworkInterface.1.AssociatePublicIpAddress"] == ["false"]
                assert form["BlockDeviceMapping.1.Ebs.Encrypted"] == ["true"]
                assert form["BlockDeviceMapping.1.Ebs.VolumeSize"] == ["60"]
                assert form["MetadataOptions.HttpTokens"] == ["required"]
                kinds = {form[f"TagSpecification.{n}.ResourceType"][0] for n in (1, 2)}
                assert kinds == {"instance", "volume"}
                # No key material anywhere in what was sent, user data included.
                sent = json.dumps(form) + base64.b64decode(form["UserData"][0]).decode()
                assert_no_key_in(sent, tls)
                assert list(private_keys_in_bytes(sent.encode())) == []

            # A live run's lease is renewed: `flowrig aws leftovers` leaves it alone.
            time.sleep(5)
            assert listed("ec2a") is None
        finally:
            started.close()
    assert_nothing_left("ec2a")
    assert len(instances("ec2a", ("terminated",))) == 2


@pytest.mark.aws
@pytest.mark.usefixtures("ec2_bootstrapped")
def test_dashboard_is_opened_to_the_vpc_only_when_asked(aws, tls):
    import boto3

    with local_scheduler(tls, workers=1) as scheduler:
        started = EC2Backend().start(spec(
            tls, "ec2d", size=ClusterSize(1), image="ghcr.io/team/seed:1",
            scheduler_address=scheduler.scheduler_address, dashboard=True))
        try:
            [group] = held("ec2d")["security_groups"]
            from_vpc = [p for p in group["IpPermissions"] if p.get("IpRanges")]
            assert sorted((p["FromPort"], p["ToPort"]) for p in from_vpc) == [(8786, 8786), (8787, 8787)]
            # An image outside ECR: the role reads the run's secret and nothing else.
            names = boto3.client("iam").list_role_policies(RoleName="flowrig-ec2d-instance")["PolicyNames"]
            assert names == ["read-run-secret"]
        finally:
            started.close()
    assert_nothing_left("ec2d")


@pytest.mark.aws
@pytest.mark.usefixtures("ec2_bootstrapped")
def test_iam_calls_refused_while_the_runs_new_role_propagates_are_tried_again(aws, fault_proxy, tls):
    """The runner may write the new role's policies and put it in its profile only once
    IAM sees it owns the role (its tags), which takes seconds: those refusals are waited out."""
    refused = "User: arn:aws:iam::123456789012:user/runner is not authorized to perform: iam:{}"
    fault_proxy.refuse_first("PutRolePolicy", 1, "AccessDenied", refused.format("PutRolePolicy"))
    fault_proxy.refuse_first("AddRoleToInstanceProfile", 2, "AccessDenied", refused.format("AddRoleToInstanceProfile"))
    with local_scheduler(tls, workers=1) as scheduler:
        started = EC2Backend().start(spec(tls, "ec2p", size=ClusterSize(1), scheduler_address=scheduler.scheduler_address))
        try:
            assert len(instances("ec2p")) == 1
            # read-run-secret and pull-run-image, the first one twice.
            assert fault_proxy.calls["PutRolePolicy"] == 3
            assert fault_proxy.calls["AddRoleToInstanceProfile"] == 3
        finally:
            started.close()
    assert_nothing_left("ec2p")


# --- failures --------------------------------------------------------------------------
@pytest.mark.aws
@pytest.mark.usefixtures("ec2_bootstrapped")
def test_provisioning_deadline_names_the_pending_scheduler_instance(ec2_instances_pending, tls):
    aws = ec2_instances_pending
    began = time.monotonic()
    with pytest.raises(InfrastructureError) as info:
        EC2Backend().start(spec(tls, "ec2p", size=ClusterSize(1), provision_timeout=8))
    took = time.monotonic() - began
    message = str(info.value)
    assert info.value.exit_code == 3 and "\n" not in message
    assert "did not start within 8 s" in message and "scheduler instance PENDING" in message, message
    assert 8 <= took < 60
    [form] = aws.query_requests("RunInstances")
    role = cloudinit.parse(base64.b64decode(form["UserData"][0]).decode())
    assert role.role == "scheduler" and role.name == "flowrig-ec2p-scheduler"
    assert_nothing_left("ec2p")
    assert len(instances("ec2p", ("terminated",))) == 1


@pytest.mark.aws
@pytest.mark.usefixtures("ec2_bootstrapped")
def test_no_worker_joining_in_time_is_exit_3(aws, tls):
    with local_scheduler(tls, workers=0) as scheduler:
        with pytest.raises(InfrastructureError) as info:
            EC2Backend().start(spec(
                tls, "ec2n", size=ClusterSize(1), scheduler_address=scheduler.scheduler_address, provision_timeout=8))
    assert "had no worker within 8 s (worker instance RUNNING)" in str(info.value)
    assert_nothing_left("ec2n")


@pytest.mark.aws
@pytest.mark.usefixtures("ec2_bootstrapped")
def test_an_unknown_instance_type_is_one_line_exit_2_and_leaves_nothing(aws, tls):
    with pytest.raises(BadInput) as info:
        EC2Backend().start(spec(tls, "ec2t", size=ClusterSize(1), instance_type="x9.huge"))
    message = str(info.value)
    assert info.value.exit_code == 2 and "\n" not in message
    assert message.startswith("EC2 in us-east-1 knows no instance type among x9.huge"), message
    assert "aws ec2 describe-instance-types" in message
    # Found by DescribeInstanceTypes before anything was made.
    assert "DescribeInstanceTypes" in aws.operations() and "CreateSecurityGroup" not in aws.operations()
    assert_nothing_left("ec2t")
    assert instances("ec2t", ("pending", "running", "terminated")) == []


@pytest.mark.aws
@pytest.mark.usefixtures("ec2_bootstrapped")
def test_an_unknown_ami_is_exit_2_before_any_instance(aws, tls):
    with pytest.raises(BadInput) as info:
        EC2Backend().start(spec(tls, "ec2i", size=ClusterSize(1), ami="ami-0000000000badbad"))
    assert str(info.value) == (
        "AMI ami-0000000000badbad does not exist in us-east-1: set ami in [cluster.options] to an image of that region")
    assert "RunInstances" not in aws.operations()
    assert_nothing_left("ec2i")


@pytest.mark.aws
@pytest.mark.usefixtures("ec2_bootstrapped")
def test_without_ami_and_no_ubuntu_parameter_says_set_ami(aws, tls):
    values = spec(tls, "ec2u", size=ClusterSize(1))
    values = ClusterSpec(**{**values.__dict__, "options": {"preflight": False}})
    with pytest.raises(BadInput) as info:
        EC2Backend().start(values)
    message = str(info.value)
    assert "/aws/service/canonical/ubuntu/server/24.04/stable/current/amd64/hvm/ebs-gp3/ami-id" in message
    assert message.endswith("set ami in [cluster.options]") and "\n" not in message
    assert "RunInstances" not in aws.operations()
    assert_nothing_left("ec2u")


@pytest.mark.parametrize("options, words", [
    ({"region": "Mars"}, "region = 'Mars' is not a region: use one like 'eu-west-1'"),
    ({"availability_zone": "us-east-1"}, "is not a availability zone"),
    ({"n_workers": 3}, "n_workers"),
    ({"filesystem_size": 0}, "filesystem_size"),
    ({"env_vars": {"API_TOKEN": "x"}}, "API_TOKEN looks like a secret"),
])
def test_bad_options_are_exit_2_before_any_aws_call(tls, monkeypatch, options, words):
    # Any AWS call would fail with "cannot reach AWS" (exit 3) instead.
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{closed_port()}")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "x")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "y")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    with pytest.raises(BadInput) as info:
        EC2Backend().start(spec(tls, "ec2bad", size=ClusterSize(1), **options))
    assert info.value.exit_code == 2
    assert words in str(info.value) and "\n" not in str(info.value)


def test_a_malformed_region_on_the_command_line_is_one_line_exit_2(tmp_path, monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{closed_port()}")
    project = tmp_path / "seed"
    shutil.copytree(SEED, project)
    with open(project / "flowrig.toml", "a") as toml:
        toml.write(f'\n[cluster.options]\nregion = "us_east_1"\nami = "{AMI}"\n')
    done = subprocess.run(
        [*FLOWRIG, "run", str(project), "--backend", "ec2", "--image", IMAGE, "--param", TEN],
        env=marked_env("ec2-region"), capture_output=True, text=True, timeout=240,
    )
    assert done.returncode == 2, done.stderr[-2000:]
    [line] = done.stderr.strip().splitlines()
    assert "region = 'us_east_1' is not a region" in line and "Traceback" not in done.stderr


# --- reachability of a scheduler VM -------------------------------------------------------
def test_a_closed_loopback_port_counts_as_reachable():
    port = closed_port()
    assert reach.probe("127.0.0.1", port) == "refused"
    assert reach.wait_reachable("127.0.0.1", port, time.monotonic() + 5, "the scheduler instance", "VPC x") == "refused"


def test_a_scheduler_that_never_answers_is_exit_3_with_the_layouts():
    with silent_loopback_port() as port:
        began = time.monotonic()
        with pytest.raises(InfrastructureError) as info:
            reach.wait_reachable("127.0.0.1", port, time.monotonic() + 2, "the scheduler instance",
                                 "VPC vpc-1 (CIDR 10.0.0.0/16)")
        assert time.monotonic() - began < 10
    message = str(info.value)
    assert info.value.exit_code == 3 and "\n" not in message
    assert message.startswith(f"this runner cannot reach the scheduler instance at 127.0.0.1:{port} "
                              "(nothing answered from there): it is in VPC vpc-1 (CIDR 10.0.0.0/16); ")
    assert message.endswith(reach.LAYOUTS)


# --- the Cloud itself: refusals per VM, the project's own network and identity -----------------
def refuse_run_instances(monkeypatch, code: str, message: str, *, after: int = 0) -> None:
    """moto's RunInstances refuses with ``code`` from its ``after + 1``-th call on (the
    server runs in this process)."""
    from moto.ec2.exceptions import EC2ClientError
    from moto.ec2.models.instances import InstanceBackend

    run = InstanceBackend.run_instances
    calls = []

    def refusing(self, *args, **kwargs):
        calls.append(1)
        if len(calls) > after:
            raise EC2ClientError(code, message)
        return run(self, *args, **kwargs)

    monkeypatch.setattr(InstanceBackend, "run_instances", refusing)


def cloud(run_id: str, **options):
    from flowrig.backends.aws.ec2.cloud import EC2Cloud

    return EC2Cloud(run_id, EC2Backend().options({"ami": AMI, **options}))


def requests_for(*names: str):
    from flowrig.backends.vm.cloud import VMRequest

    return [VMRequest(name, "worker", f"#cloud-config\n# {name}\n") for name in names]


@pytest.mark.aws
@pytest.mark.usefixtures("ec2_bootstrapped")
def test_a_vm_ec2_has_no_capacity_for_is_refused_and_the_others_start(aws, monkeypatch):
    ec2 = cloud("ec2c")
    try:
        ec2.prepare(dashboard=False)
        refuse_run_instances(monkeypatch, "InsufficientInstanceCapacity",
                             "We currently do not have sufficient t3.medium capacity.", after=1)
        created = ec2.create(requests_for("flowrig-ec2c-worker-1", "flowrig-ec2c-worker-2"))
        assert list(created.started) == ["flowrig-ec2c-worker-1"]
        assert created.refused == ["flowrig-ec2c-worker-2: InsufficientInstanceCapacity: We currently do not "
                                   "have sufficient t3.medium capacity."]
        [handle] = created.started.values()
        assert ec2.observe([handle]) == {handle: Observed("running")}
        ec2.terminate([handle])
        [state] = ec2.observe([handle]).values()
        assert state.status == "stopped" and state.reason.startswith(f"instance {handle} ")
        ec2.terminate(["i-0123456789abcdef0"])  # quiet about one that does not exist
        assert ec2.network_description().startswith("VPC vpc-") and "(CIDR 172.31.0.0/16)" in (
            ec2.network_description())
    finally:
        assert ec2.delete() == []
    assert_nothing_left("ec2c")


@pytest.mark.aws
@pytest.mark.usefixtures("ec2_bootstrapped")
def test_a_refused_permission_is_exit_3_naming_the_action(aws, monkeypatch):
    ec2 = cloud("ec2x")
    try:
        ec2.prepare(dashboard=False)
        refuse_run_instances(monkeypatch, "UnauthorizedOperation", "You are not authorized to perform this operation.")
        with pytest.raises(InfrastructureError) as info:
            ec2.create(requests_for("flowrig-ec2x-worker-1"))
        assert str(info.value) == ("AWS refused starting instance flowrig-ec2x-worker-1 (ec2:RunInstances): "
                                   "UnauthorizedOperation: You are not authorized to perform this operation.")
        assert info.value.exit_code == 3
    finally:
        assert ec2.delete() == []
    assert_nothing_left("ec2x")


@pytest.mark.aws
def test_the_projects_security_group_and_instance_profile_are_used_and_left(aws, tls, monkeypatch):
    """Without the bootstrap's boundary too: the run makes no role of its own."""
    import boto3

    from flowrig.backends.aws.lease import LEASE_SECONDS_ENV, lease_until
    from tests.e2e.aws.test_aws_leftovers import listed

    ec2, iam = boto3.client("ec2"), boto3.client("iam")
    vpc = ec2.describe_vpcs()["Vpcs"][0]["VpcId"]
    subnet = sorted(s["SubnetId"] for s in ec2.describe_subnets(Filters=[{"Name": "vpc-id", "Values": [vpc]}])[
        "Subnets"])[-1]
    group = ec2.create_security_group(GroupName="team", Description="team's", VpcId=vpc)["GroupId"]
    role = iam.create_role(RoleName="team-vm", AssumeRolePolicyDocument=json.dumps({"Version": "2012-10-17",
                           "Statement": []}))["Role"]
    iam.create_instance_profile(InstanceProfileName="team-vm")
    iam.add_role_to_instance_profile(InstanceProfileName="team-vm", RoleName="team-vm")
    # No resource of the run's own holds the lease: its instances do, renewed every 0.4 s.
    monkeypatch.setenv(LEASE_SECONDS_ENV, "2")
    with local_scheduler(tls, workers=1) as scheduler:
        started = EC2Backend().start(spec(
            tls, "ec2o", size=ClusterSize(1), scheduler_address=scheduler.scheduler_address, subnet_id=subnet,
            security_groups=[group], iam_instance_profile={"Name": "team-vm"}, use_private_ip=False,
        ))
        try:
            now = held("ec2o")
            assert now["security_groups"] == [] and now["roles"] == [] and now["instance_profiles"] == []
            [instance] = now["instances"]
            assert instance["SubnetId"] == subnet
            assert [g["GroupId"] for g in instance["NetworkInterfaces"][0]["Groups"]] == [group]
            assert instance["IamInstanceProfile"]["Arn"].endswith("instance-profile/team-vm")
            [form] = aws.query_requests("RunInstances")
            assert form["NetworkInterface.1.AssociatePublicIpAddress"] == ["true"]
            [secret_arn] = now["secrets"]
            policy = json.loads(boto3.client("secretsmanager").get_resource_policy(SecretId=secret_arn)[
                "ResourcePolicy"])
            assert policy["Statement"][0]["Principal"] == {"AWS": role["Arn"]}
            assert iam.list_role_policies(RoleName="team-vm")["PolicyNames"] == []  # the project's: untouched
            created_lease = lease_until(tags(instance["Tags"]))
            time.sleep(4)
            assert listed("ec2o") is None
            [instance] = instances("ec2o")
            assert lease_until(tags(instance["Tags"])) > created_lease
        finally:
            started.close()
    assert_nothing_left("ec2o")
    assert ec2.describe_security_groups(GroupIds=[group])["SecurityGroups"]
    assert [r["RoleName"] for r in iam.get_instance_profile(InstanceProfileName="team-vm")["InstanceProfile"][
        "Roles"]] == ["team-vm"]
