"""GPU and ARM64 workers: the task definitions, RunTask and RunInstances requests they
render, checked against botocore's own models; the one-line refusals of a shape that
cannot run (GPUs on Fargate, a type without GPUs, an architecture the image lacks,
ARM64 on Fargate Spot), all from the options and what AWS describes, in process."""

from __future__ import annotations

from typing import Any

import pytest

from flowrig.backends.aws import instance_types
from flowrig.backends.aws.ecs import ECSBackend, FargateBackend, shapes, taskdefs, validate
from flowrig.backends.aws.ecs.launcher import ECSLauncher, TaskSettings
from flowrig.backends.aws.ecs.options import ECSOptions
from flowrig.backends.vm import cloudinit
from flowrig.backends.vm.launcher import RoleSettings, scheduler_role, worker_role
from flowrig.errors import BadInput
from flowrig.roles.commands import with_resource

CLUSTER = "arn:aws:ecs:us-east-1:123456789012:cluster/team"
IMAGE = "123456789012.dkr.ecr.us-east-1.amazonaws.com/seed:1"

#: DescribeInstanceTypes entries as EC2 (and moto 5.2.5, which ships EC2's data) gives them.
DESCRIBED = {
    "g5.xlarge": {"InstanceType": "g5.xlarge", "ProcessorInfo": {"SupportedArchitectures": ["x86_64"]},
                  "GpuInfo": {"Gpus": [{"Name": "A10G", "Manufacturer": "NVIDIA", "Count": 1}]}},
    "g5g.xlarge": {"InstanceType": "g5g.xlarge", "ProcessorInfo": {"SupportedArchitectures": ["arm64"]},
                   "GpuInfo": {"Gpus": [{"Name": "T4g", "Manufacturer": "NVIDIA", "Count": 1}]}},
    "t3.medium": {"InstanceType": "t3.medium", "ProcessorInfo": {"SupportedArchitectures": ["x86_64"]}},
    "m7g.large": {"InstanceType": "m7g.large", "ProcessorInfo": {"SupportedArchitectures": ["arm64"]}},
}


def options(**values: Any) -> ECSOptions:
    return ECSOptions(**{"cluster_arn": CLUSTER, **values})


# --- rendering, against botocore's models ------------------------------------------------------
def test_a_gpu_worker_task_definition_asks_ecs_for_the_gpus_and_dask_for_the_resource():
    opts = options(worker_gpu=2, capacity_provider="gpu-cp", cpu_architecture="arm64",
                   worker_extra_args=["--resources", "MEMORY=8e9"])
    launch = ECSBackend()._launch(opts)
    assert not launch.fargate_workers and launch.cpu_architecture == "ARM64"
    settings = taskdefs.TaskDefinitionSettings(
        image=IMAGE, name="run1", region="us-east-1", log_group="/flowrig/run1", compatibilities=("EC2",),
        cpu_architecture=launch.cpu_architecture, worker_gpu=opts.worker_gpu, worker_args=tuple(launch.worker_args),
    )
    params = taskdefs.render_task_definition("worker", settings)
    validate.check_task_definition(params)  # botocore's RegisterTaskDefinition model
    [container] = params["containerDefinitions"]
    assert params["requiresCompatibilities"] == ["EC2"]
    assert params["runtimePlatform"] == {"cpuArchitecture": "ARM64", "operatingSystemFamily": "LINUX"}
    assert container["resourceRequirements"] == [{"type": "GPU", "value": "2"}]
    # The project's own resources stay beside GPU, in one --resources flag Dask reads.
    command = container["command"]
    assert command.count("--resources") == 1
    assert command[command.index("--resources") + 1] == "MEMORY=8e9 GPU=2"
    # The scheduler asks for no GPU.
    scheduler = taskdefs.render_task_definition("scheduler", settings)["containerDefinitions"][0]
    assert "resourceRequirements" not in scheduler


def test_without_gpus_the_task_definition_has_no_resource_requirements():
    params = taskdefs.render_task_definition("worker", taskdefs.TaskDefinitionSettings(
        image=IMAGE, name="run1", region="us-east-1", log_group="/g"))
    assert "resourceRequirements" not in params["containerDefinitions"][0]


