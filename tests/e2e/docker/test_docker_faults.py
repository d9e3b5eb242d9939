"""Faults a user meets on the docker backend, with real processes and containers of the
seed image: Ctrl-C (once, and twice) on ``flowrig run --backend docker``, the
leftovers command next to a live run and a killed one, and a worker that runs out of
memory.

Only ``tests`` helpers and the container engine are imported at module level, so the
run-level tests also run against an older flowrig.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest

from flowrig.containers import engine
from tests.docker_support import derived_image, docker_run_env, listed
from tests.run_support import FLOWRIG_SCRIPT, write_project

#: The workers' memory limit in the fault project.
WORKER_MEMORY = "400m"
#: Seconds a docker run may take to end after Ctrl-C in these tests: a generous bound
#: on a loaded machine (the target, 5 s, is measured by benchmarks/bench_docker_interrupt.py).
STOP_BOUND = 15
#: Runs flowrig with Ctrl-C's default effect: a shell starting pytest in the background
#: ignores SIGINT, and children inherit that.
WITH_SIGINT = (
    "import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_DFL); os.execv(sys.argv[1], sys.argv[1:])"
)

pytestmark = pytest.mark.docker

FAULT_FLOW = """
import time

from prefect import flow, task


@task
def step(x: int, nap: float) -> int:
    time.sleep(nap)
    return x * 2


@task
def hog(mb: int) -> int:
    block = b"x" * (mb * 2**20)  # written at once: past the worker's limit
    return len(block)


@flow
def main(nap: float = 0.0, mb: int = 0) -> int:
    if mb:
        return hog.submit(mb).result()
    return step.submit(1, nap).result()
