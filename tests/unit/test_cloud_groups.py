"""Worker groups on the cloud backends, in process: each group's ECS task definition and
RunTask request checked against botocore's ECS model, each group's VM request, the pool's
book of groups, and the one-line refusals of a group that cannot run as it asks."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from flowrig.backends.aws.ecs import ECSBackend, FargateBackend, taskdefs, validate
from flowrig.backends.aws.ecs.launcher import ECSLauncher, TaskSettings
from flowrig.backends.aws.ecs.options import ECSOptions
from flowrig.backends.base import WorkerGroupSpec
from flowrig.backends.pool.groups import GroupBook
from flowrig.backends.vm import cloudinit
from flowrig.backends.vm.launcher import RoleSettings, VMLauncher
from flowrig.common.routes import worker_resources
from flowrig.errors import BadInput
from tests.unit.test_markets import StubbedECS, assert_valid_run_task, market

CLUSTER = "arn:aws:ecs:us-east-1:123456789012:cluster/team"
IMAGE = "123456789012.dkr.ecr.us-east-1.amazonaws.com/seed:1"


def group(name: str, n: int = 1, threads: int = 1, **shape: Any) -> WorkerGroupSpec:
    return WorkerGroupSpec(name, n, threads, worker_resources(name, threads, gpu=shape.get("gpu", 0)), **shape)


def rendered(backend, groups, **options: Any) -> dict[str, dict]:
    """Each group's worker task definition as the run registers it, by group."""
    launch = backend._launch(ECSOptions(**options), groups=tuple(groups))
    settings = taskdefs.TaskDefinitionSettings(
        image=IMAGE, name="run1", region="us-east-1", log_group="/flowrig/run1", sizes=launch.sizes,
        worker_args=tuple(launch.worker_args))
    out = {}
    for key, params in backend._render("worker", settings, launch, {"FLOWRIG_TLS_FROM": "secret"}, "run1"):
        validate.check_task_definition(params)  # botocore's RegisterTaskDefinition model
        out[key.split(":", 1)[1]] = params
    return out


def test_each_group_gets_a_task_definition_of_its_shape_market_and_resources():
    groups = [group("cpu", 2, threads=2, cpu=2.0, memory_mib=8192), group("spot", market="fallback"),
              group("gpu", gpu=2, options={"fargate_workers": False, "capacity_provider": "gpu-cp"})]
    defs = rendered(ECSBackend(), groups, cluster_arn=CLUSTER, fargate_workers=True, worker_extra_args=["--lifetime",
                                                                                                         "1h"])
    assert sorted(defs) == ["cpu", "gpu", "spot"]
    cpu, spot, gpu = defs["cpu"], defs["spot"], defs["gpu"]
    assert [d["family"] for d in (cpu, spot, gpu)] == [f"flowrig-run1-worker-{g}" for g in ("cpu", "spot", "gpu")]
    assert {"key": "flowrig-group", "value": "gpu"} in gpu["tags"]
    assert (cpu["cpu"], cpu["memory"], cpu["requiresCompatibilities"]) == ("2048", "8192", ["FARGATE"])
    assert (spot["cpu"], spot["memory"]) == ("1024", "4096")  # the run's worker_cpu / worker_mem
    assert gpu["requiresCompatibilities"] == ["EC2"]
    containers = {name: d["containerDefinitions"][0] for name, d in defs.items()}
    assert containers["gpu"]["resourceRequirements"] == [{"type": "GPU", "value": "2"}]
    assert "resourceRequirements" not in containers["cpu"]
    commands = {name: c["command"] for name, c in containers.items()}
    flags = {name: command[command.index("--resources") + 1] for name, command in commands.items()}
    assert flags == {"cpu": "flowrig-group-cpu=2", "spot": "flowrig-group-spot=1", "gpu": "flowrig-group-gpu=1,GPU=2"}
    assert all(command.count("--resources") == 1 for command in commands.values())
    assert commands["cpu"][commands["cpu"].index("--nthreads") + 1] == "2"
    assert all(command[command.index("--lifetime") + 1] == "1h" for command in commands.values())
    # Only the Spot group's workers drain on a notice.
    envs = {name: {e["name"]: e["value"] for e in c.get("environment", [])} for name, c in containers.items()}
    assert envs["spot"]["FLOWRIG_SPOT_NOTICE"] == "ecs" and containers["spot"]["stopTimeout"] == 120
    assert "FLOWRIG_SPOT_NOTICE" not in envs["cpu"] and "stopTimeout" not in containers["cpu"]