def test_with_resource_replaces_its_own_name_and_keeps_the_rest():
    assert with_resource([], "GPU", 1) == ["--resources", "GPU=1"]
    assert with_resource(["--resources", "GPU=4,foo=2"], "GPU", 1) == ["--resources", "foo=2 GPU=1"]
    assert with_resource(["--resources=foo=2"], "GPU", 3) == ["--resources=foo=2 GPU=3"]


class _ECS:
    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []

    def run_task(self, **kwargs: Any) -> dict[str, Any]:
        self.calls.append(kwargs)
        return {"tasks": [{"taskArn": f"arn:aws:ecs:us-east-1:123456789012:task/team/{n:032x}"}
                          for n in range(kwargs["count"])], "failures": []}


class _Session:
    region_name = "us-east-1"

    def __init__(self) -> None:
        self.ecs = _ECS()

    def client(self, service: str) -> Any:
        assert service == "ecs"
        return self.ecs


@pytest.mark.parametrize("provider, fargate", [("gpu-cp", False), ("", True), ("", False)])
def test_run_task_starts_workers_on_the_capacity_provider(provider, fargate):
    session = _Session()
    settings = TaskSettings(
        cluster_arn=CLUSTER, scheduler_task_definition="s:1", worker_task_definition="w:1", subnets=["subnet-1"],
        security_groups=["sg-1"], started_by="flowrig-run1", scheduler_command=["dask-scheduler"],
        worker_args=["--resources", "GPU=1"], fargate=fargate, scheduler_fargate=True, capacity_provider=provider,
    )
    launcher = ECSLauncher(session, settings)  # type: ignore[arg-type]
    launcher.start_workers("tls://10.0.0.1:8786", 2)
    launcher.start_scheduler()
    worker, scheduler = session.ecs.calls
    for call in (worker, scheduler):
        validate.check_run_task(call)  # botocore's RunTask model
    if provider:
        assert worker["capacityProviderStrategy"] == [{"capacityProvider": "gpu-cp", "weight": 1}]
        assert "launchType" not in worker
    else:
        assert "capacityProviderStrategy" not in worker
        assert worker.get("launchType") == ("FARGATE" if fargate else None)
    # The scheduler never goes to the workers' capacity provider.
    assert scheduler["launchType"] == "FARGATE" and "capacityProviderStrategy" not in scheduler
    command = worker["overrides"]["containerOverrides"][0]["command"]
    assert command[-2:] == ["--resources", "GPU=1"]


def test_ec2_run_instances_of_a_gpu_worker_match_the_ec2_api_and_its_cloud_init_gives_the_gpus():
    import botocore.session
    from botocore.validate import ParamValidator

    from flowrig.backends.aws.ec2.instances import instance_parameters

    settings = RoleSettings(run_id="run1", image=IMAGE, worker_gpu=1,
                            worker_args=tuple(with_resource([], "GPU", 1)))
    worker = worker_role(settings, "tls://10.0.0.1:8786", "flowrig-run1-worker-1")
    text = cloudinit.render(worker)
    assert cloudinit.parse(text) == worker  # the role round-trips, gpus included
    assert worker.gpus and "--gpus all" in " ".join(cloudinit.container_arguments(worker))
    assert worker.command[-2:] == ("--resources", "GPU=1")
    assert "--gpus" not in cloudinit.container_arguments(scheduler_role(settings))
    params = instance_parameters(
        name="flowrig-run1-worker-1", image_id="ami-0123456789abcdef0", instance_type="g5.xlarge", user_data=text,
        subnet_id="subnet-1", security_groups=["sg-1"], profile={"Arn": "arn:aws:iam::1:instance-profile/p"},
        root_device="/dev/sda1", filesystem_size=40, tags={"flowrig-run-id": "run1"}, public_ip=False, key_name=None,
    )
    model = botocore.session.get_session().get_service_model("ec2").operation_model("RunInstances").input_shape
    report = ParamValidator().validate(params, model)
    assert not report.has_errors(), report.generate_report()


def test_a_vm_worker_without_gpus_gets_none():
    worker = worker_role(RoleSettings(run_id="run1", image=IMAGE), "tls://10.0.0.1:8786", "w-1")
    assert not worker.gpus and "--gpus" not in cloudinit.container_arguments(worker)


