"""``flowrig preflight`` on the instance types a run's roles get, against a real moto
server: the ``ec2`` backend's instance types (``DescribeInstanceTypes``: EC2's own data,
GPUs and architectures), and an ``ecs`` run's capacity provider (moto's clusters,
capacity providers, Auto Scaling groups and launch templates, for real). Each failing
set-up is exactly one failed line naming the fix, exit 2, in ``--output json`` too, and
nothing is created; a correct set-up passes.
"""

from __future__ import annotations

import json

import pytest

from tests.docker_support import test_base_image as base_image
from tests.e2e.aws.test_preflight import REGISTRY, account, failed_lines, make_network, preflight  # noqa: F401
from tests.e2e.aws.test_worker_shapes import capacity_provider, push
from tests.iam_simulate import quota_answer
from tests.run_support import write_project

pytestmark = [pytest.mark.aws, pytest.mark.filterwarnings("ignore:Scheduler already contains a plugin")]


def ec2_project(tmp_path, network: dict, image: str, **options) -> str:
    values = {"vpc": network["vpc"], "subnet_id": network["subnet"], "security_groups": [network["group"]],
              **options}
    lines = "\n".join(f"{key} = {json.dumps(value)}" for key, value in values.items())
    name = "-".join(f"{k}{v}" for k, v in options.items()).replace(".", "").replace("_", "") or "plain"
    root = write_project(tmp_path / name, "def main():\n    pass\n", (
        f'flow = "flow.py:main"\n[cluster]\nbackend = "ec2"\nn_workers = 2\nimage = "{image}"\n'
        f"[cluster.options]\n{lines}\n"))
    return str(root)


@pytest.fixture
def ec2_account(account):  # noqa: F811 - the fixture imported above
    from tests.unit.test_ec2_iam import printed_policy

    account.runner(printed_policy("--backend", "ec2"))
    account.proxy.answer("GetServiceQuota", quota_answer({"L-1216C47A": 512, "L-DB2E81BA": 512}))
    return account


def instance_lines(report: dict) -> list[tuple[str, str, bool | None]]:
    return [(c["name"], c["subject"], c["ok"]) for c in report["checks"] if c["name"] in (
        "instance-type", "capacity-provider")]


EC2_FAILURES = {
    "unknown type": ({"instance_type": "zz9.huge"}, ("amd64",),
                     "failed: instance-type zz9.huge: EC2 in us-east-1 knows no instance type among zz9.huge"),
    "no gpu": ({"worker_instance_type": "t3.large", "worker_gpu": 1}, ("amd64",),
               "failed: instance-type t3.large: [cluster.options] worker_instance_type = t3.large has no GPU but "
               "worker_gpu = 1: use a GPU instance type (g5.xlarge, g6.xlarge for amd64), or lower worker_gpu"),
    "too few gpus": ({"worker_instance_type": "g5.xlarge", "worker_gpu": 4}, ("amd64",),
                     "failed: instance-type g5.xlarge: [cluster.options] worker_instance_type = g5.xlarge has 1 GPU"),
    "two architectures": ({"worker_instance_type": "t4g.medium"}, ("amd64", "arm64"),
                          "failed: instance-type t3.medium, t4g.medium: the scheduler's t3.medium runs linux/amd64, "
                          "the workers' t4g.medium linux/arm64, and the run's VMs share one AMI and image: choose "
                          "instance types of one architecture"),
}