def test_a_cpu_only_group_on_fargate_takes_the_least_memory_fargate_pairs_with_it():
    [params] = rendered(FargateBackend(), [group("big", cpu=4)]).values()
    assert (params["cpu"], params["memory"]) == ("4096", "8192")


@pytest.mark.parametrize(("backend", "groups", "options", "line"), [
    (FargateBackend, [group("gpu", gpu=1)], {},
     "[[cluster.worker_groups]] gpu gpu = 1: Fargate has no GPUs: run the group on EC2 capacity with the ecs "
     'backend (options = { fargate_workers = false, capacity_provider = "NAME" }, NAME an Auto Scaling group of '
     "GPU instances) instead of fargate"),
    (FargateBackend, [group("gpu", options={"fargate_workers": False})], {},
     "[[cluster.worker_groups]] gpu sets fargate_workers = false, but the fargate backend runs workers on Fargate "
     "only: use the ecs backend with cluster_arn"),
    (ECSBackend, [group("gpu", gpu=1)], {"cluster_arn": CLUSTER},
     '[[cluster.worker_groups]] gpu gpu = 1 needs a capacity provider: set options = { capacity_provider = "NAME" } '
     "on the group (or capacity_provider in [cluster.options]), NAME an Auto Scaling group of GPU instances"),
    (ECSBackend, [group("cheap", market="spot", options={"capacity_provider": "cp"})], {"cluster_arn": CLUSTER},
     "[[cluster.worker_groups]] cheap asks for Spot workers on the cluster's EC2 capacity, which needs a capacity "
     "provider of Spot instances: set spot_capacity_provider (in [cluster.options] or the group's options), or run "
     "the group on Fargate (fargate_workers = true)"),
    (FargateBackend, [group("odd", cpu=3.0)], {},
     "[[cluster.worker_groups]] odd cpu 3072 is not a Fargate size: use one of 256, 512, 1024, 2048, 4096, 8192, "
     "16384 (CPU units)"),
    (FargateBackend, [group("cpu")], {"worker_extra_args": ["--resources", "flowrig-group-gpu=4"]},
     "[cluster.options] worker_extra_args sets --resources, which every worker group's workers would offer: set each "
     "group's resources in its [[cluster.worker_groups]] resources instead"),
    (FargateBackend, [group("cpu")], {"worker_gpu": 1},
     "[cluster.options] worker_gpu beside [[cluster.worker_groups]]: set gpu on the groups whose workers need GPUs, "
     "and drop worker_gpu"),
    (FargateBackend, [group("cpu", options={"capacity_provider": 3})], {},
     "[[cluster.worker_groups]] cpu options.capacity_provider must be a string, got 3"),
])
def test_a_group_that_cannot_run_as_it_asks_is_one_line_before_any_call(backend, groups, options, line):
    with pytest.raises(BadInput) as info:
        backend()._launch(ECSOptions(**options), groups=tuple(groups))
    assert str(info.value) == line and info.value.exit_code == 2