# --- refusals from the options alone -------------------------------------------------------------
@pytest.mark.parametrize("backend, values, words", [
    (FargateBackend, {"worker_gpu": 1}, ["worker_gpu = 1: Fargate has no GPUs", "use the ecs backend",
                                         "capacity_provider"]),
    (ECSBackend, {"worker_gpu": 1, "fargate_workers": True, "fargate_scheduler": True},
     ["Fargate has no GPUs", "fargate_workers = false"]),
    (ECSBackend, {"worker_gpu": 1}, ["worker_gpu = 1 needs capacity_provider", "g5.xlarge"]),
    (ECSBackend, {"worker_gpu": 1, "capacity_provider": "cp", "worker_task_definition_arn": "arn:td"},
     ["worker_task_definition_arn names one of yours", "resourceRequirements"]),
    (ECSBackend, {"capacity_provider": "FARGATE_SPOT"}, ["is Fargate's", "spot = true"]),
    (ECSBackend, {"capacity_provider": "cp", "fargate_workers": True, "fargate_scheduler": True},
     ["starts workers on EC2 instances, but they run on Fargate"]),
    (FargateBackend, {"cpu_architecture": "ARM64", "fargate_spot": True},
     ["Fargate Spot runs X86_64 tasks only", "cpu_architecture = ARM64", "drop fargate_spot"]),
    (FargateBackend, {"cpu_architecture": "ARM64", "spot": "fallback"}, ["Fargate Spot runs X86_64", "drop spot"]),
])
def test_a_shape_that_cannot_run_is_one_line_naming_the_fix(backend, values, words):
    opts = ECSOptions(**({} if backend is FargateBackend else {"cluster_arn": CLUSTER}), **values)
    with pytest.raises(BadInput) as info:
        backend()._launch(opts)
    message = str(info.value)
    assert "\n" not in message and info.value.exit_code == 2
    for word in words:
        assert word in message, (word, message)


def test_cpu_architecture_accepts_the_image_names_and_refuses_others():
    assert ECSOptions(cpu_architecture="arm64").cpu_architecture == "ARM64"
    assert ECSOptions(cpu_architecture="amd64").cpu_architecture == "X86_64"
    assert ECSOptions().cpu_architecture is None
    with pytest.raises(ValueError):
        ECSOptions(cpu_architecture="s390x")


# --- the image's architecture ----------------------------------------------------------------------
def test_the_run_follows_the_image_unless_the_option_says_otherwise():
    assert shapes.choose_architecture(None, ("arm64",), "its image index in ECR", IMAGE) == "ARM64"
    assert shapes.choose_architecture(None, ("amd64", "arm64"), "index", IMAGE) == "X86_64"
    assert shapes.choose_architecture(None, (), "not known", IMAGE) == "X86_64"
    assert shapes.choose_architecture("ARM64", ("amd64", "arm64"), "index", IMAGE) == "ARM64"
    assert shapes.choose_architecture("ARM64", (), "not known", IMAGE) == "ARM64"
    with pytest.raises(BadInput) as info:
        shapes.choose_architecture("ARM64", ("amd64",), "its image index in ECR", IMAGE)
    assert str(info.value) == (
        f"the image {IMAGE} is linux/amd64 (its image index in ECR) but cpu_architecture = ARM64: drop "
        "cpu_architecture (the run follows the image) or build it with flowrig build --platform linux/arm64")
    with pytest.raises(BadInput, match="which ECS does not run"):
        shapes.choose_architecture(None, ("s390x",), "the local engine's copy", IMAGE)


def test_arm64_from_the_image_on_fargate_spot_is_refused_naming_where_it_came_from():
    with pytest.raises(BadInput) as info:
        shapes.check_spot("ARM64", "the image's architecture, from its image index in ECR",
                          ECSOptions(fargate_spot=True), fargate_workers=True)
    assert "from its image index in ECR" in str(info.value)
    shapes.check_spot("ARM64", "x", ECSOptions(fargate_spot=True), fargate_workers=False)  # EC2 capacity: no Spot rule
    shapes.check_spot("X86_64", "x", ECSOptions(fargate_spot=True), fargate_workers=True)


# --- instance types -----------------------------------------------------------------------------------
def test_instance_shapes_read_from_describe_instance_types():
    g5g = instance_types.shape_of(DESCRIBED["g5g.xlarge"])
    assert (g5g.gpus, g5g.gpu_name, g5g.archs) == (1, "NVIDIA T4g", ("arm64",))
    t3 = instance_types.shape_of(DESCRIBED["t3.medium"])
    assert (t3.gpus, t3.archs) == (0, ("amd64",))