def test_ec2_instance_types_that_fit_pass_and_each_failure_is_one_line_naming_the_fix(tmp_path, ec2_account):
    network = make_network()
    image = push("both", "amd64", "arm64")
    done = preflight(ec2_account, ec2_project(tmp_path, network, image, instance_type="t3.medium",
                                              worker_instance_type="g5.xlarge", worker_gpu=1), "--output", "json")
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads(done.stdout)
    assert report["ok"] is True
    assert instance_lines(report) == [("instance-type", "g5.xlarge", True), ("instance-type", "t3.medium", True)]
    [worker] = [c for c in report["checks"] if c["subject"] == "g5.xlarge"]
    assert worker["line"] == "the worker's: linux/amd64, 1 GPU (NVIDIA A10G)"

    images = {archs: push("-".join(archs), *archs) for archs in {archs for _, archs, _ in EC2_FAILURES.values()}}
    for case, (options, archs, words) in EC2_FAILURES.items():
        image = images[archs]
        done = preflight(ec2_account, ec2_project(tmp_path, network, image, **options))
        assert done.returncode == 2, (case, done.stdout + done.stderr)
        [line] = failed_lines(done)
        assert line.startswith(words), (case, line)
    # An image outside ECR: its copy on this machine's engine (the base image, amd64) tells its architecture.
    local = base_image()
    done = preflight(ec2_account, ec2_project(tmp_path, network, local, instance_type="t4g.medium"))
    assert done.returncode == 2, done.stdout + done.stderr
    [line] = failed_lines(done)
    assert line == (f"failed: instance-type t4g.medium: [cluster.options] instance_type = t4g.medium runs linux/arm64 "
                    f"but the image {local} is linux/amd64: use an instance type for amd64, or build the image with "
                    "flowrig build --platform linux/arm64")
    # In JSON: the one failed check, its line and its fix apart.
    report = json.loads(preflight(ec2_account, ec2_project(tmp_path, network, images[("amd64",)], **EC2_FAILURES[
        "no gpu"][0]), "--output", "json").stdout)
    [failed] = [c for c in report["checks"] if c["ok"] is False]
    assert report["ok"] is False and (failed["name"], failed["subject"]) == ("instance-type", "t3.large")
    assert failed["fix"] == "use a GPU instance type (g5.xlarge, g6.xlarge for amd64), or lower worker_gpu"


# --- ecs: the workers' capacity provider ------------------------------------------------------------
def ecs_project(tmp_path, network: dict, image: str, cluster: str, **options) -> str:
    values = {"vpc": network["vpc"], "subnets": [network["subnet"]], "security_groups": [network["group"]],
              "cluster_arn": cluster, "fargate_workers": False, "fargate_scheduler": True, **options}
    lines = "\n".join(f"{key} = {json.dumps(value)}" for key, value in values.items())
    root = write_project(tmp_path / f"ecs-{options.get('capacity_provider')}", "def main():\n    pass\n", (
        f'flow = "flow.py:main"\n[cluster]\nbackend = "ecs"\nn_workers = 2\nimage = "{image}"\n'
        f"[cluster.options]\n{lines}\n"))
    return str(root)


def test_an_ecs_capacity_provider_is_checked_before_anything_is_created(tmp_path, account):  # noqa: F811
    account.runner()
    account.proxy.answer("GetServiceQuota", quota_answer({"L-3032A538": 100}))
    network = make_network()
    capacity_provider("t3.medium", "cpu")
    capacity_provider("g5g.xlarge", "arm")
    cluster = capacity_provider("g5.xlarge", "gpu")
    image = push("one", "amd64")
    good = preflight(account, ecs_project(tmp_path, network, image, cluster, capacity_provider="gpu", worker_gpu=1),
                     "--output", "json")
    assert good.returncode == 0, good.stdout + good.stderr
    assert instance_lines(json.loads(good.stdout)) == [
        ("capacity-provider", "capacity provider gpu", True), ("instance-type", "g5.xlarge", True)]
    cases = {
        "cpu": "failed: instance-type t3.medium: [cluster.options] capacity_provider = 'cpu' runs t3.medium has no "
               "GPU but worker_gpu = 1: use a GPU instance type (g5.xlarge, g6.xlarge for amd64), or lower worker_gpu",
        "arm": f"failed: instance-type g5g.xlarge: [cluster.options] capacity_provider = 'arm' runs g5g.xlarge runs "
               f"linux/arm64 but the image {image} is linux/amd64: use an instance type for amd64, or build the image "
               "with flowrig build --platform linux/arm64",
        "other": f"failed: capacity-provider capacity provider other: [cluster.options] capacity_provider = 'other' "
                 f"is not a capacity provider of cluster {cluster} (it has cpu, arm, gpu): add it with aws ecs "
                 "put-cluster-capacity-providers, or name one of those",
    }
    for provider, words in cases.items():
        done = preflight(account, ecs_project(tmp_path, network, image, cluster, capacity_provider=provider,
                                              worker_gpu=1))
        assert done.returncode == 2, done.stdout + done.stderr
        [line] = failed_lines(done)
        assert line == words
