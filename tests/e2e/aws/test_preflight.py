"""``flowrig preflight`` and the preflight step of every fargate run, against a moto
server whose VPCs, ECR images and IAM users are made to fail each check in turn.

moto models VPCs, route tables, NAT gateways, VPC endpoints, security groups, ECR
images (an OCI index is stored as given) and IAM users for real. It lacks two APIs:
``iam:SimulatePrincipalPolicy`` is answered through the tests' fault proxy by an
evaluator of the runner's real policy documents in moto's state
(tests/iam_simulate.py, on tests/iam_eval.py), and Service Quotas (moto knows ``vpc``
only) by a value the test sets. Each failing set-up is caught in exactly one line
naming the fix, exit 2, and moto's recording shows no call that creates anything.
"""

from __future__ import annotations

import json

import pytest

from tests.e2e.aws.test_ecs_backend import closed_port
from tests.iam_simulate import quota_answer, simulate_answer
from tests.iam_support import ACCOUNT, enforcement, statements_used
from tests.run_support import invoke, write_project
from tests.unit.test_ecs_iam import printed_policy

pytestmark = [pytest.mark.aws, pytest.mark.filterwarnings("ignore:Scheduler already contains a plugin")]

REGISTRY = f"{ACCOUNT}.dkr.ecr.us-east-1.amazonaws.com"
IMAGE = f"{REGISTRY}/seed:2"
VPC_CIDR = "10.20.0.0/16"
INTERFACES = ("ecr.api", "ecr.dkr", "logs", "secretsmanager")
ON_DEMAND = "L-3032A538"
#: Operations that make or change something: none may happen before preflight passed.
CREATING = ("Create", "Run", "Register", "Put", "Authorize", "Attach", "Allocate", "Associate", "Tag")


def _index(*archs: str) -> str:
    return json.dumps({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json", "size": 1000,
                       "digest": "sha256:" + f"{n}" * 64, "platform": {"os": "linux", "architecture": arch}}
                      for n, arch in enumerate(archs, 1)],
    })


def make_network(*, egress: str = "nat", endpoints: tuple[str, ...] = (), scheduler_port: bool = True) -> dict:
    """A VPC with one private subnet (its own route table), a NAT gateway route when
    ``egress == "nat"``, the VPC endpoints named, and the project's security group."""
    import boto3

    ec2 = boto3.client("ec2")
    vpc = ec2.create_vpc(CidrBlock=VPC_CIDR)["Vpc"]["VpcId"]
    subnet = ec2.create_subnet(VpcId=vpc, CidrBlock="10.20.1.0/24", AvailabilityZone="us-east-1a")["Subnet"]["SubnetId"]
    table = ec2.create_route_table(VpcId=vpc)["RouteTable"]["RouteTableId"]
    ec2.associate_route_table(RouteTableId=table, SubnetId=subnet)
    if egress == "nat":
        public = ec2.create_subnet(VpcId=vpc, CidrBlock="10.20.0.0/24", AvailabilityZone="us-east-1a")["Subnet"]
        gateway = ec2.create_internet_gateway()["InternetGateway"]["InternetGatewayId"]
        ec2.attach_internet_gateway(InternetGatewayId=gateway, VpcId=vpc)
        address = ec2.allocate_address(Domain="vpc")["AllocationId"]
        nat = ec2.create_nat_gateway(SubnetId=public["SubnetId"], AllocationId=address)["NatGateway"]["NatGatewayId"]
        ec2.create_route(RouteTableId=table, DestinationCidrBlock="0.0.0.0/0", NatGatewayId=nat)
    group = ec2.create_security_group(GroupName="team", Description="team", VpcId=vpc)["GroupId"]
    rules = [{"IpProtocol": "tcp", "FromPort": 0, "ToPort": 65535, "UserIdGroupPairs": [{"GroupId": group}]}]
    if scheduler_port:
        rules.append({"IpProtocol": "tcp", "FromPort": 8786, "ToPort": 8786, "IpRanges": [{"CidrIp": VPC_CIDR}]})
    ec2.authorize_security_group_ingress(GroupId=group, IpPermissions=rules)
    if endpoints:
        guard = ec2.create_security_group(GroupName="endpoints", Description="endpoints", VpcId=vpc)["GroupId"]
        ec2.authorize_security_group_ingress(GroupId=guard, IpPermissions=[
            {"IpProtocol": "tcp", "FromPort": 443, "ToPort": 443, "IpRanges": [{"CidrIp": VPC_CIDR}]}])
        for service in endpoints:
            name = f"com.amazonaws.us-east-1.{service}"
            if service == "s3":
                ec2.create_vpc_endpoint(VpcId=vpc, ServiceName=name, VpcEndpointType="Gateway", RouteTableIds=[table])
            else:
                ec2.create_vpc_endpoint(VpcId=vpc, ServiceName=name, VpcEndpointType="Interface", SubnetIds=[subnet],
                                        SecurityGroupIds=[guard], PrivateDnsEnabled=True)
    return {"vpc": vpc, "subnet": subnet, "group": group}


