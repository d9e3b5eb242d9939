"""GPU and ARM64 workers against a real moto server: a shape that cannot run is exit 2
before anything is created (with preflight off: these checks always run), and a GPU run
on an ECS capacity provider registers and starts what it should.

moto keeps an OCI image index as given (its platforms are the image's), and
DescribeInstanceTypes answers EC2's own data (GpuInfo, SupportedArchitectures). ECS
capacity providers, Auto Scaling groups and launch templates are moto's for real. moto
does not place tasks by GPU: the GPU run asserts the request and what moto stored, not a
GPU placement.
"""

from __future__ import annotations

import json

import pytest

from flowrig.backends.aws.ec2.backend import EC2Backend
from flowrig.backends.aws.ecs import ECSBackend, FargateBackend
from flowrig.backends.base import ClusterSpec
from flowrig.errors import BadInput
from flowrig.project.sizing import ClusterSize
from tests.e2e.aws.test_ecs_backend import snapshot
from tests.e2e.aws.test_preflight import CREATING, _index
from tests.tls_support import local_scheduler

pytestmark = [pytest.mark.aws, pytest.mark.filterwarnings("ignore:Scheduler already contains a plugin")]

REGISTRY = "123456789012.dkr.ecr.us-east-1.amazonaws.com"
AMI = "ami-1e749f67"


def push(tag: str, *archs: str) -> str:
    """An image index of ``archs`` in ECR as ``seed:TAG``; its reference."""
    import boto3

    ecr = boto3.client("ecr")
    try:
        ecr.create_repository(repositoryName="seed")
    except ecr.exceptions.RepositoryAlreadyExistsException:
        pass
    ecr.put_image(repositoryName="seed", imageTag=tag, imageManifest=_index(*archs),
                  imageManifestMediaType="application/vnd.oci.image.index.v1+json")
    return f"{REGISTRY}/seed:{tag}"


def capacity_provider(instance_type: str, name: str = "gpu-cp") -> str:
    """A cluster ``team`` (made once) whose capacity provider ``name`` is an Auto Scaling
    group of ``instance_type`` (by its launch template), with one registered container
    instance of that type; the cluster's ARN."""
    import boto3

    ec2, autoscaling, ecs = (boto3.client(s) for s in ("ec2", "autoscaling", "ecs"))
    subnet = ec2.describe_subnets()["Subnets"][0]["SubnetId"]
    ec2.create_launch_template(LaunchTemplateName=name, LaunchTemplateData={"ImageId": AMI, "InstanceType": instance_type})
    autoscaling.create_auto_scaling_group(
        AutoScalingGroupName=name, LaunchTemplate={"LaunchTemplateName": name, "Version": "$Latest"},
        MinSize=0, MaxSize=2, VPCZoneIdentifier=subnet)
    group = autoscaling.describe_auto_scaling_groups(AutoScalingGroupNames=[name])["AutoScalingGroups"][0]
    ecs.create_capacity_provider(name=name, autoScalingGroupProvider={"autoScalingGroupArn": group["AutoScalingGroupARN"]})
    found = [c for c in ecs.describe_clusters(clusters=["team"])["clusters"] if c["status"] == "ACTIVE"]
    cluster = found[0]["clusterArn"] if found else ecs.create_cluster(clusterName="team")["cluster"]["clusterArn"]
    held = found[0].get("capacityProviders") or [] if found else []
    ecs.put_cluster_capacity_providers(cluster="team", capacityProviders=[*held, name], defaultCapacityProviderStrategy=[])
    # moto places an Auto Scaling group's tasks only on registered container instances.
    instance = ec2.run_instances(ImageId=AMI, MinCount=1, MaxCount=1, InstanceType=instance_type)["Instances"][0]
    ecs.register_container_instance(cluster="team", instanceIdentityDocument=json.dumps({
        "instanceId": instance["InstanceId"], "region": "us-east-1", "availabilityZone": "us-east-1a",
        "instanceType": instance_type}))
    return cluster


def ecs_spec(tls, image: str, **options) -> ClusterSpec:
    return ClusterSpec(run_id="shape1", size=ClusterSize(1), tls=tls, image=image,
                       options={"preflight": False, **options}, worker_threads=1)


def refused(aws, backend, spec: ClusterSpec) -> str:
    """The one-line BadInput of starting ``spec`` on ``backend``, after asserting that
    nothing was created."""
    aws.reset_recording()
    with pytest.raises(BadInput) as info:
        backend().start(spec)
    operations = aws.operations()
    assert [op for op in operations if op.startswith(CREATING)] == [], operations
    message = str(info.value)
    assert info.value.exit_code == 2 and "\n" not in message
    return message


