"""Worker groups on ``ec2`` against a real moto server: each group's instances of its
type, in its market, named after it, with its Dask resources in their user data; a
group whose type lacks the GPUs it asks for is refused before anything is made."""

from __future__ import annotations

import base64
import time

import pytest

from flowrig.backends.aws.ec2.backend import EC2Backend
from flowrig.backends.base import ClusterSpec, WorkerGroupSpec
from flowrig.common.routes import worker_resources
from flowrig.errors import BadInput
from flowrig.project.sizing import ClusterSize, GroupSize
from tests.e2e.aws.test_ec2_backend import AMI, IMAGE, assert_nothing_left, ec2_bootstrapped, instances  # noqa: F401

pytestmark = pytest.mark.aws


def group(name: str, n: int, **shape) -> WorkerGroupSpec:
    return WorkerGroupSpec(name, n, 1, worker_resources(name, 1, gpu=shape.get("gpu", 0)), **shape)


def groups_spec(tls, run_id: str, *groups: WorkerGroupSpec) -> ClusterSpec:
    size = ClusterSize(sum(g.n_workers for g in groups), groups=tuple(GroupSize(g.name, g.n_workers) for g in groups))
    return ClusterSpec(run_id=run_id, size=size, tls=tls, image=IMAGE, groups=groups,
                       options={"ami": AMI, "preflight": False, "tls": "baked", "instance_type": "t3.medium"})


@pytest.mark.usefixtures("ec2_bootstrapped")
def test_each_groups_instances_are_of_its_type_market_and_resources(aws, tls):
    import boto3

    spec = groups_spec(tls, "ec2g", group("cpu", 2), group("gpu", 1, gpu=1, market="spot",
                                                           options={"worker_instance_type": "g5.xlarge"}))
    backend = EC2Backend()
    run = backend.open_run(spec, backend.options(spec.options))
    try:
        run.check()
        run.prepare()
        launcher = run.launcher(None, time.monotonic() + 60)
        cpu = launcher.start_workers("tls://10.0.0.9:8786", 2, group="cpu")
        gpu = launcher.start_workers("tls://10.0.0.9:8786", 1, group="gpu")
        assert sorted(cpu.started) == ["flowrig-ec2g-worker-cpu-1", "flowrig-ec2g-worker-cpu-2"]
        assert list(gpu.started) == ["flowrig-ec2g-worker-gpu-1"]
        found = {next(t["Value"] for t in i["Tags"] if t["Key"] == "Name"): i for i in instances("ec2g")}
        shapes = {name: (i["InstanceType"], i.get("InstanceLifecycle", "on-demand")) for name, i in found.items()}
        assert shapes == {"flowrig-ec2g-worker-cpu-1": ("t3.medium", "on-demand"),
                          "flowrig-ec2g-worker-cpu-2": ("t3.medium", "on-demand"),
                          "flowrig-ec2g-worker-gpu-1": ("g5.xlarge", "spot")}
        ec2 = boto3.client("ec2")

        def user_data(name: str) -> str:
            answer = ec2.describe_instance_attribute(InstanceId=found[name]["InstanceId"], Attribute="userData")
            return base64.b64decode(answer["UserData"]["Value"]).decode()

        gpu_data, cpu_data = user_data("flowrig-ec2g-worker-gpu-1"), user_data("flowrig-ec2g-worker-cpu-1")
        assert "flowrig-group-gpu=1,GPU=1" in gpu_data and "--gpus" in gpu_data and "FLOWRIG_SPOT_NOTICE" in gpu_data
        assert "flowrig-group-cpu=1" in cpu_data and "GPU" not in cpu_data and "FLOWRIG_SPOT_NOTICE" not in cpu_data
    finally:
        assert run.close() == []
    assert_nothing_left("ec2g")


def test_a_group_whose_type_has_no_gpu_is_refused_before_anything_is_made(aws, tls):
    spec = groups_spec(tls, "ec2h", group("cpu", 1), group("gpu", 1, gpu=1,
                                                           options={"worker_instance_type": "t3.large"}))
    aws.reset_recording()
    with pytest.raises(BadInput) as info:
        EC2Backend().start(spec)
    assert str(info.value).startswith(
        "[[cluster.worker_groups]] gpu options.worker_instance_type = t3.large has no GPU but gpu = 1: use a GPU instance type")
    assert [op for op in aws.operations() if op.startswith(("Create", "Run", "Put"))] == []
