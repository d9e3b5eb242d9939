"""Adaptive worker groups and their shapes on the docker and local backends: the scaling
rule's pure parts, the docker containers' rendering (down to docker-py's own request),
the GPU runtime check and the docker host's policy for adaptive groups. The scaling
itself runs in tests/e2e/local/test_group_adapt.py."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from flowrig.backends.base import WorkerGroupSpec
from flowrig.backends.group_scaling import group_of, idle_to_close, target_of
from flowrig.errors import BadInput

RUN = "ga22test1"

BURST = WorkerGroupSpec("burst", 0, 2, {"flowrig-group-burst": 2, "GPU": 1}, adapt=(0, 3), cpu=1.5, memory_mib=2048,
                        gpu=1, options={"drain_timeout": 7})


# --- the scaling rule ------------------------------------------------------------------------


def test_a_worker_belongs_to_the_group_before_its_number():
    assert [group_of(n) for n in ("gpu-1", "gpu-big-12", "cpu-3", "0", 1)] == ["gpu", "gpu-big", "cpu", "", ""]


def test_a_group_needs_its_tasks_over_its_threads_and_the_first_group_the_waiting_ones_too():
    demand = {"groups": {"burst": {"tasks": 5, "idle": []}, "base": {"tasks": 1, "idle": []}}, "waiting": 4}
    assert target_of(demand, "burst", 2, first=False) == 3
    assert target_of(demand, "base", 1, first=True) == 5
    assert target_of(demand, "base", 1, first=False) == 1
    assert target_of(demand, "other", 1, first=False) == 0
    assert target_of({}, "burst", 2, first=True) == 0


def test_idle_workers_without_data_go_first_and_one_with_data_only_while_another_can_take_it():
    idle = [("burst-1", True), ("burst-2", False), ("burst-3", False)]
    assert idle_to_close(idle, 2, others=3) == ["burst-3", "burst-2"]
    assert idle_to_close(idle, 3, others=1) == ["burst-3", "burst-2", "burst-1"]
    assert idle_to_close(idle, 3, others=0) == ["burst-3", "burst-2"]
    assert idle_to_close(idle, 0, others=5) == []


# --- the docker containers of a group ----------------------------------------------------------


def test_a_group_workers_container_has_its_shape():
    from flowrig.backends.docker.cluster import DockerWorker
    from flowrig.backends.docker.group_workers import group_worker, worker_shape
    from flowrig.backends.docker.plans import render_worker

    shape = worker_shape(BURST)
    assert shape == {"threads": 2, "resources": {"flowrig-group-burst": 2, "GPU": 1}, "memory": "2048m", "cpus": 1.5,
                     "gpus": 1, "drain_timeout": 7.0}
    assert group_worker({"cls": DockerWorker, "options": {"settings": "S"}}, BURST)["options"] == {"settings": "S",
                                                                                                  **shape}
    plan = render_worker(RUN, "img", "net", "burst-4", **shape)
    assert (plan.memory, plan.cpus, plan.gpus, plan.stop_timeout) == ("2048m", 1.5, 1, 12)
    assert plan.command[plan.command.index("--memory-limit") + 1] == "2048MiB"
    assert plan.command[plan.command.index("--resources") + 1] == "flowrig-group-burst=2,GPU=1"
    plain = render_worker(RUN, "img", "net", 0)
    assert (plain.cpus, plain.gpus) == (None, 0)


def test_the_engine_is_asked_for_the_cpu_limit_and_the_gpus_in_docker_pys_own_request(monkeypatch):
    """The request docker-py makes of the engine (a real ``APIClient``; only the HTTP
    call is caught)."""
    import docker

    from flowrig.backends.docker.plans import render_worker
    from flowrig.containers.engine.lifecycle import create_container

    class Sent(Exception):
        pass

    api = docker.APIClient(base_url="unix:///nonexistent.sock", version="1.44")
    sent: dict = {}

    def catch(config, name=None, **kwargs):
        sent.update(config)
        raise Sent

    monkeypatch.setattr(api, "create_container_from_config", catch)
    client = type("Client", (), {"api": api})()
    with pytest.raises(Sent):
        create_container(client, render_worker(RUN, "img", "net", "burst-1", memory="2048m", cpus=1.5, gpus=1))
    host = sent["HostConfig"]
    assert host["NanoCpus"] == 1_500_000_000 and host["Memory"] == 2048 * 2**20
    assert host["DeviceRequests"] == [{"Driver": "", "Count": 1, "DeviceIDs": [], "Capabilities": [["gpu"]],
                                       "Options": {}}]
    sent.clear()
    with pytest.raises(Sent):
        create_container(client, render_worker(RUN, "img", "net", 1))
    assert "NanoCpus" not in sent["HostConfig"] and "DeviceRequests" not in sent["HostConfig"]


class _Engine:
    def __init__(self, runtimes: dict) -> None:
        self.runtimes = runtimes

    def info(self) -> dict:
        return {"Runtimes": self.runtimes}


def test_a_group_with_gpus_is_refused_on_an_engine_without_a_gpu_runtime():
    from flowrig.backends.docker.group_workers import check_gpu_runtime

    with pytest.raises(BadInput) as refused:
        check_gpu_runtime(_Engine({"runc": {}}), [WorkerGroupSpec("cpu", 1, 1), BURST])
    assert str(refused.value) == (
        "[[cluster.worker_groups]] group 'burst' asks for 1 GPU per worker, and this machine's Docker engine has no "
        "GPU runtime: install the NVIDIA Container Toolkit and run `nvidia-ctk runtime configure --runtime=docker` "
        "(then restart Docker), or drop gpu")
    check_gpu_runtime(_Engine({"runc": {}, "nvidia": {}}), [BURST])
    check_gpu_runtime(_Engine({"runc": {}}), [WorkerGroupSpec("cpu", 1, 1)])


# --- the docker host's policy for adaptive groups ----------------------------------------------

ADAPT_PROJECT = textwrap.dedent(
    """
    flow = "flow.py:main"
    [cluster]
    backend = "docker"
    max_workers = 5
    [[cluster.worker_groups]]
    name = "base"
    [[cluster.worker_groups]]
    name = "burst"
    gpu = 1
    cpu = 1.5
    memory = "2GiB"
    worker_threads = 2
    max_workers = 3
    adapt = { minimum = 0, maximum = 3 }
    options = { drain_timeout = 7 }
    """
)


def _limits():
    from flowrig.backends.docker.policy import RunnerLimits

    return RunnerLimits.from_toml(RUN, ADAPT_PROJECT.encode(), "flowrig.toml")


def _start(burst: dict | None = None, **changes) -> dict:
    from flowrig.backends.docker import control

    groups = control.groups_message([WorkerGroupSpec("base", 1, 1, {"flowrig-group-base": 1}), BURST])
    groups[1].update(burst or {})
    request = {"op": "start", "seq": 1, "n_workers": 1, "adapt": None, "worker_threads": 1, "options": {},
               "worker_env": {"FLOWRIG_RUN_ID": RUN}, "no_client_timeout": None, "groups": groups}
    request.update(changes)
    return request


def test_the_host_starts_an_adaptive_group_of_the_images_shape_within_its_maximum():
    accepted = _limits().check_start(_start())
    assert accepted.groups == (WorkerGroupSpec("base", 1, 1, {"flowrig-group-base": 1}), BURST)
    # A sizing hook may narrow the range, or fix the group's size, within its bounds.
    assert _limits().check_start(_start({"adapt": [1, 2], "n_workers": 1}, n_workers=2)).groups[1].adapt == (1, 2)
    assert _limits().check_start(_start({"adapt": None, "n_workers": 3}, n_workers=4)).groups[1].adapt is None


@pytest.mark.parametrize(
    ("burst", "changes", "reason"),
    [
        ({"adapt": [0, 4]}, {}, "worker group burst adapting [0, 4] from 0 workers (its bounds: 0-3)"),
        ({"adapt": [0, 99]}, {}, "worker group burst adapting [0, 99]"),
        ({"adapt": [2, 1], "n_workers": 2}, {"n_workers": 3}, "worker group burst adapting [2, 1]"),
        ({"adapt": [1, 3]}, {}, "worker group burst adapting [1, 3] from 0 workers"),
        ({"adapt": [0, 0]}, {}, "worker group burst adapting [0, 0]"),
        ({"adapt": [0, True]}, {}, "worker group burst adapting [0, True]"),
        ({"adapt": "0-3"}, {}, "worker group burst adapting '0-3'"),
        ({"adapt": None, "n_workers": 4}, {"n_workers": 5}, "worker group burst of 4 workers (its bounds: 1-3)"),
        ({"gpu": 4}, {}, "worker group burst with gpu 4; flowrig.toml has 1"),
        ({"gpu": True}, {}, "worker group burst with gpu True"),
        ({"cpu": 8.0}, {}, "worker group burst with cpu 8.0; flowrig.toml has 1.5"),
        ({"memory_mib": 65536}, {}, "worker group burst with memory_mib 65536; flowrig.toml has 2048"),
        ({"options": {"drain_timeout": 3600}}, {}, "worker group burst with options {'drain_timeout': 3600}"),
        ({"resources": {"flowrig-group-burst": 2}}, {}, "worker group burst with resources"),
        ({"market": "spot"}, {}, "worker groups that are not tables of adapt, cpu, gpu, memory_mib"),
        ({}, {"groups": None}, "a cluster without the worker groups of flowrig.toml"),
    ],
)
def test_the_host_refuses_what_the_images_project_does_not_allow_a_group(burst, changes, reason):
    from flowrig.backends.docker.policy import Refusal

    with pytest.raises(Refusal) as refused:
        _limits().check_start(_start(burst, **changes))
    assert reason in str(refused.value)


def test_the_groups_maxima_are_held_to_the_clusters_max_workers():
    from flowrig.backends.docker.policy import Refusal, RunnerLimits

    tight = ADAPT_PROJECT.replace("max_workers = 5", "max_workers = 4")
    limits = RunnerLimits.from_toml(RUN, tight.encode(), "flowrig.toml")
    with pytest.raises(Refusal, match=r"^worker groups of 2 to 5 workers, outside min_workers = 0 and max_workers = 4 "):
        limits.check_start(_start(n_workers=2, groups=[{**_start()["groups"][0], "n_workers": 2},
                                                        _start()["groups"][1]]))


def test_preflight_says_when_the_engine_cannot_give_a_group_its_gpus():
    from flowrig.backends.docker.preflight import _gpu_checks
    from flowrig.backends.preflight import PreflightPlan
    from flowrig.project.models import parse_project

    project = parse_project({"flow": "flow.py:main", "cluster": {"worker_groups": [
        {"name": "cpu"}, {"name": "train", "gpu": 2}]}}, Path("."))
    plan = PreflightPlan(image="img", groups=tuple(project.cluster.worker_groups))
    (failed,) = _gpu_checks(_Engine({"runc": {}}), plan)
    assert (failed.name, failed.subject, failed.ok) == ("gpu-runtime", "train", False)
    assert failed.line.endswith("group 'train' asks for 2 GPUs per worker, and this machine's Docker engine has no "
                                "GPU runtime")
    assert failed.fix.startswith("install the NVIDIA Container Toolkit")
    assert _gpu_checks(_Engine({"nvidia": {}}), plan)[0].ok is True
    assert _gpu_checks(_Engine({}), PreflightPlan(image="img")) == []


class _Container:
    """What the engine says of a started container (``attrs`` as docker-py holds them)."""

    def __init__(self, name: str, host: dict) -> None:
        self.name = name
        self.attrs = {"State": {"StartedAt": "2026-12-07T09:00:00.5Z", "FinishedAt": "0001-01-01T00:00:00Z"},
                      "HostConfig": host}

    def reload(self) -> None:
        pass


def test_a_docker_workers_life_counts_in_its_group_with_its_containers_shape():
    from flowrig.backends.docker.lives import log_start
    from flowrig.backends.usage import LifeLog

    log = LifeLog()
    gpus = [{"Driver": "", "Count": 2, "DeviceIDs": [], "Capabilities": [["gpu"]], "Options": {}}]
    log_start(log, _Container(f"flowrig-{RUN}-worker-gpu-big-2", {"NanoCpus": 1_500_000_000, "Memory": 2**31,
                                                                 "DeviceRequests": gpus}), "worker", (8, 2**34))
    log_start(log, _Container(f"flowrig-{RUN}-worker-0", {}), "worker", (8, 2**34))
    log_start(log, _Container(f"flowrig-{RUN}-scheduler", {}), "scheduler", (8, 2**34))
    grouped, plain, scheduler = log.lives()
    assert (grouped.group, grouped.placement.vcpu, grouped.placement.memory_gib, grouped.placement.gpus) == (
        "gpu-big", 1.5, 2.0, 2)
    assert (plain.group, plain.placement.vcpu, plain.placement.gpus, scheduler.group) == ("", 8.0, 0, "")