def test_fargate_runs_of_an_image_of_another_architecture_or_arm64_on_spot_are_refused(aws, tls):
    amd64, arm64 = push("amd64", "amd64"), push("arm64", "arm64")
    message = refused(aws, FargateBackend, ecs_spec(tls, amd64, cpu_architecture="ARM64"))
    assert message == (
        f"the image {amd64} is linux/amd64 (its image index in ECR) but cpu_architecture = ARM64: drop "
        "cpu_architecture (the run follows the image) or build it with flowrig build --platform linux/arm64")
    # ARM64 comes from the image this time: Fargate Spot is X86_64 only.
    message = refused(aws, FargateBackend, ecs_spec(tls, arm64, spot="fallback"))
    assert message.startswith("Fargate Spot runs X86_64 tasks only, and the workers are ARM64 (the image's "
                              "architecture, from its image index in ECR): drop spot")


def test_an_ecs_capacity_provider_without_gpus_of_another_architecture_or_not_the_clusters_is_refused(
        aws, tls):
    # No bootstrap: the refusal comes before the run's own execution role is looked for.
    capacity_provider("t3.medium", "cpu")
    cluster = capacity_provider("g5g.xlarge", "arm")
    image = push("one", "amd64")
    cases = {
        "cpu": "[cluster.options] capacity_provider = 'cpu' runs t3.medium has no GPU but worker_gpu = 1: use a GPU "
               "instance type (g5.xlarge, g6.xlarge for amd64), or lower worker_gpu",
        "arm": f"[cluster.options] capacity_provider = 'arm' runs g5g.xlarge runs linux/arm64 but the image {image} "
               "is linux/amd64: use an instance type for amd64, or build the image with flowrig build --platform "
               "linux/arm64",
        "other": f"[cluster.options] capacity_provider = 'other' is not a capacity provider of cluster {cluster} "
                 "(it has cpu, arm): add it with aws ecs put-cluster-capacity-providers, or name one of those",
    }
    for provider, line in cases.items():
        message = refused(aws, ECSBackend, ecs_spec(
            tls, image, cluster_arn=cluster, capacity_provider=provider, worker_gpu=1, fargate_scheduler=True))
        assert message == line


def test_ec2_instance_types_without_gpus_of_another_architecture_or_unknown_are_refused(aws, tls):
    image = push("ec2", "amd64")
    cases = [
        ({"worker_instance_type": "t3.medium", "worker_gpu": 1},
         "[cluster.options] worker_instance_type = t3.medium has no GPU but worker_gpu = 1"),
        ({"instance_type": "g5g.xlarge"}, "[cluster.options] instance_type = g5g.xlarge runs linux/arm64 but the image"),
        ({"instance_type": "zz9.huge"}, "EC2 in us-east-1 knows no instance type among zz9.huge"),
    ]
    for options, words in cases:
        spec = ClusterSpec(run_id="shape2", size=ClusterSize(1), tls=tls, image=image,
                           options={"ami": AMI, "preflight": False, **options})
        message = refused(aws, EC2Backend, spec)
        assert message.startswith(words), message


def test_a_gpu_run_registers_an_ec2_gpu_worker_and_starts_it_on_the_capacity_provider(bootstrapped, tls):
    import boto3

    cluster = capacity_provider("g5g.xlarge")
    # An index of both: the run takes the one the provider's instances (arm64) run.
    image = push("multi", "amd64", "arm64")
    with local_scheduler(tls, workers=1) as scheduler:
        started = ECSBackend().start(ecs_spec(
            tls, image, cluster_arn=cluster, capacity_provider="gpu-cp", worker_gpu=1, fargate_scheduler=True,
            scheduler_address=scheduler.scheduler_address))
        try:
            [request] = bootstrapped.requests("RunTask")
            body = request["body"]
            assert body["capacityProviderStrategy"] == [{"capacityProvider": "gpu-cp", "weight": 1}]
            assert "launchType" not in body
            command = body["overrides"]["containerOverrides"][0]["command"]
            assert command[command.index("--resources") + 1] == "GPU=1"
            [worker] = [d["taskDefinition"] for d in snapshot("shape1")["task_definitions"]
                        if d["taskDefinition"]["family"].endswith("worker")]
            # What moto stored is what ECS gets: EC2 capacity, the GPU, arm64.
            assert worker["requiresCompatibilities"] == ["EC2"]
            assert worker["containerDefinitions"][0]["resourceRequirements"] == [{"type": "GPU", "value": "1"}]
            assert worker["runtimePlatform"]["cpuArchitecture"] == "ARM64"
            [task] = boto3.client("ecs").describe_tasks(cluster=cluster, tasks=[
                t for t in boto3.client("ecs").list_tasks(cluster=cluster)["taskArns"]])["tasks"]
            assert task.get("capacityProviderName") == "gpu-cp"
        finally:
            started.close()
