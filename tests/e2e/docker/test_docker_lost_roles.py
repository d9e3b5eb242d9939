"""Lost roles on the docker backend, with real containers of the seed image: a worker
container killed mid-run, the runner container killed, the host and its runner
killed, a runner busy between two submissions, and the whole-run timeout."""

from __future__ import annotations

import json
import signal
import subprocess
import threading
import time
import uuid
from pathlib import Path

import pytest

from flowrig.containers import engine
from tests.docker_support import derived_image, docker_run_env, listed
from tests.e2e.local.test_lost_roles import LOST_ROLES_FLOW, TOTAL
from tests.run_support import FLOWRIG_SCRIPT, write_project

#: The project's no-client timeout: the scheduler of a lost runner stops after it.
NO_CLIENT_TIMEOUT = 5
#: Seconds a killed worker container takes to be replaced, at most (docs/lost-roles.md).
REPLACED_WITHIN = 30

pytestmark = pytest.mark.docker


def _tag() -> str:
    return "t" + uuid.uuid4().hex[:9]


@pytest.fixture(scope="module")
def lost_project(tmp_path_factory) -> Path:
    toml = (
        'flow = "flow.py:main"\n\n[cluster]\nbackend = "docker"\nn_workers = 2\n'
        f"no_client_timeout = {NO_CLIENT_TIMEOUT}\n"
    )
    return write_project(tmp_path_factory.mktemp("lost") / "project", LOST_ROLES_FLOW, toml)


@pytest.fixture(scope="module")
def lost_image(docker_client, seed_image, lost_project):
    """The seed image with the lost-roles project baked in (one small layer)."""
    with derived_image(docker_client, seed_image, lost_project, "flowrig-lost") as tag:
        yield tag


