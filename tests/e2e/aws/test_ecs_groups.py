"""Worker groups on ``fargate``/``ecs`` against a real moto server: each group's worker
tasks from a task definition of its own, in its market, named after it, offering its
Dask resources; tasks routed to a group run on that group's workers only.

moto runs no container, so a stand-in ECS agent plays each worker task: for every task
moto started it reads the command the launcher sent (RunTask's override) and starts a
real Dask worker on loopback with exactly that name (the task id filled in, as the
image's entry point does), thread count and ``--resources``, against a real mutual-TLS
scheduler. The pool then sees its workers join, as on ECS.
"""

from __future__ import annotations

import threading
import time

import pytest

from flowrig.backends.aws import policies as iam
from flowrig.backends.aws.ecs import FargateBackend
from flowrig.backends.base import ClusterSpec, WorkerGroupSpec
from flowrig.backends.usage import summarize
from flowrig.common.routes import resources_for, routes_of, worker_resources
from flowrig.project.sizing import ClusterSize, GroupSize
from flowrig.roles.task_name import FROM_ECS_TASK, task_id
from tests.aws_support import REGION
from tests.e2e.aws.test_ecs_backend import IMAGE, snapshot
from tests.e2e.aws.test_ecs_iam import runners  # noqa: F401 (a fixture)
from tests.iam_support import ACCOUNT, statements_used
from tests.tls_support import local_scheduler

pytestmark = [pytest.mark.aws, pytest.mark.filterwarnings("ignore:Scheduler already contains a plugin")]


def group(name: str, n: int, threads: int = 1, **shape) -> WorkerGroupSpec:
    return WorkerGroupSpec(name, n, threads, worker_resources(name, threads, gpu=shape.get("gpu", 0)), **shape)


def sized(*groups: WorkerGroupSpec) -> ClusterSize:
    return ClusterSize(sum(g.n_workers for g in groups), groups=tuple(GroupSize(g.name, g.n_workers) for g in groups))


def flag(command: list[str], name: str) -> str:
    return command[command.index(name) + 1]


def moto_ecs():
    """moto's ECS of the account (its server runs in this process): read and stopped
    directly, so the stand-in's own calls are never the runner's, nor checked as theirs."""
    from moto.ecs.models import ecs_backends

    return ecs_backends[ACCOUNT][REGION]