def test_each_groups_workers_start_with_its_definition_name_market_and_resources(caplog):
    """RunTask per group, as botocore sends it: the group's task definition, its market,
    its workers named GROUP-TASKID; a lost worker's replacement in its group and market."""
    launch = ECSBackend()._launch(ECSOptions(cluster_arn=CLUSTER, fargate_workers=True), groups=(
        group("cpu", 2), group("gpu", gpu=1, market="fallback",
                               options={"fargate_workers": False, "capacity_provider": "od-cp",
                                        "spot_capacity_provider": "spot-cp"})))
    ecs = StubbedECS()
    settings = TaskSettings(
        cluster_arn=CLUSTER, scheduler_task_definition="s:1", worker_task_definition="", subnets=["subnet-1"],
        security_groups=["sg-1"], started_by="flowrig-r1", scheduler_command=["dask-scheduler"], worker_args=[],
        groups={g.name: g.kind(f"flowrig-r1-worker-{g.name}:1") for g in launch.groups})
    launcher = ECSLauncher(ecs.session(), settings)  # type: ignore[arg-type]
    ecs.answer(2)
    cpu = launcher.start_workers("tls://10.0.0.1:8786", 2, group="cpu")
    ecs.answer(0, short=1, reason="RESOURCE:GPU")
    ecs.answer(1)
    with caplog.at_level(logging.WARNING, logger="flowrig.ecs"):
        gpu = launcher.start_workers("tls://10.0.0.1:8786", 1, group="gpu")
    assert [r.getMessage() for r in caplog.records] == [
        "the Spot capacity provider had no capacity for 1 worker task of group gpu (RESOURCE:GPU): asked for it on "
        'the on-demand capacity provider instead, as spot = "fallback" allows']
    assert_valid_run_task(ecs.sent)
    assert [(r["taskDefinition"], market(r), r["count"]) for r in ecs.sent] == [
        ("flowrig-r1-worker-cpu:1", "FARGATE", 2), ("flowrig-r1-worker-gpu:1", "spot-cp", 1),
        ("flowrig-r1-worker-gpu:1", "od-cp", 1)]
    assert sorted(cpu.started) == ["cpu-t1", "cpu-t2"] and sorted(gpu.started) == ["gpu-t3"]
    commands = [r["overrides"]["containerOverrides"][0]["command"] for r in ecs.sent]
    assert commands[0][commands[0].index("--name") + 1] == "cpu-{ecs-task-id}"
    assert commands[1][commands[1].index("--resources") + 1] == "flowrig-group-gpu=1,GPU=1"
    placement = launcher.placement(gpu.started["gpu-t3"], "worker")
    assert placement is None  # EC2 capacity is not priced here
    assert launcher.placement(cpu.started["cpu-t1"], "worker").vcpu == 1.0
    # The lost GPU worker (on-demand, after the fallback) comes back in its group, on-demand.
    ecs.answer(1)
    again = launcher.start_workers("tls://10.0.0.1:8786", 1, [gpu.started["gpu-t3"]], group="gpu")
    assert (ecs.sent[-1]["taskDefinition"], market(ecs.sent[-1])) == ("flowrig-r1-worker-gpu:1", "od-cp")
    assert list(again.started) == ["gpu-t4"]


def test_the_book_replaces_lost_workers_in_their_own_group_and_keeps_each_groups_size():
    book = GroupBook()
    book.set_total(3)
    assert (book.groups(), book.total) == ([""], 3)
    book = GroupBook({"cpu": 2, "gpu": 1})
    with pytest.raises(ValueError, match="scaled group by group"):
        book.set_total(4)
    book.lost("gpu", "h1")
    book.lost("cpu", "h2")
    book.lost("gpu", "h3")
    assert book.take_lost("gpu", 1) == ["h1"] and book.take_lost("cpu", 5) == ["h2"]
    assert book.take_lost("gpu", 5) == ["h3"] and book.take_lost("gpu", 5) == []
    book.shrink("cpu", 1)
    assert (book.wanted("cpu"), book.wanted("gpu"), book.total) == (1, 1, 2)


class FakeCloud:
    """A cloud that creates every VM asked for and remembers the requests."""

    name = "ec2"
    kind = "instance"
    market_words = {"spot": "EC2 Spot", "on-demand": "on-demand EC2"}

    def __init__(self) -> None:
        self.requests: list = []

    def create(self, requests):
        from flowrig.backends.vm.cloud import Created

        self.requests += requests
        return Created(started={r.name: f"i-{r.name}" for r in requests})


