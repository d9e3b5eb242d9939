"""Untrusted flow output and flow code against the docker backend's host, with real
containers of the seed image.

A project allows one worker (``max_workers = 1``). Its flow module prints, at import
time, the request that once made the host start four workers with an extra
environment and a scheduler that outlives its runner by a day; its flow prints a
parameter that holds the request that once tore the cluster down mid-run. Then, as
code in the runner's own process can, it writes a request on the control stream
itself, and asks through the runner's own channel (with the run's key) for more than
the project allows, and for a second cluster. The run must complete on its one
worker, no other worker container may ever exist, and the run's log must name each
refused request.

Only ``tests`` helpers and the container engine are imported here, so this file also
runs against an older flowrig.
"""

from __future__ import annotations

import json
import subprocess
import threading
import time
import uuid

import pytest

from flowrig.containers import engine
from tests.docker_support import derived_image, docker_run_env
from tests.run_support import FLOWRIG_SCRIPT, write_project

pytestmark = pytest.mark.docker

#: What the host once obeyed when the run printed it.
OLD_CLOSE = '\x1eflowrig-control {"op":"close"}'
OLD_START = (
    '\x1eflowrig-control {"op":"start","n_workers":4,"adapt":null,"worker_threads":1,'
    '"options":{"environment":{"EVIL":"1"}},"worker_env":{"EVIL":"1"},"no_client_timeout":100000}'
)

ATTACK_FLOW = f"""
import os
import time

from prefect import flow, task

# A dependency (or the flow) printing at import time, before the runner's own start.
print({OLD_START!r}, flush=True)


@task
def double(x: int) -> int:
    return x * 2


def _control_fd() -> int:
    # The container's stdout, found as any code in the process can: the descriptor that
    # is the same pipe as PID 1's stdout.
    target = os.readlink("/proc/1/fd/1")
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        try:
            if fd > 2 and os.readlink(f"/proc/self/fd/{{fd}}") == target:
                return fd
        except OSError:
            pass
    raise RuntimeError("no descriptor of the container's stdout")


def _attack() -> dict:
    from flowrig.backends.docker import control

    found = {{}}
    # 1. A request written on the control stream itself, without the run's key.
    forged = b'{{"op":"start","seq":100,"n_workers":4,"adapt":null,"worker_threads":1,"options":{{}},"worker_env":{{}},"no_client_timeout":100000}}'
    os.write(_control_fd(), control.PREFIX + b"0" * 64 + b" " + forged + b"\\n")
    # 2. With the runner's own channel and key: more than the project allows.
    channel = control.runner_channel()
    asked = dict(adapt=None, worker_threads=1, worker_env={{}}, no_client_timeout=100000)
    try:
        channel.request("start", 60, n_workers=4, options={{"environment": {{"EVIL": "1"}}}}, **asked)
        found["more"] = "started"
    except Exception as exc:
        found["more"] = str(exc)
    # 3. A second cluster, within the limits.
    try:
        channel.request("start", 60, n_workers=1, adapt=None, worker_threads=1, options={{}}, worker_env={{}},
                        no_client_timeout=None)
        found["second"] = "started"
    except Exception as exc:
        found["second"] = str(exc)
    return found


@flow
def main(msg: str = "", attack: bool = False) -> dict:
    print(msg, flush=True)  # a harmless flow echoing its parameter
    found = _attack() if attack else {{}}
    time.sleep(3)  # the cluster torn down by the printed close would be gone by now
    return {{"result": double.submit(21).result(), **found}}
"""

PROJECT_TOML = 'flow = "flow.py:main"\n\n[cluster]\nbackend = "docker"\nn_workers = 1\nmax_workers = 1\n'


@pytest.fixture(scope="module")
def attack_image(docker_client, seed_image, tmp_path_factory):
    project = write_project(tmp_path_factory.mktemp("attack") / "project", ATTACK_FLOW, PROJECT_TOML)
    with derived_image(docker_client, seed_image, project, "flowrig-attack") as tag:
        yield tag


class _Watch:
    """Every container of a run seen while it runs: names and environments."""

    def __init__(self, client, run_id: str) -> None:
        self.client, self.run_id = client, run_id
        self.names: set[str] = set()
        self.env: set[str] = set()
        self.commands: list[list[str]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._look, daemon=True)
        self._thread.start()

    def _look(self) -> None:
        while not self._stop.is_set():
            for item in self.client.api.containers(all=True, filters={"label": f"flowrig.run-id={self.run_id}"}):
                name = item["Names"][0].lstrip("/")
                if name not in self.names:
                    self.names.add(name)
                    try:
                        config = self.client.api.inspect_container(item["Id"])["Config"]
                    except Exception:
                        continue
                    self.env.update(config.get("Env") or [])
                    self.commands.append(config.get("Cmd") or [])
            time.sleep(0.2)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)