class _Run:
    """``flowrig run --backend docker`` in the background, its stderr collected."""

    def __init__(self, project: Path, image: str, *args: str) -> None:
        self.run_id = _tag()
        self.process = subprocess.Popen(
            [FLOWRIG_SCRIPT, "run", str(project), "--backend", "docker", "--image", image, "--output", "json", *args],
            env=docker_run_env(self.run_id), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        self.lines: list[str] = []
        self.out: list[str] = []
        threading.Thread(target=lambda: self.lines.extend(self.process.stderr), daemon=True).start()
        threading.Thread(target=lambda: self.out.extend(self.process.stdout), daemon=True).start()

    @property
    def stderr(self) -> str:
        return "".join(self.lines)

    def wait_for(self, text: str, timeout: float = 240) -> None:
        deadline = time.monotonic() + timeout
        while not any(text in line for line in self.lines):
            assert self.process.poll() is None, self.stderr[-3000:]
            assert time.monotonic() < deadline, self.stderr[-3000:]
            time.sleep(0.25)

    def finish(self, timeout: float = 240) -> int:
        code = self.process.wait(timeout=timeout)
        time.sleep(0.5)  # the reader threads drain the pipes
        return code

    @property
    def outcome(self) -> dict:
        return json.loads("".join(self.out).strip().splitlines()[-1])

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()


def _containers(client, run_id: str, *, running: bool = True) -> dict[str, str]:
    label = {"label": f"flowrig.run-id={run_id}"}
    return {name: labels["flowrig.role"] for name, labels in listed(client, label, all=not running).items()}


def _leftovers(client, run_id: str) -> list[str]:
    label = {"label": f"flowrig.run-id={run_id}"}
    return sorted(_containers(client, run_id, running=False)) + [n.name for n in client.networks.list(filters=label)]


def test_a_killed_worker_container_is_replaced_and_the_flow_completes(docker_client, lost_image, lost_project):
    run = _Run(lost_project, lost_image, "--param", "nap=3", "--param", "size=2")
    try:
        run.wait_for("Beginning flow run")
        time.sleep(4)  # both workers are in the middle of a task
        victim = f"flowrig-{run.run_id}-worker-0"
        assert _containers(docker_client, run.run_id).get(victim) == "worker", run.stderr[-3000:]
        killed = docker_client.containers.get(victim)
        killed.kill()
        lost = time.monotonic()
        # Replaced under its name within the documented bound: lost-worker-timeout
        # (15 s), two checks, a container's start.
        while True:
            running = {c.id for c in docker_client.containers.list(filters={"name": victim})}
            if running - {killed.id}:
                break
            assert time.monotonic() - lost < REPLACED_WITHIN, run.stderr[-3000:]
            time.sleep(0.5)
        assert run.finish() == 0, run.stderr[-3000:]
        # Its task ran again elsewhere, and the flow saw two workers again at its end.
        assert run.outcome["result"] == {"total": TOTAL, "workers": 2, "lifetime": [NO_CLIENT_TIMEOUT, None]}
        assert "worker 0 left the cluster and did not come back: starting it again" in run.stderr
        assert _leftovers(docker_client, run.run_id) == []
    finally:
        run.kill()
        engine.remove_run(docker_client, run.run_id)


def test_a_killed_runner_container_ends_the_run_with_one_line_and_removes_everything(
    docker_client, lost_image, lost_project
):
    run = _Run(lost_project, lost_image, "--param", "nap=120")
    try:
        run.wait_for("Beginning flow run")
        runner = f"flowrig-{run.run_id}-runner"
        docker_client.containers.get(runner).kill()
        killed = time.monotonic()
        assert run.finish(timeout=60) == 3, run.stderr[-3000:]
        seconds = time.monotonic() - killed
        errors = [line for line in run.lines if line.startswith("flowrig: error:")]
        assert errors == [
            f"flowrig: error: the runner container {runner} ended by SIGKILL (exit 137; killed or stopped "
            "from outside the run); everything of the run is removed\n"
        ], run.stderr[-3000:]
        assert "Traceback" not in run.stderr
        assert _leftovers(docker_client, run.run_id) == []
        assert seconds < 30, seconds
    finally:
        run.kill()
        engine.remove_run(docker_client, run.run_id)


def test_with_host_and_runner_gone_the_scheduler_and_workers_stop_by_themselves(docker_client, lost_image, lost_project):
    run = _Run(lost_project, lost_image, "--param", "nap=120")
    try:
        run.wait_for("Beginning flow run")
        time.sleep(2)
        # Nothing is left to tear the cluster down: the host gets SIGKILL, then its runner.
        run.process.send_signal(signal.SIGKILL)
        run.process.wait(30)
        runner = f"flowrig-{run.run_id}-runner"
        try:
            docker_client.containers.get(runner).kill()
        except Exception:  # it may have ended already, having lost its host
            pass
        lost = time.monotonic()
        # The bound: the no-client timeout, a second of checking, the workers' close.
        bound = NO_CLIENT_TIMEOUT + 15
        while _containers(docker_client, run.run_id):
            assert time.monotonic() - lost < bound, _containers(docker_client, run.run_id)
            time.sleep(0.5)
        scheduler = docker_client.containers.get(f"flowrig-{run.run_id}-scheduler")
        assert b"no client connected for 5 s" in scheduler.logs()
    finally:
        run.kill()
        engine.remove_run(docker_client, run.run_id)


def test_a_runner_busy_between_submissions_past_the_no_client_timeout_keeps_its_cluster(
    docker_client, lost_image, lost_project
):
    run = _Run(lost_project, lost_image, "--param", "nap=0", "--param", f"pause={NO_CLIENT_TIMEOUT * 3}")
    try:
        assert run.finish() == 0, run.stderr[-3000:]
        assert run.outcome["result"] == {"total": TOTAL, "workers": 2, "lifetime": [NO_CLIENT_TIMEOUT, None]}
        assert _leftovers(docker_client, run.run_id) == []
    finally:
        run.kill()
        engine.remove_run(docker_client, run.run_id)


def test_a_docker_run_past_its_timeout_ends_with_124_and_removes_everything(docker_client, lost_image, lost_project):
    run = _Run(lost_project, lost_image, "--param", "nap=120", "--timeout", "40")
    started = time.monotonic()
    try:
        assert run.finish(timeout=180) == 124, run.stderr[-3000:]
        assert 40 <= time.monotonic() - started < 100
        errors = [line for line in run.lines if line.startswith("flowrig: error:")]
        assert errors == [
            "flowrig: error: the run went on for longer than its timeout of 40 s and was ended; everything it "
            "started is torn down (raise [run] timeout in flowrig.toml or --timeout)\n"
        ], run.stderr[-3000:]
        assert _leftovers(docker_client, run.run_id) == []
    finally:
        run.kill()
        engine.remove_run(docker_client, run.run_id)
