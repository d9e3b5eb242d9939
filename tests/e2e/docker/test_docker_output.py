"""What a person and a script see of a docker-backend run and of the image's ``run``
role: the tasks' own lines on the host's console, one JSON line on every way out
(never two), a strict run, and timings counted from the host command's start."""

from __future__ import annotations

import json
import subprocess
import textwrap
import time
import uuid
from pathlib import Path

import pytest

from flowrig.containers import engine
from tests.docker_support import derived_image, docker_run_env
from tests.e2e.docker.test_docker_backend import _leftovers
from tests.e2e.local.test_run_output import FAILED_FEEDING_FLOW, LOG_FLOW, OUTCOME_KEYS
from tests.run_support import FLOWRIG_SCRIPT, NAP_FLOW


def _run_id() -> str:
    return "o" + uuid.uuid4().hex[:9]


def _outcomes(stdout: str) -> list[dict]:
    """Every JSON outcome line of stdout."""
    found = []
    for line in stdout.splitlines():
        if line.startswith("{"):
            data = json.loads(line)
            if "exit_code" in data:
                found.append(data)
    return found


def _project(root: Path, flow: str, extra: str = "") -> Path:
    root.mkdir(parents=True)
    (root / "flow.py").write_text(textwrap.dedent(flow))
    (root / "flowrig.toml").write_text(f'flow = "flow.py:main"\n\n[cluster]\nbackend = "docker"\nn_workers = 1\n{extra}')
    return root


@pytest.fixture(scope="module")
def images(docker_client, seed_image, tmp_path_factory):
    """The seed image with each of this file's projects in place of the seed's."""
    root = tmp_path_factory.mktemp("docker-output")
    made = {}
    with derived_image(docker_client, seed_image, _project(root / "log", LOG_FLOW), "flowrig-out-log") as log, \
            derived_image(docker_client, seed_image, _project(root / "nap", NAP_FLOW), "flowrig-out-nap") as nap, \
            derived_image(docker_client, seed_image, _project(root / "fails", FAILED_FEEDING_FLOW),
                          "flowrig-out-fails") as fails:
        made.update(log=log, nap=nap, fails=fails)
        yield made


def _flowrig(run_id: str, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([FLOWRIG_SCRIPT, *args], env=docker_run_env(run_id), capture_output=True, text=True,
                          timeout=timeout)


@pytest.mark.docker
def test_task_lines_reach_the_hosts_console_and_timings_count_from_the_hosts_start(docker_client, images):
    run_id = _run_id()
    started = time.monotonic()
    done = _flowrig(run_id, "run", "--backend", "docker", "--image", images["log"], "--output", "json")
    wall = time.monotonic() - started
    try:
        assert done.returncode == 0, done.stderr[-3000:]
        for x in (0, 1):
            for kind in ("warning", "error", "printed"):
                assert sum(f"{kind}-line-{x}" in line for line in done.stderr.splitlines()) == 1, (kind, x)
            assert f"info-line-{x}" not in done.stderr
        [outcome] = _outcomes(done.stdout)
        assert (outcome["result"], outcome["exit_code"]) == (1, 0)
        timings = outcome["timings"]
        # From the host command's start: its own start and the runner container's are in.
        assert wall - 10 < timings["total"] <= wall, (wall, timings)
        assert timings["startup"] > 0.5, timings
        # The host's marks of the cluster's start, on the runner's timeline, in order:
        # after the request (the end of prepare), before the workers' joins.
        asked = timings["startup"] + timings["load"] + timings["prepare"]
        assert asked < timings["containers_started"] < timings["scheduler_up"], timings
        assert timings["scheduler_up"] <= timings["first_worker_joined"] <= timings["all_workers_joined"], timings
        assert _leftovers(docker_client, run_id) == []
    finally:
        engine.remove_run(docker_client, run_id)


@pytest.mark.docker
def test_one_json_line_on_every_way_out_of_a_docker_run(docker_client, images):
    # Bad input the host sees (malformed JSON): the host prints the outcome.
    host_bad = _flowrig(_run_id(), "run", "--backend", "docker", "--image", images["nap"], "--output", "json",
                        "--param", "seconds=[")
    assert host_bad.returncode == 2, host_bad.stderr[-3000:]
    [outcome] = _outcomes(host_bad.stdout)
    assert (outcome["state"], outcome["exit_code"], outcome["backend"]) == ("BadInput", 2, "docker")
    # Bad input the runner sees (the flow's signature): the runner prints it, once.
    run_id = _run_id()
    runner_bad = _flowrig(run_id, "run", "--backend", "docker", "--image", images["nap"], "--output", "json",
                          "--param", "seconds=\"long\"")
    try:
        assert runner_bad.returncode == 2, runner_bad.stderr[-3000:]
        [outcome] = _outcomes(runner_bad.stdout)
        assert (outcome["state"], outcome["exit_code"], outcome["run_id"]) == ("BadInput", 2, run_id)
        assert "seconds" in outcome["error"]
        # It never asked for a cluster: nothing of the run is left behind.
        assert _leftovers(docker_client, run_id) == []
    finally:
        engine.remove_run(docker_client, run_id)
    # The run's timeout: the runner ends its run and says so, once.
    run_id = _run_id()
    timed_out = _flowrig(run_id, "run", "--backend", "docker", "--image", images["nap"], "--output", "json",
                         "--timeout", "40")
    try:
        assert timed_out.returncode == 124, timed_out.stderr[-3000:]
        [outcome] = _outcomes(timed_out.stdout)
        assert set(outcome) == OUTCOME_KEYS
        assert (outcome["state"], outcome["exit_code"], outcome["run_id"]) == ("TimedOut", 124, run_id)
        assert outcome["error"].startswith("the run went on for longer than its timeout of 40 s")
        assert timed_out.stdout.strip().splitlines()[-1].startswith("{")
        assert _leftovers(docker_client, run_id) == []
    finally:
        engine.remove_run(docker_client, run_id)


@pytest.mark.docker
def test_strict_reaches_the_runner_container(docker_client, images):
    run_id = _run_id()
    done = _flowrig(run_id, "run", "--backend", "docker", "--image", images["fails"], "--output", "json", "--strict")
    try:
        assert done.returncode == 1, done.stderr[-3000:]
        [outcome] = _outcomes(done.stdout)
        assert (outcome["state"], outcome["exit_code"]) == ("Completed", 1)
        assert outcome["failed_tasks"]["by_task"] == {"boom": 2}
    finally:
        engine.remove_run(docker_client, run_id)


@pytest.mark.docker
def test_the_images_run_role_prints_its_json_line_on_bad_input(docker_client, images):
    """``docker run IMAGE run ...`` (the role a Prefect worker or a CI job starts)."""
    for args, error in (
        (["--param", "seconds=["], "--param seconds: malformed JSON"),
        (["--no-such-option"], "No such option: --no-such-option"),
    ):
        done = subprocess.run(
            ["docker", "run", "--rm", "--network", "none", images["nap"], "run", "--output", "json", *args],
            capture_output=True, text=True, timeout=120,
        )
        assert done.returncode == 2, done.stderr[-3000:]
        [outcome] = _outcomes(done.stdout)
        assert (outcome["state"], outcome["exit_code"]) == ("BadInput", 2)
        assert error in outcome["error"]