def test_each_groups_vms_get_its_type_gpus_market_resources_and_names():
    from flowrig.backends.aws.ec2.backend import EC2Backend
    from flowrig.backends.base import ClusterSpec
    from flowrig.project.sizing import ClusterSize

    groups = (group("cpu", 2, threads=4), group("gpu", gpu=1, market="spot",
                                                options={"worker_instance_type": "g5.xlarge"}))
    spec = ClusterSpec(run_id="r1", size=ClusterSize(3), tls=None, image=IMAGE, groups=groups)  # type: ignore[arg-type]
    options = EC2Backend().parse_options({"region": "us-east-1", "worker_extra_args": ["--lifetime", "1h"]})
    settings: RoleSettings = EC2Backend().role_settings(spec, options, cloudinit.TLSDelivery())
    cloud = FakeCloud()
    vms = VMLauncher(cloud, settings, deadline=0)  # type: ignore[arg-type]
    vms.start_workers("tls://10.0.0.1:8786", 2, group="cpu")
    vms.start_workers("tls://10.0.0.1:8786", 1, group="gpu")
    names = [r.name for r in cloud.requests]
    assert names == ["flowrig-r1-worker-cpu-1", "flowrig-r1-worker-cpu-2", "flowrig-r1-worker-gpu-1"]
    cpu, gpu = cloud.requests[0], cloud.requests[2]
    assert (cpu.options, cpu.market) == ({}, "on-demand")
    assert (gpu.options, gpu.market) == ({"worker_instance_type": "g5.xlarge"}, "spot")
    assert "--gpus all" in gpu.user_data and "--gpus" not in cpu.user_data
    assert "flowrig-group-gpu=1,GPU=1" in gpu.user_data and "flowrig-group-cpu=4" in cpu.user_data
    assert "flowrig-group-gpu" not in cpu.user_data and "FLOWRIG_SPOT_NOTICE" not in cpu.user_data
    assert vms.settings.group("cpu").threads == 4


def vm_backend(name: str):
    from flowrig.backends.aws.ec2.backend import EC2Backend
    from flowrig.backends.vm.azure import AzureBackend
    from flowrig.backends.vm.gcp import GCPBackend

    return {"ec2": EC2Backend, "gcp": GCPBackend, "azure": AzureBackend}[name]()


def no_gpu_image(backend: str):
    """Why a GPU group (of its own options) cannot start on the run's default boot image of ``backend``."""
    from types import SimpleNamespace

    options = SimpleNamespace(source_image=None, vm_image=None, gpu_source_image=None, gpu_vm_image=None)
    return lambda own: vm_backend(backend).gpu_image_missing(options, own)


@pytest.mark.parametrize(("name", "group_", "line"), [
    ("ec2", group("big", cpu=8.0), "[[cluster.worker_groups]] big sets cpu, which on ec2 come with the VM type: set "
                                   'options = { worker_instance_type = "TYPE" } on the group instead'),
    ("gcp", group("gpu", gpu=1), "[[cluster.worker_groups]] gpu gpu = 1 needs a boot image with NVIDIA's driver"),
    ("gcp", group("t4", options={"accelerator_type": "nvidia-tesla-t4"}),
     "[[cluster.worker_groups]] t4 options.accelerator_type = 'nvidia-tesla-t4' without gpu: set gpu on the group"),
    ("azure", group("gpu", gpu=1), "[[cluster.worker_groups]] gpu gpu = 1 needs a boot image with NVIDIA's driver"),
    ("azure", group("big", options={"worker_instance_type": "m7i.large"}),
     "[[cluster.worker_groups]] big options.worker_instance_type is not taken per group on azure: it takes "
     "vm_image, worker_vm_size; set the rest in [cluster.options]"),
])
def test_a_vm_group_that_cannot_run_as_it_asks_is_one_line(name, group_, line):
    from flowrig.backends.vm.groups import vm_groups

    with pytest.raises(BadInput) as info:
        vm_groups(name, [group_], [], False, vm_backend(name).group_options, gpu_image=no_gpu_image(name))
    assert str(info.value).startswith(line), str(info.value)