def test_a_type_without_enough_gpus_or_of_another_architecture_is_refused():
    where = "[cluster.options] worker_instance_type ="
    with pytest.raises(BadInput) as info:
        instance_types.check_gpus(instance_types.shape_of(DESCRIBED["t3.medium"]), 1, where)
    assert str(info.value) == (
        "[cluster.options] worker_instance_type = t3.medium has no GPU but worker_gpu = 1: use a GPU instance type "
        "(g5.xlarge, g6.xlarge for amd64), or lower worker_gpu")
    with pytest.raises(BadInput, match="has 1 GPU \\(NVIDIA A10G\\) but worker_gpu = 2"):
        instance_types.check_gpus(instance_types.shape_of(DESCRIBED["g5.xlarge"]), 2, where)
    instance_types.check_gpus(instance_types.shape_of(DESCRIBED["g5.xlarge"]), 1, where)
    instance_types.check_gpus(instance_types.shape_of(DESCRIBED["t3.medium"]), 0, where)
    with pytest.raises(BadInput) as info:
        instance_types.check_arch(instance_types.shape_of(DESCRIBED["g5g.xlarge"]), ("amd64",), where, IMAGE)
    assert str(info.value) == (
        f"{where} g5g.xlarge runs linux/arm64 but the image {IMAGE} is linux/amd64: use an instance type for "
        "amd64, or build the image with flowrig build --platform linux/arm64")
    # An index of both fits either; an image of unknown architecture is not refused.
    instance_types.check_arch(instance_types.shape_of(DESCRIBED["m7g.large"]), ("amd64", "arm64"), where, IMAGE)
    instance_types.check_arch(instance_types.shape_of(DESCRIBED["m7g.large"]), (), where, IMAGE)


# --- an ECR image's architectures -----------------------------------------------------------------
class _ECR:
    def __init__(self, manifest: dict, url: str) -> None:
        self.manifest, self.url, self.asked = manifest, url, []

    def batch_get_image(self, **kwargs: Any) -> dict[str, Any]:
        import json

        return {"images": [{"imageManifest": json.dumps(self.manifest)}]}

    def get_download_url_for_layer(self, **kwargs: Any) -> dict[str, Any]:
        self.asked.append(kwargs)
        return {"downloadUrl": self.url, "layerDigest": kwargs["layerDigest"]}


class _ECRSession:
    region_name = "us-east-1"

    def __init__(self, ecr: _ECR) -> None:
        self.ecr = ecr

    def client(self, service: str) -> Any:
        return self.ecr


SINGLE = {"schemaVersion": 2, "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
          "config": {"mediaType": "application/vnd.docker.container.image.v1+json", "size": 1000,
                     "digest": "sha256:" + "c" * 64}, "layers": []}


def test_a_single_manifest_is_read_from_its_config_blob_over_https_only(monkeypatch):
    import io
    import json
    import urllib.request

    from flowrig.backends.aws.preflight.image import ecr_architectures

    opened: list[str] = []

    def urlopen(url: str, timeout: float) -> Any:
        opened.append(url)
        return io.BytesIO(json.dumps({"architecture": "arm64", "os": "linux"}).encode())

    monkeypatch.setattr(urllib.request, "urlopen", urlopen)
    ecr = _ECR(SINGLE, "https://prod-us-east-1-starport-layer-bucket.s3.amazonaws.com/blob")
    found = ecr_architectures(_ECRSession(ecr), IMAGE)  # type: ignore[arg-type]
    assert found.held == ("arm64",) and found.source == "its config in ECR"
    assert ecr.asked == [{"registryId": "123456789012", "repositoryName": "seed", "layerDigest": "sha256:" + "c" * 64}]
    # An address that is not https is never fetched: the architecture is then not known.
    ecr = _ECR(SINGLE, "http://169.254.169.254/latest/meta-data/")
    assert ecr_architectures(_ECRSession(ecr), IMAGE).held == ()  # type: ignore[arg-type]
    assert opened == ["https://prod-us-east-1-starport-layer-bucket.s3.amazonaws.com/blob"]