@pytest.fixture
def account(aws, fault_proxy, monkeypatch):
    """The image ``seed:2`` in ECR for linux/amd64; a runner user holding exactly the
    printed fargate policy (or ``policy``) whose keys become the credentials; the two
    absent APIs answered by the proxy. ``begin()`` clears moto's recording, so what the
    test asserts is what preflight called."""
    import boto3

    ecr = boto3.client("ecr")
    ecr.create_repository(repositoryName="seed")
    ecr.put_image(repositoryName="seed", imageTag="2", imageManifest=_index("amd64"),
                  imageManifestMediaType="application/vnd.oci.image.index.v1+json")
    simulated: list[dict] = []
    fault_proxy.answer("SimulatePrincipalPolicy", simulate_answer(calls=simulated))
    fault_proxy.answer("GetServiceQuota", quota_answer({ON_DEMAND: 100}))
    client = boto3.client("iam")

    class Account:
        proxy = fault_proxy
        calls = simulated

        def runner(self, policy: dict | None = None) -> None:
            client.create_user(UserName="runner")
            client.put_user_policy(UserName="runner", PolicyName="flowrig-runner",
                                   PolicyDocument=json.dumps(policy or printed_policy()))
            key = client.create_access_key(UserName="runner")["AccessKey"]
            monkeypatch.setenv("AWS_ACCESS_KEY_ID", key["AccessKeyId"])
            monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", key["SecretAccessKey"])

        def begin(self) -> None:
            aws.reset_recording()

        def created(self) -> list[str]:
            operations = aws.operations()
            # The recording holds preflight's own reads: its silence on creating calls means something.
            assert "DescribeRouteTables" in operations, operations
            return [op for op in operations if op.startswith(CREATING)]

    return Account()


def project(tmp_path, network: dict, **options) -> str:
    values = {"vpc": network["vpc"], "subnets": [network["subnet"]], "security_groups": [network["group"]], **options}
    lines = "\n".join(f"{key} = {json.dumps(value)}" for key, value in values.items())
    root = write_project(tmp_path / "project", "def main():\n    pass\n", (
        f'flow = "flow.py:main"\n[cluster]\nbackend = "fargate"\nn_workers = 2\nimage = "{IMAGE}"\n'
        f"[cluster.options]\n{lines}\n"))
    return str(root)


def preflight(account, *args: str):
    account.begin()
    done = invoke("preflight", *args)
    assert account.created() == [], account.created()
    return done


def failed_lines(done) -> list[str]:
    return [line for line in done.stdout.splitlines() if line.startswith("failed: ")]


# --- a correct set-up --------------------------------------------------------------------------
def test_a_correct_set_up_passes_and_json_lists_every_check(tmp_path, account):
    account.runner()
    root = project(tmp_path, make_network())
    done = preflight(account, root)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.splitlines()[-1] == "preflight fargate: 0 failed, 8 passed, 0 not checked; ready", done.stdout
    report = json.loads(preflight(account, root, "--output", "json").stdout)
    assert report["ok"] is True and report["max_workers"] == 2
    assert [(c["name"], c["ok"]) for c in report["checks"]] == [
        ("image", True), ("image-arch", True), ("network", True),
        ("security-group", True), ("security-group", True), ("security-group", True),
        ("rights", True), ("quota", True)]
    # The simulator was asked about the runner itself, with the run's own tags.
    assert {c["principal"] for c in account.calls} == {f"arn:aws:iam::{ACCOUNT}:user/runner"}
    asked = {a for c in account.calls for a in c["actions"]}
    assert {"ecs:RunTask", "ecs:RegisterTaskDefinition", "iam:PassRole", "secretsmanager:CreateSecret"} <= asked