class StandInAgent:
    """Starts a real Dask worker for each worker task moto started, as its command says."""

    def __init__(self, cluster) -> None:
        self.cluster = cluster
        self.started: dict[str, list[str]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def __enter__(self) -> "StandInAgent":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(10)

    def _loop(self) -> None:
        from distributed import Worker

        while not self._stop.is_set():
            for task in [t for tasks in list(moto_ecs().tasks.values()) for t in list(tasks.values())]:
                [override] = task.overrides.get("containerOverrides") or [{"command": [""]}]
                command = override.get("command") or [""]
                if task.task_arn in self.started or command[0] != "dask-worker":
                    continue
                self.started[task.task_arn] = command
                # The image's entry point names the worker after its task; the rest is the command's.
                name = flag(command, "--name").replace(FROM_ECS_TASK, task_id(task.task_arn))
                resources = {k: float(v) for k, v in (p.split("=") for p in flag(command, "--resources").split(","))}
                self.cluster.worker_spec[name] = {"cls": Worker, "options": {
                    "nthreads": int(flag(command, "--nthreads")), "host": "127.0.0.1", "name": name, "dashboard": False,
                    "resources": resources, "security": self.cluster.security}}
                self.cluster.scale(len(self.cluster.worker_spec))
            time.sleep(0.3)


def test_two_groups_run_under_the_printed_policy_each_from_its_definition_market_and_resources(
        aws, runners, tls):  # noqa: F811 (the fixture imported above)
    """A fargate run of groups ``cpu`` (2 workers of 2 threads, on-demand) and ``spot``
    (1, Fargate Spot), by a runner holding exactly the printed policy: tasks routed to a
    group run on its workers only, and a lost Spot worker comes back in its group."""
    import boto3
    from distributed import Client, get_worker, wait

    from tests.unit.test_ecs_iam import printed_policy

    groups = (group("cpu", 2, threads=2), group("spot", 1, market="spot"))
    with local_scheduler(tls, workers=0) as scheduler:
        # The run's roles live elsewhere: the workers join the loopback scheduler.
        spec = ClusterSpec(run_id="grp1", size=sized(*groups), tls=tls, image=IMAGE,
                           worker_env={"FLOWRIG_RUN_ID": "grp1"}, groups=groups,
                           options={"preflight": False, "scheduler_address": scheduler.scheduler_address})
        runners.as_runner("runner-g")
        with StandInAgent(scheduler):
            started = FargateBackend().start(spec)
            try:
                names = set(started.cluster.workers)
                # Tasks tagged for a group run on its workers only.
                routes = routes_of([("cpu", ["cpu"]), ("spot", ["preemptible"])])
                with Client(scheduler.scheduler_address, security=tls.to_security()) as client:
                    def where(_: int) -> str:
                        return get_worker().name

                    ran = {}
                    for tag in ("cpu", "preemptible"):
                        futures = [client.submit(where, i, key=f"{tag}-{i}",
                                                 resources=resources_for("t", [tag], routes)) for i in range(12)]
                        wait(futures, timeout=30)  # a group without its resource would leave them waiting
                        ran[tag] = client.gather(futures)
                # A lost Spot worker comes back in its group, on Spot, under its group's definition.
                [spot_worker] = [n for n in names if n.startswith("spot-")]
                moto_ecs().stop_task("flowrig-grp1", started.cluster.workers[spot_worker].handle, "Spot")
                deadline = time.monotonic() + 30
                while len(aws.requests("RunTask")) < 3:
                    assert time.monotonic() < deadline, "no replacement asked for"
                    time.sleep(0.2)
            finally:
                started.close()
        runners.as_admin()
    assert len(names) == 3 and sum(n.startswith("cpu-") for n in names) == 2
    assert {w.split("-")[0] for w in ran["cpu"]} == {"cpu"} and set(ran["cpu"]) <= names
    assert {w.split("-")[0] for w in ran["preemptible"]} == {"spot"}

    requests = [r["body"] for r in aws.requests("RunTask")]
    by_family = {r["taskDefinition"].split("/")[-1].rsplit(":", 1)[0]: r for r in requests[:2]}
    assert sorted(by_family) == ["flowrig-grp1-worker-cpu", "flowrig-grp1-worker-spot"]
    cpu, spot = by_family["flowrig-grp1-worker-cpu"], by_family["flowrig-grp1-worker-spot"]
    assert (cpu["launchType"], cpu["count"]) == ("FARGATE", 2) and "capacityProviderStrategy" not in cpu
    assert spot["capacityProviderStrategy"] == [{"capacityProvider": "FARGATE_SPOT", "weight": 1}]
    cpu_command = cpu["overrides"]["containerOverrides"][0]["command"]
    assert flag(cpu_command, "--name") == f"cpu-{FROM_ECS_TASK}"
    assert (flag(cpu_command, "--nthreads"), flag(cpu_command, "--resources")) == ("2", "flowrig-group-cpu=2")
    assert flag(spot["overrides"]["containerOverrides"][0]["command"], "--resources") == "flowrig-group-spot=1"
    again = requests[2]
    assert (again["taskDefinition"], again["count"]) == (spot["taskDefinition"], 1)
    assert again["capacityProviderStrategy"] == [{"capacityProvider": "FARGATE_SPOT", "weight": 1}]
    # Each group's task definition: its family, its tag, and the Spot group's drain settings only.
    ecs = boto3.client("ecs")
    described = {f: ecs.describe_task_definition(taskDefinition=f, include=["TAGS"]) for f in by_family}
    for family, answer in described.items():
        assert {"key": "flowrig-group", "value": family.rsplit("-", 1)[-1]} in answer["tags"]
    [spot_container] = described["flowrig-grp1-worker-spot"]["taskDefinition"]["containerDefinitions"]
    [cpu_container] = described["flowrig-grp1-worker-cpu"]["taskDefinition"]["containerDefinitions"]
    assert spot_container["stopTimeout"] == 120 and "stopTimeout" not in cpu_container
    lives = sorted((life.group, life.placement.market) for life in started.lives() if life.role == "worker")
    assert lives == [("cpu", "on-demand"), ("cpu", "on-demand"), ("spot", "spot"), ("spot", "spot")]
    # The run's usage is told per group.
    usage = summarize(started.lives(), now=time.time())
    assert (usage.roles["worker:cpu"].count, usage.roles["worker:spot"].count) == (2, 2)
    assert usage.roles["worker:spot"].spot_share == 1.0 and usage.roles["worker:cpu"].spot_share == 0.0
    # Every call the run made was allowed by the printed policy (the read of the stopped
    # worker's last log lines too), and the per-group families needed no statement of their
    # own. Deregistering is refused, as on any run: the policy cannot grant it on the run's
    # own alone.
    refused = {d.action for d in runners.enforcer.refused()}
    assert refused <= {iam.DEREGISTER_ACTION}, runners.enforcer.refused()
    assert statements_used(printed_policy(), runners.enforcer, runners.user_arn("runner-g"))["TaskDefinitionRegister"]
    after = snapshot("grp1")
    assert len(after.pop("task_definitions")) == 1  # the scheduler's: deregistering is not granted
    assert after == {k: [] for k in after}, after
    # The groups' definitions stay too, tagged with the run for `flowrig aws leftovers --remove`.
    for family in by_family:
        assert ecs.list_task_definitions(familyPrefix=family, status="ACTIVE")["taskDefinitionArns"]


def test_a_gpu_group_on_a_capacity_provider_without_gpus_is_refused_before_anything_is_made(aws, tls):
    from flowrig.backends.aws.ecs import ECSBackend
    from tests.e2e.aws.test_worker_shapes import capacity_provider, push, refused

    cluster, image = capacity_provider("t3.medium", "cpu"), push("grp", "amd64")
    groups = (group("cpu", 1), group("gpu", 1, gpu=1, options={"fargate_workers": False, "capacity_provider": "cpu"}))
    spec = ClusterSpec(run_id="grp2", size=sized(*groups), tls=tls, image=image, groups=groups,
                       options={"preflight": False, "cluster_arn": cluster, "fargate_workers": True,
                                "fargate_scheduler": True})
    assert refused(aws, ECSBackend, spec) == (
        "[[cluster.worker_groups]] gpu capacity_provider = 'cpu' runs t3.medium has no GPU but gpu = 1: use a GPU "
        "instance type (g5.xlarge, g6.xlarge for amd64), or lower gpu")