def test_ec2_checks_each_groups_instance_type_for_its_gpus_before_anything_is_made(monkeypatch):
    from flowrig.backends.aws import instance_types
    from flowrig.backends.aws.ec2.cloud import EC2Cloud
    from flowrig.backends.aws.ec2.options import EC2Options
    from tests.unit.test_worker_shapes import DESCRIBED

    asked: list = []

    def describe(session, kinds):  # EC2's own DescribeInstanceTypes data
        asked.append(list(kinds))
        return {kind: instance_types.shape_of(DESCRIBED[kind]) for kind in kinds}

    monkeypatch.setattr(instance_types, "describe_types", describe)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    cloud = EC2Cloud("r1", EC2Options(region="us-east-1", instance_type="t3.medium"))
    cloud.worker_groups = (group("cpu"), group("gpu", gpu=1, options={"worker_instance_type": "t3.medium"}))
    with pytest.raises(BadInput) as info:
        cloud.check("")
    assert str(info.value).startswith(
        "[[cluster.worker_groups]] gpu options.worker_instance_type = t3.medium has no GPU but gpu = 1: use a GPU "
        "instance type (g5.xlarge, g6.xlarge for amd64), or lower gpu")
    cloud.worker_groups = (group("cpu"), group("gpu", gpu=1, options={"worker_instance_type": "g5.xlarge"}))
    cloud.check("")
    assert asked[-1] == ["t3.medium", "g5.xlarge"] and cloud.arch == "amd64"
    # A group of another architecture than the others cannot share the run's one AMI.
    cloud.worker_groups = (group("cpu"), group("arm", options={"worker_instance_type": "m7g.large"}))
    with pytest.raises(BadInput, match="run different architectures"):
        cloud.check("")


GROUPS_TOML = '''
flow = "flow.py:main"

[cluster]
backend = "ecs"
worker_threads = 2

[cluster.options]
region_name = "eu-west-1"
cluster_arn = "arn:aws:ecs:eu-west-1:123456789012:cluster/team"
execution_role_arn = "arn:aws:iam::123456789012:role/ecsTaskExecutionRole"
fargate_workers = true
environment = { MODE = "prod" }

[[cluster.worker_groups]]
name = "cpu"
n_workers = 2
cpu = 2
memory = "8GiB"

[[cluster.worker_groups]]
name = "gpu"
gpu = 1
market = "spot"
options = { fargate_workers = false, capacity_provider = "gpu-cp", spot_capacity_provider = "gpu-spot" }
'''


def test_task_definitions_of_a_project_show_each_groups_shape_and_the_gpus(tmp_path):
    """``flowrig ecs task-definitions`` renders what a run registers: a worker task
    definition per group, the GPU group's with its resourceRequirements on EC2."""
    import json

    from typer.testing import CliRunner

    from flowrig.cli.ecs import app
    from tests.unit.test_ecs_taskdefs import write_project

    project = write_project(tmp_path, GROUPS_TOML)
    result = CliRunner().invoke(app, ["task-definitions", str(project), "--image", "reg/etl:1"], env={"AWS_REGION": ""})
    assert result.exit_code == 0, result.output
    docs = json.loads(result.stdout)
    assert sorted(docs) == ["runner", "scheduler", "worker-cpu", "worker-gpu"]
    cpu, gpu = docs["worker-cpu"], docs["worker-gpu"]
    assert (cpu["family"], cpu["cpu"], cpu["memory"], cpu["requiresCompatibilities"]) == (
        "flowrig-etl-worker-cpu", "2048", "8192", ["FARGATE"])
    [container] = gpu["containerDefinitions"]
    assert gpu["requiresCompatibilities"] == ["EC2"]
    assert container["resourceRequirements"] == [{"type": "GPU", "value": "1"}]
    command = container["command"]
    assert command[command.index("--resources") + 1] == "flowrig-group-gpu=2,GPU=1"
    env = {e["name"]: e["value"] for e in container["environment"]}
    assert env["MODE"] == "prod" and env["FLOWRIG_SPOT_NOTICE"] == "ecs" and container["stopTimeout"] == 120
    assert "FLOWRIG_SPOT_NOTICE" not in {e["name"] for e in cpu["containerDefinitions"][0]["environment"]}
    for params in docs.values():
        validate.check_task_definition(params)


