"""``flowrig ecs task-definitions`` against AWS and processes: registration goes to a real
moto server, an unreachable endpoint ends with one line and exit 3, and the rendered
health checks run against real processes. Rendering and bad input are in
tests/unit/test_ecs_taskdefs.py."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from flowrig import roles
from flowrig.backends.aws.ecs import taskdefs
from flowrig.cli.ecs import app
from tests.run_support import FLOWRIG
from tests.unit.test_ecs_taskdefs import BASE_ARGS


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([*FLOWRIG, "ecs", *args], capture_output=True, text=True, env=env, timeout=120)


# --- rendering -------------------------------------------------------------------


def test_worker_health_check_finds_a_worker_process():
    # The negative cases (no worker, the check itself not counted) run in containers, in
    # test_ecs_run_local.py, where no other process can hold the words.
    command = list(taskdefs.WORKER_HEALTH_COMMAND)
    assert command[0] == "CMD"
    # A process whose command line names the worker module, as the image's worker does.
    fake = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", "distributed.cli.dask_worker"])
    try:
        check = subprocess.run([sys.executable, *command[2:]], timeout=30)
        assert check.returncode == 0
    finally:
        fake.kill()
        fake.wait()


def test_scheduler_health_check_needs_a_listener_on_the_scheduler_port():
    code = taskdefs.SCHEDULER_HEALTH_COMMAND[-1]
    with socket.socket() as probe:
        taken = probe.connect_ex(("127.0.0.1", roles.SCHEDULER_PORT)) == 0
    if taken:
        pytest.skip("something on this machine listens on 8786")
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=30).returncode != 0


# --- bad input -------------------------------------------------------------------


def test_unreachable_aws_endpoint_exits_3_with_one_line(tmp_path):
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    # Nothing listens on the port once the socket is closed.
    env = {**os.environ, "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_ACCESS_KEY_ID": "x",
           "AWS_SECRET_ACCESS_KEY": "y", "AWS_EC2_METADATA_DISABLED": "true",
           # One attempt: botocore's backoff between retries would only make the test wait.
           "AWS_MAX_ATTEMPTS": "1"}
    done = cli("task-definitions", *BASE_ARGS, "--register", env=env)
    assert done.returncode == 3, done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
    assert "cannot reach AWS" in done.stderr and str(port) in done.stderr


# --- registering -----------------------------------------------------------------
@pytest.mark.aws
def test_register_prints_arns_of_what_ecs_now_holds(aws, tmp_path):
    import boto3

    runner = CliRunner()
    result = runner.invoke(app, ["task-definitions", *BASE_ARGS, "--register", "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    arns = dict(line.split("\t") for line in result.stdout.strip().splitlines())
    assert list(arns) == ["runner", "scheduler", "worker"]
    ecs = boto3.client("ecs")
    for role, arn in arns.items():
        described = ecs.describe_task_definition(taskDefinition=arn, include=["TAGS"])
        written = json.loads((tmp_path / f"{role}.json").read_text())
        assert described["taskDefinition"]["family"] == written["family"]
        assert described["taskDefinition"]["containerDefinitions"][0]["command"] == written["containerDefinitions"][0]["command"]
        assert {t["key"]: t["value"] for t in described["tags"]}["flowrig-project"] == "seed"
    [request] = [r for r in aws.requests("RegisterTaskDefinition") if r["body"]["family"] == "flowrig-seed-worker"]
    assert request["body"] == json.loads((tmp_path / "worker.json").read_text())