def test_endpoints_instead_of_a_nat_gateway_pass(tmp_path, account):
    account.runner()
    done = preflight(account, project(tmp_path, make_network(egress="none", endpoints=(*INTERFACES, "s3"))))
    assert done.returncode == 0, done.stdout
    assert "0 failed, 13 passed" in done.stdout


# --- each failure, one line ---------------------------------------------------------------------
FAILURES = {
    "no route to ECR": (dict(egress="none"), {}, ["cannot reach ECR", "no VPC endpoints", "NAT gateway"]),
    "a missing endpoint": (dict(egress="none", endpoints=("ecr.api", "logs", "secretsmanager", "s3")), {},
                           ["no ecr.dkr endpoint", "aws ec2 create-vpc-endpoint", "ecr.dkr"]),
    "no scheduler port": (dict(scheduler_port=False), {}, ["8786", "authorize-security-group-ingress"]),
    "image absent": ({}, {"image": "absent"}, ["not in ECR", "docker push"]),
    "arch mismatch": ({}, {"cpu_architecture": "ARM64"}, ["linux/amd64", "linux/arm64", "cpu_architecture"]),
    "missing right": ({}, {"policy": "no RunTask"}, ["ecs:RunTask", "flowrig aws iam-policy --backend fargate"]),
    "vCPU quota": ({}, {"quota": 4}, ["Fargate On-Demand vCPU", "is 4", "9 vCPUs", "request-service-quota-increase"]),
}


@pytest.mark.parametrize("case", FAILURES, ids=list(FAILURES))
def test_each_failure_is_one_line_naming_the_fix_before_anything_is_created(tmp_path, account, case):
    network, change, words = FAILURES[case]
    policy = printed_policy()
    if change.get("policy"):
        policy["Statement"] = [s for s in policy["Statement"] if s["Sid"] != "RunOwnTaskDefinitions"]
    account.runner(policy)
    args = []
    if change.get("image"):
        args = ["--image", f"{REGISTRY}/seed:3"]
    if change.get("quota"):
        account.proxy.answer("GetServiceQuota", quota_answer({ON_DEMAND: change["quota"]}))
    options = {"cpu_architecture": change["cpu_architecture"]} if "cpu_architecture" in change else {}
    root = project(tmp_path, make_network(**network), **options)
    if change.get("quota"):
        root_toml = tmp_path / "project" / "flowrig.toml"
        root_toml.write_text(root_toml.read_text().replace("n_workers = 2", "n_workers = 8"))
    done = preflight(account, root, *args)
    assert done.returncode == 2, done.stdout + done.stderr
    [line] = failed_lines(done)
    for word in words:
        assert word in line, (word, line)
    assert done.stdout.splitlines()[-1].startswith("preflight fargate: 1 failed")


def test_unreachable_aws_is_one_line_and_exit_3(tmp_path, account, monkeypatch):
    account.runner()
    root = project(tmp_path, make_network())
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{closed_port()}")
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    done = invoke("preflight", root)
    assert done.returncode == 3, done.stdout + done.stderr
    [line] = done.stderr.splitlines()
    assert line.startswith("flowrig: error: cannot reach AWS while "), line


# --- the start of a run -------------------------------------------------------------------------
def test_a_fargate_run_stops_at_preflight_with_nothing_created(tls, account):
    from flowrig.backends.aws.ecs import FargateBackend
    from flowrig.backends.base import ClusterSpec
    from flowrig.errors import BadInput
    from flowrig.project.sizing import ClusterSize

    account.runner()
    network = make_network(egress="none")
    options = {"vpc": network["vpc"], "subnets": [network["subnet"]], "security_groups": [network["group"]]}
    account.begin()
    with pytest.raises(BadInput) as info:
        FargateBackend().start(ClusterSpec(run_id="pre1", size=ClusterSize(2), tls=tls, image=IMAGE, options=options))
    assert info.value.exit_code == 2 and "\n" not in str(info.value)
    assert str(info.value).startswith(f"preflight: 1 check failed, nothing was created; first: network "
                                      f"{network['subnet']}: subnet {network['subnet']} cannot reach ECR")
    assert account.created() == []
    # The run's own names were checked: its id stands in the planned calls.
    assert any("flowrig-pre1" in r for c in account.calls for r in c["resources"])