"""


@pytest.fixture(scope="module")
def fault_project(tmp_path_factory) -> Path:
    toml = (
        'flow = "flow.py:main"\n\n[cluster]\nbackend = "docker"\nn_workers = 1\n\n'
        f'[cluster.options]\nworker_memory = "{WORKER_MEMORY}"\n'
    )
    return write_project(tmp_path_factory.mktemp("faults") / "project", FAULT_FLOW, toml)


@pytest.fixture(scope="module")
def fault_image(docker_client, seed_image, fault_project):
    with derived_image(docker_client, seed_image, fault_project, "flowrig-faults") as tag:
        yield tag


class _Run:
    """``flowrig run --backend docker`` in the background, its stderr lines timed."""

    def __init__(self, image: str, *args: str) -> None:
        self.run_id = "f" + uuid.uuid4().hex[:9]
        self.process = subprocess.Popen(
            [sys.executable, "-c", WITH_SIGINT, FLOWRIG_SCRIPT, "run", "--backend", "docker", "--image", image, *args],
            env=docker_run_env(self.run_id), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        self.lines: list[tuple[float, str]] = []
        self.out: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()
        threading.Thread(target=lambda: self.out.extend(self.process.stdout), daemon=True).start()

    def _read(self) -> None:
        for line in self.process.stderr:
            self.lines.append((time.monotonic(), line))

    @property
    def stderr(self) -> str:
        return "".join(line for _, line in self.lines)

    def wait_for(self, text: str, timeout: float = 240) -> None:
        deadline = time.monotonic() + timeout
        while not any(text in line for _, line in self.lines):
            assert self.process.poll() is None, self.stderr[-3000:]
            assert time.monotonic() < deadline, self.stderr[-3000:]
            time.sleep(0.2)

    def finish(self, timeout: float) -> int:
        code = self.process.wait(timeout=timeout)
        time.sleep(0.5)  # the reader threads drain the pipes
        return code

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()


def _leftovers(client, run_id: str) -> list[str]:
    label = {"label": f"flowrig.run-id={run_id}"}
    return [*listed(client, label)] + [
        n.name for n in client.networks.list(filters=label)
    ]


def _running_roles(client, run_id: str) -> set[str]:
    label = {"label": f"flowrig.run-id={run_id}"}
    return {labels["flowrig.role"] for labels in listed(client, label, all=False).values()}


# --- Ctrl-C -------------------------------------------------------------------------------


def test_ctrl_c_ends_a_docker_run_within_seconds_and_says_what_it_stops(docker_client, fault_image):
    run = _Run(fault_image, "--param", "nap=120")
    try:
        run.wait_for("Beginning flow run")
        time.sleep(2)
        assert _running_roles(docker_client, run.run_id) == {"runner", "scheduler", "worker"}
        sent = time.monotonic()
        run.process.send_signal(signal.SIGINT)
        code = run.finish(timeout=60)
        took = time.monotonic() - sent
        assert code == 130, run.stderr[-3000:]
        said = [line for at, line in run.lines if at >= sent and line.startswith(f"flowrig run {run.run_id}: ")]
        assert said and said[0].rstrip().endswith(
            "Ctrl-C: stopping the run: removing the runner, the scheduler and 1 worker "
            "(Ctrl-C again removes them at once)"
        ), run.stderr[-3000:]
        assert "nothing of the run is left" in said[-1], run.stderr[-3000:]
        assert "Traceback" not in run.stderr
        assert _leftovers(docker_client, run.run_id) == []
        assert took < STOP_BOUND, took
    finally:
        run.kill()
        engine.remove_run(docker_client, run.run_id)


def test_a_second_ctrl_c_removes_everything_at_once(docker_client, fault_image):
    run = _Run(fault_image, "--param", "nap=120")
    try:
        run.wait_for("Beginning flow run")
        time.sleep(2)
        run.process.send_signal(signal.SIGINT)
        run.wait_for("Ctrl-C: stopping the run", timeout=10)
        again = time.monotonic()
        run.process.send_signal(signal.SIGINT)
        assert run.finish(timeout=30) == 130, run.stderr[-3000:]
        took = time.monotonic() - again
        said = [line for at, line in run.lines if at >= again]
        assert any("Ctrl-C again: removing everything of the run by force" in line for line in said), run.stderr[-3000:]
        left = _leftovers(docker_client, run.run_id)
        # Removed, or named with the command that removes it.
        assert left == [] or f"flowrig docker leftovers --run-id {run.run_id} --remove" in run.stderr, left
        assert took < STOP_BOUND, took
    finally:
        run.kill()
        engine.remove_run(docker_client, run.run_id)


def test_ctrl_c_while_the_cluster_starts_leaves_nothing_behind(docker_client, fault_image):
    """The host may be creating the cluster's containers when Ctrl-C comes: what that
    start makes afterwards goes too."""
    run = _Run(fault_image, "--param", "nap=120")
    try:
        deadline = time.monotonic() + 240
        while "scheduler" not in _running_roles(docker_client, run.run_id):
            assert run.process.poll() is None, run.stderr[-3000:]
            assert time.monotonic() < deadline, run.stderr[-3000:]
            time.sleep(0.1)
        assert not any("scheduler at" in line for _, line in run.lines)  # still starting
        run.process.send_signal(signal.SIGINT)
        assert run.finish(timeout=60) == 130, run.stderr[-3000:]
        time.sleep(5)  # whatever a start under way would still make
        assert _leftovers(docker_client, run.run_id) == [], run.stderr[-3000:]
    finally:
        run.kill()
        engine.remove_run(docker_client, run.run_id)


# --- leftovers and live runs ---------------------------------------------------------------


def _leftovers_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([FLOWRIG_SCRIPT, "docker", "leftovers", *args], capture_output=True, text=True, timeout=120)


def test_leftovers_never_touch_a_live_run_and_take_one_whose_host_was_killed(docker_client, fault_image):
    run = _Run(fault_image, "--param", "nap=120")
    try:
        run.wait_for("Beginning flow run")
        listed = _leftovers_cli("--run-id", run.run_id, "--output", "json")
        assert listed.returncode == 0, listed.stderr
        assert json.loads(listed.stdout) == []
        assert f"not listed: run {run.run_id} is live (its flowrig process {run.process.pid} on " in listed.stderr
        everything = _leftovers_cli()
        assert f"run {run.run_id}:" not in everything.stdout
        refused = _leftovers_cli("--run-id", run.run_id, "--remove")
        assert refused.returncode == 2 and f"run {run.run_id} is live" in refused.stderr, refused.stderr
        assert _running_roles(docker_client, run.run_id) == {"runner", "scheduler", "worker"}
        assert run.process.poll() is None

        # The host is killed: nothing tears the run down, and it is a leftover at once.
        run.process.send_signal(signal.SIGKILL)
        run.process.wait(30)
        listed = _leftovers_cli("--run-id", run.run_id, "--output", "json")
        assert listed.returncode == 0, listed.stderr
        [left] = json.loads(listed.stdout)
        assert left["run_id"] == run.run_id and "has gone" in left["why"]
        assert {role for _, role, _ in left["containers"]} >= {"runner", "scheduler", "worker"}
        removed = _leftovers_cli("--run-id", run.run_id, "--remove")
        assert removed.returncode == 0 and f"removed run {run.run_id}" in removed.stderr, removed.stderr
        assert _leftovers(docker_client, run.run_id) == []
    finally:
        run.kill()
        engine.remove_run(docker_client, run.run_id)


# --- memory -------------------------------------------------------------------------------


def test_a_worker_out_of_memory_is_named_with_its_limit_and_the_fix(docker_client, fault_image):
    run = _Run(fault_image, "--param", "mb=900")
    try:
        code = run.finish(timeout=400)
        assert code == 1, run.stderr[-3000:]
        assert "KilledWorker" in run.stderr
        worker = f"worker 0 (container flowrig-{run.run_id}-worker-0)"
        told = [line for _, line in run.lines if worker in line]
        assert told, run.stderr[-3000:]
        assert all(f"memory limit of {WORKER_MEMORY}" in line for line in told), told
        fix = f"raise [cluster.options] worker_memory (now {WORKER_MEMORY}) in flowrig.toml"
        assert all(fix in line for line in told), told
        # The last word, after the runner's own, sums it up.
        summary = [line for _, line in run.lines if "workers ran out of memory during the run (worker 0: " in line]
        assert summary and fix in summary[-1], run.stderr[-3000:]
        # A worker started again does not trip over its predecessor's container.
        assert "is already in use by container" not in run.stderr
        assert _leftovers(docker_client, run.run_id) == []
    finally:
        run.kill()
        engine.remove_run(docker_client, run.run_id)


def test_a_container_the_kernel_kills_for_memory_is_named(docker_client, seed_image):
    """The other way a worker runs out of memory: the kernel kills a process of its
    container (no nanny in between), which the engine reports as an ``oom`` event."""
    from flowrig.backends.docker.memory import MemoryWatch
    from flowrig.containers import ContainerPlan

    run_id = "f" + uuid.uuid4().hex[:9]
    said: list[str] = []
    watch = MemoryWatch(docker_client, run_id, said.append)
    watch.limit = "64m"
    try:
        container = engine.create_container(docker_client, ContainerPlan(
            name=f"flowrig-{run_id}-worker-3", image=seed_image,
            command=("python", "-c", "block = b'x' * (2 * 2**30)"),
            labels={"flowrig.run-id": run_id, "flowrig.role": "worker"}, environment={}, network="none", memory="64m",
        ))
        engine.start_container(container)
        assert engine.wait_for_exit(container) == 137
        assert engine.oom_killed(container)
        deadline = time.monotonic() + 10
        while not said and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        watch.stop()
        engine.remove_run(docker_client, run_id)
    assert said == [
        f"worker 3 (container flowrig-{run_id}-worker-3) was killed by the kernel for going over its memory "
        "limit of 64m; raise [cluster.options] worker_memory (now 64m) in flowrig.toml, or give each worker "
        "fewer threads"
    ]
    assert [kill.how for kill in watch.kills] == ["killed"]
