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
from dataclasses import replace

import pytest

from flowrig.backends.aws.ecs import FargateBackend
from flowrig.backends.base import ClusterSpec, WorkerGroupSpec
from flowrig.common.routes import resources_for, routes_of, worker_resources
from flowrig.project.sizing import ClusterSize, GroupSize
from flowrig.roles.task_name import FROM_ECS_TASK, task_id
from tests.e2e.aws.test_ecs_backend import IMAGE
from tests.e2e.aws.test_ecs_faults import assert_nothing_left
from tests.tls_support import local_scheduler

pytestmark = [pytest.mark.aws, pytest.mark.filterwarnings("ignore:Scheduler already contains a plugin")]


def group(name: str, n: int, threads: int = 1, **shape) -> WorkerGroupSpec:
    return WorkerGroupSpec(name, n, threads, worker_resources(name, threads, gpu=shape.get("gpu", 0)), **shape)


def sized(*groups: WorkerGroupSpec) -> ClusterSize:
    return ClusterSize(sum(g.n_workers for g in groups), groups=tuple(GroupSize(g.name, g.n_workers) for g in groups))


def flag(command: list[str], name: str) -> str:
    return command[command.index(name) + 1]


class StandInAgent:
    """Starts a real Dask worker for each worker task moto started, as its command says."""

    def __init__(self, aws, cluster, run_id: str) -> None:
        self.aws, self.cluster, self.run_id = aws, cluster, run_id
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

        ecs = self.aws.ecs()
        while not self._stop.is_set():
            clusters = ecs.describe_clusters(clusters=[f"flowrig-{self.run_id}"])["clusters"]
            arns = ecs.list_tasks(cluster=clusters[0]["clusterArn"])["taskArns"] if clusters else []
            for task in ecs.describe_tasks(cluster=clusters[0]["clusterArn"], tasks=arns)["tasks"] if arns else []:
                [override] = task["overrides"]["containerOverrides"]
                command = override["command"]
                if task["taskArn"] in self.started or command[0] != "dask-worker":
                    continue
                self.started[task["taskArn"]] = command
                # The image's entry point names the worker after its task; the rest is the command's.
                name = flag(command, "--name").replace(FROM_ECS_TASK, task_id(task["taskArn"]))
                resources = {k: float(v) for k, v in (p.split("=") for p in flag(command, "--resources").split(","))}
                self.cluster.worker_spec[name] = {"cls": Worker, "options": {
                    "nthreads": int(flag(command, "--nthreads")), "host": "127.0.0.1", "name": name, "dashboard": False,
                    "resources": resources, "security": self.cluster.security}}
                self.cluster.scale(len(self.cluster.worker_spec))
            time.sleep(0.3)


def test_two_groups_run_from_their_own_task_definitions_markets_and_resources_and_tasks_go_to_their_group(
        aws, bootstrapped, tls):
    import boto3
    from distributed import Client, get_worker, wait

    groups = (group("cpu", 2, threads=2), group("spot", 1, market="spot"))
    spec = ClusterSpec(run_id="grp1", size=sized(*groups), tls=tls, image=IMAGE,
                       worker_env={"FLOWRIG_RUN_ID": "grp1"}, options={"preflight": False, "create_roles": True},
                       groups=groups)
    with local_scheduler(tls, workers=0) as scheduler:
        # The run's roles live elsewhere: the workers join the loopback scheduler.
        spec = replace(spec, options={**spec.options, "scheduler_address": scheduler.scheduler_address})
        with StandInAgent(aws, scheduler, "grp1") as agent:
            started = FargateBackend().start(spec)
        try:
            requests = [r["body"] for r in aws.requests("RunTask")]
            by_family = {r["taskDefinition"].split("/")[-1].rsplit(":", 1)[0]: r for r in requests}
            assert sorted(by_family) == ["flowrig-grp1-worker-cpu", "flowrig-grp1-worker-spot"]
            cpu, spot = by_family["flowrig-grp1-worker-cpu"], by_family["flowrig-grp1-worker-spot"]
            assert (cpu["launchType"], cpu["count"]) == ("FARGATE", 2) and "capacityProviderStrategy" not in cpu
            assert spot["capacityProviderStrategy"] == [{"capacityProvider": "FARGATE_SPOT", "weight": 1}]
            cpu_command = cpu["overrides"]["containerOverrides"][0]["command"]
            assert flag(cpu_command, "--name") == f"cpu-{FROM_ECS_TASK}"
            assert (flag(cpu_command, "--nthreads"), flag(cpu_command, "--resources")) == ("2", "flowrig-group-cpu=2")
            assert flag(spot["overrides"]["containerOverrides"][0]["command"], "--resources") == "flowrig-group-spot=1"
            # Each group's task definition: its family, its tag, and the Spot group's drain settings only.
            ecs = boto3.client("ecs")
            described = {f: ecs.describe_task_definition(taskDefinition=f, include=["TAGS"]) for f in by_family}
            for family, answer in described.items():
                assert {"key": "flowrig-group", "value": family.rsplit("-", 1)[-1]} in answer["tags"]
            [spot_container] = described["flowrig-grp1-worker-spot"]["taskDefinition"]["containerDefinitions"]
            [cpu_container] = described["flowrig-grp1-worker-cpu"]["taskDefinition"]["containerDefinitions"]
            assert spot_container["stopTimeout"] == 120 and "stopTimeout" not in cpu_container

            # Tasks tagged for a group run on its workers only; untagged ones anywhere.
            routes = routes_of([("cpu", ["cpu"]), ("spot", ["preemptible"])])
            with Client(scheduler.scheduler_address, security=tls.to_security()) as client:
                def where(_: int) -> str:
                    return get_worker().name

                ran = {}
                for tag in ("cpu", "preemptible"):
                    futures = [client.submit(where, i, key=f"{tag}-{i}", resources=resources_for("t", [tag], routes))
                               for i in range(12)]
                    wait(futures, timeout=30)  # a group without its resource would leave them waiting
                    ran[tag] = client.gather(futures)
            names = set(started.cluster.workers)
            assert len(names) == 3 and sum(n.startswith("cpu-") for n in names) == 2
            assert {w.split("-")[0] for w in ran["cpu"]} == {"cpu"} and set(ran["cpu"]) <= names
            assert {w.split("-")[0] for w in ran["preemptible"]} == {"spot"}
            lives = {life.name: (life.group, life.placement.market) for life in started.lives() if life.role == "worker"}
            assert sorted(lives.values()) == [("cpu", "on-demand"), ("cpu", "on-demand"), ("spot", "spot")]

            # A lost Spot worker comes back in its group, on Spot, under its group's definition.
            [spot_worker] = [n for n in names if n.startswith("spot-")]
            ecs.stop_task(cluster="flowrig-grp1", task=started.cluster.workers[spot_worker].handle, reason="Spot")
            deadline = time.monotonic() + 30
            while len(aws.requests("RunTask")) < 3:
                assert time.monotonic() < deadline, "no replacement asked for"
                time.sleep(0.2)
            again = aws.requests("RunTask")[2]["body"]
            assert again["taskDefinition"] == spot["taskDefinition"] and again["count"] == 1
            assert again["capacityProviderStrategy"] == [{"capacityProvider": "FARGATE_SPOT", "weight": 1}]
            assert agent.started
        finally:
            started.close()
    assert_nothing_left(aws, "grp1")