def test_the_printed_policy_allows_every_preflight_read(tmp_path, account, aws, iam_enforced):
    account.runner()
    root = project(tmp_path, make_network())
    enforcement(aws.endpoint, "0")
    try:
        done = preflight(account, root)
    finally:
        enforcement(aws.endpoint, "inf")
    assert done.returncode == 0, done.stdout + done.stderr
    assert iam_enforced.refused() == []
    used = statements_used(printed_policy(), iam_enforced, f"arn:aws:iam::{ACCOUNT}:user/runner")
    # Simulation and quotas are answered by the proxy (moto has neither); a user needs no role path.
    assert used["PreflightNetwork"] and used["PreflightImage"], used


# --- ec2: the same checks ------------------------------------------------------------------------
def test_ec2_checks_the_network_image_rights_and_quotas_of_its_instances(tmp_path, account):
    from tests.unit.test_ec2_iam import printed_policy as printed

    account.runner(printed("--backend", "ec2"))
    account.proxy.answer("GetServiceQuota", quota_answer({"L-1216C47A": 64}))
    network = make_network()

    def ec2_project(instance_type: str) -> str:
        root = write_project(tmp_path / instance_type, "def main():\n    pass\n", (
            f'flow = "flow.py:main"\n[cluster]\nbackend = "ec2"\nn_workers = 2\nimage = "{IMAGE}"\n'
            f'[cluster.options]\nvpc = "{network["vpc"]}"\nsubnet_id = "{network["subnet"]}"\n'
            f'security_groups = ["{network["group"]}"]\ninstance_type = "{instance_type}"\n'))
        return str(root)

    done = preflight(account, ec2_project("t3.medium"), "--output", "json")
    assert done.returncode == 0, done.stdout + done.stderr
    checks = json.loads(done.stdout)["checks"]
    assert [(c["name"], c["ok"]) for c in checks] == [
        ("image", True), ("image-arch", True), ("network", True),
        ("security-group", True), ("security-group", True), ("security-group", True),
        ("rights", True), ("quota", True), ("instance-type", True)]
    # 2 workers and the scheduler, t3.medium's 2 vCPUs each, against the standard family's quota.
    [quota] = [c for c in checks if c["name"] == "quota"]
    assert "the run may use 6 vCPUs" in quota["line"] and quota["subject"] == "ec2/L-1216C47A"
    asked = {a for c in account.calls for a in c["actions"]}
    assert {"ec2:RunInstances", "iam:PassRole", "iam:CreateInstanceProfile"} <= asked
    # A Graviton instance type for an amd64-only image: one line.
    graviton = preflight(account, ec2_project("t4g.medium"))
    assert graviton.returncode == 2, graviton.stdout
    [line] = failed_lines(graviton)
    assert line.startswith(f"failed: image-arch {IMAGE}: the image holds linux/amd64, the run needs linux/arm64 "
                           "(instance type t4g.medium)"), line


def test_a_policy_from_before_preflight_gets_lines_not_checked_never_a_refusal(tmp_path, account, aws, iam_enforced):
    """A runner whose policy predates the checks (no Preflight* statements) still starts:
    what it may not read is "not checked", so turning preflight on broke no run."""
    older = printed_policy()
    older["Statement"] = [s for s in older["Statement"] if not s["Sid"].startswith("Preflight")]
    account.runner(older)
    root = project(tmp_path, make_network())
    enforcement(aws.endpoint, "0")
    try:
        done = preflight(account, root, "--output", "json")
    finally:
        enforcement(aws.endpoint, "inf")
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads(done.stdout)
    assert report["ok"] is True
    unchecked = {c["name"] for c in report["checks"] if c["ok"] is None}
    assert {"image", "network"} <= unchecked, report["checks"]
    assert not [c for c in report["checks"] if c["ok"] is False]