def test_task_definitions_of_a_gpu_worker_ask_ecs_for_the_gpus(tmp_path):
    from typer.testing import CliRunner

    from flowrig.cli.ecs import app
    from tests.unit.test_ecs_taskdefs import write_project

    toml = GROUPS_TOML.split("[[cluster.worker_groups]]")[0].replace(
        "fargate_workers = true", 'fargate_workers = false\nworker_gpu = 2\ncapacity_provider = "gpu-cp"')
    project = write_project(tmp_path, toml)
    result = CliRunner().invoke(app, ["task-definitions", str(project), "--image", "reg/etl:1", "--role", "worker"],
                                env={"AWS_REGION": ""})
    assert result.exit_code == 0, result.output
    import json

    worker = json.loads(result.stdout)["worker"]
    assert worker["requiresCompatibilities"] == ["EC2"]
    assert worker["containerDefinitions"][0]["resourceRequirements"] == [{"type": "GPU", "value": "2"}]
    validate.check_task_definition(worker)


# --- GCP and Azure, at the SDK boundary of tests/vm_fakes (its azure and google fixtures) ------------
def group_launcher(cloud, run_id: str) -> VMLauncher:
    from flowrig.backends.vm.groups import vm_groups

    key = {"gcp": "worker_machine_type", "azure": "worker_vm_size"}[cloud.name]
    big = {"gcp": "n2-standard-8", "azure": "Standard_D8s_v5"}[cloud.name]
    groups = vm_groups(cloud.name, [group("cpu"), group("big", market="spot", options={key: big})], [], False,
                       vm_backend(cloud.name).group_options)
    settings = RoleSettings(run_id=run_id, image="ghcr.io/example/seed:1", groups=groups)
    return VMLauncher(cloud, settings, deadline=float("inf"))


def test_gcp_each_groups_vms_are_of_its_machine_type_and_market(google):
    from tests.unit.test_vm_markets import gcp_cloud, inserted

    vms = group_launcher(gcp_cloud("gg1"), "gg1")
    vms.start_workers("tls://10.0.0.5:8786", 1, group="cpu")
    vms.start_workers("tls://10.0.0.5:8786", 1, group="big")
    cpu, big = inserted(google)
    assert (cpu["name"], big["name"]) == ("flowrig-gg1-worker-cpu-1", "flowrig-gg1-worker-big-1")
    assert cpu["machineType"].endswith("/machineTypes/n1-standard-1") and "scheduling" not in cpu
    assert big["machineType"].endswith("/machineTypes/n2-standard-8")
    assert big["scheduling"]["provisioningModel"] == "SPOT"


def test_azure_each_groups_vms_are_of_its_size_and_market(azure):
    from tests.unit.test_vm_markets import azure_cloud, vm_bodies

    vms = group_launcher(azure_cloud("ag1"), "ag1")
    vms.start_workers("tls://10.0.0.5:8786", 1, group="cpu")
    vms.start_workers("tls://10.0.0.5:8786", 1, group="big")
    bodies = vm_bodies(azure)
    cpu, big = bodies["flowrig-ag1-worker-cpu-1"]["properties"], bodies["flowrig-ag1-worker-big-1"]["properties"]
    assert cpu["hardwareProfile"] == {"vmSize": "Standard_DS1_v2"} and "priority" not in cpu
    assert (big["hardwareProfile"], big["priority"]) == ({"vmSize": "Standard_D8s_v5"}, "Spot")