def _run(client, image: str, *params: str) -> tuple[subprocess.CompletedProcess, _Watch, str]:
    run_id = "a" + uuid.uuid4().hex[:9]
    watch = _Watch(client, run_id)
    try:
        args = [FLOWRIG_SCRIPT, "run", "--backend", "docker", "--image", image, "--output", "json"]
        for param in params:
            args += ["--param", param]
        done = subprocess.run(args, env=docker_run_env(run_id), capture_output=True, text=True, timeout=400)
    finally:
        watch.stop()
    return done, watch, run_id


def _assert_one_worker_and_nothing_extra(watch: _Watch, run_id: str) -> None:
    workers = sorted(name for name in watch.names if "-worker-" in name)
    assert workers == [f"flowrig-{run_id}-worker-0"], workers
    assert not any(item.startswith("EVIL=") for item in watch.env)
    assert not any("100000" in " ".join(command) for command in watch.commands), watch.commands


def test_printed_control_requests_are_output_and_never_obeyed(docker_client, attack_image):
    done, watch, run_id = _run(docker_client, attack_image, f"msg={OLD_CLOSE}")
    try:
        assert done.returncode == 0, done.stderr[-3000:]
        outcome = json.loads(done.stdout.strip().splitlines()[-1])
        assert outcome["result"] == {"result": 42} and outcome["n_workers"] == 1
        # Both printed lines reached the output as they were printed.
        assert OLD_START in done.stdout and OLD_CLOSE in done.stdout
        _assert_one_worker_and_nothing_extra(watch, run_id)
        ignored = [line for line in done.stderr.splitlines() if "ignored a control request the run printed" in line]
        assert any('"op":"start","n_workers":4' in line for line in ignored), done.stderr[-3000:]
        assert any('{"op":"close"}' in line for line in ignored), done.stderr[-3000:]
        assert all("the host takes requests only from the runner's own channel" in line for line in ignored)
    finally:
        engine.remove_run(docker_client, run_id)
    assert engine.run_containers(docker_client, run_id) == []


def test_flow_code_on_the_runners_own_channel_gets_no_more_than_the_project_allows(docker_client, attack_image):
    done, watch, run_id = _run(docker_client, attack_image, "attack=true")
    try:
        assert done.returncode == 0, done.stderr[-3000:]
        result = json.loads(done.stdout.strip().splitlines()[-1])["result"]
        assert result["result"] == 42
        # The host answered the flow's own requests with what it refused, and why.
        assert "the host refused the cluster this run asked for: 4 workers, outside" in result["more"]
        assert "max_workers = 1" in result["more"]
        assert "a second start: a run gets one cluster" in result["second"]
        _assert_one_worker_and_nothing_extra(watch, run_id)
        log = done.stderr
        assert "refused a control message (" in log and "its signature is not the run's" in log
        assert "refused the runner's request 'start' of 4 workers: 4 workers, outside min_workers = 0 and " in log
        assert "refused the runner's request 'start' of 1 worker: a second start" in log
    finally:
        engine.remove_run(docker_client, run_id)
    assert engine.run_containers(docker_client, run_id) == []


def test_the_watch_sees_an_extra_worker_and_its_environment(docker_client, seed_image):
    """_Watch and the check on it can fail: containers of a run with a second worker
    and an extra variable are seen."""
    from flowrig.containers import ContainerPlan

    run_id = "a" + uuid.uuid4().hex[:9]
    watch = _Watch(docker_client, run_id)
    try:
        for worker in (0, 1):
            engine.create_container(docker_client, ContainerPlan(
                name=f"flowrig-{run_id}-worker-{worker}", image=seed_image, command=("info",),
                labels={"flowrig.run-id": run_id, "flowrig.role": "worker"}, environment={"EVIL": "1"},
                network="bridge",
            ))
        deadline = time.monotonic() + 30
        while len(watch.names) < 2 and time.monotonic() < deadline:
            time.sleep(0.2)
    finally:
        watch.stop()
        engine.remove_run(docker_client, run_id)
    with pytest.raises(AssertionError):
        _assert_one_worker_and_nothing_extra(watch, run_id)
    assert "EVIL=1" in watch.env
