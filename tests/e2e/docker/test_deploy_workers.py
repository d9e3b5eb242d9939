"""End to end: ``flowrig deploy`` from a shell without the flow's dependencies, a
schedule, and a real Prefect worker of each pool type (process and docker) that starts
the image, whose run completes on its own TLS cluster and reports to the server.

The project's flow imports a module that exists only in its image, so the flow cannot
be imported on this machine at all. The image is the seed image with that module and
the project added (one small layer, with the manifest ``flowrig build`` would write for
the project). The server is a real ``prefect server`` started by the ``prefect_server``
fixture; workers reach it on the host's loopback (the docker worker puts its containers
on the host network for a loopback API, the process pool's ``docker run`` joins it), and
nothing is pulled (``--pull-policy Never``).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from flowrig import layout
from flowrig.errors import BadInput
from tests.run_support import FLOWRIG

pytestmark = pytest.mark.docker

FLOW_NAME = "hostless-scheduled"
FLOW_SOURCE = '''
"""Squares 0..n-1 on the run's own cluster."""

import hostless_dep  # in the image only: importing this file anywhere else fails
from prefect import flow, get_run_logger, task


@task
def square(value: int) -> int:
    return hostless_dep.square(value)


@task
def scheduler_address() -> str:
    from distributed import get_worker

    return get_worker().scheduler.address


@flow(name="hostless-scheduled")
def scheduled(n: int = 3) -> int:
    """Squares 0..n-1 on the run's own cluster and adds them up."""
    get_run_logger().info("cluster scheduler at %s", scheduler_address.submit().result())
    return sum(square.map(range(n)).result())
'''
PROJECT_TOML = 'flow = "flow.py:scheduled"\n\n[cluster]\nbackend = "local"\nn_workers = 2\n'


@pytest.fixture(scope="module")
def hostless_project(tmp_path_factory) -> Path:
    project = tmp_path_factory.mktemp("hostless") / "hostless"
    project.mkdir()
    (project / "flowrig.toml").write_text(PROJECT_TOML)
    (project / "flow.py").write_text(FLOW_SOURCE)
    return project


@pytest.fixture(scope="module")
def hostless_image(docker_client, seed_image, hostless_project):
    """The seed image with the project, its manifest, and ``hostless_dep`` on its path."""
    from flowrig.builder import render_context
    from flowrig.containers.engine import image_file
    from tests.docker_support import derived_image, test_base_image

    manifest = json.loads(image_file(docker_client, seed_image, str(layout.IMAGE_MANIFEST)))
    rendered = render_context(hostless_project, base_image=test_base_image()).manifest
    manifest.update(project=rendered["project"], flow=rendered["flow"])
    steps = (
        "COPY extra/ /opt/flowrig/extra/\n"
        "ENV PYTHONPATH=/opt/flowrig/extra\n"
        f"COPY manifest.json {layout.IMAGE_MANIFEST}\n"
    )
    files = {
        "extra/hostless_dep.py": b"def square(value):\n    return value * value\n",
        "manifest.json": json.dumps(manifest).encode(),
    }
    with derived_image(docker_client, seed_image, hostless_project, "flowrig-hostless", steps=steps, files=files) as tag:
        yield tag


def _env(server: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(PREFECT_API_URL=server, PREFECT_SERVER_ANALYTICS_ENABLED="false", **extra)
    # The docker CLI the process pool's command runs.
    env["PATH"] = "/usr/bin:" + env.get("PATH", "")
    return env


def _terminate(worker: subprocess.Popen) -> None:
    if worker.poll() is None:
        worker.send_signal(signal.SIGTERM)
        try:
            worker.wait(timeout=30)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait(timeout=30)


def test_the_flow_cannot_be_imported_here(hostless_project):
    from flowrig.project import flow_loader

    with pytest.raises(BadInput, match="hostless_dep"):
        flow_loader.load_flow(hostless_project / "flow.py", "scheduled")


POOL_TYPES = ("process", "docker")


def test_a_schedule_runs_the_image_on_a_worker_of_each_pool_type(
    prefect_server, hostless_image, hostless_project, tmp_path
):
    """Both pool types at once, so that they wait for their schedule together."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from flowrig.deploy import pool_template

    suffix = uuid.uuid4().hex[:6]
    pools = {pool_type: f"e2e-{pool_type}-{suffix}" for pool_type in POOL_TYPES}
    workers: dict[str, subprocess.Popen] = {}
    logs = {pool_type: tmp_path / f"worker-{pool_type}.log" for pool_type in POOL_TYPES}
    try:
        with temporary_settings(updates={PREFECT_API_URL: prefect_server}):
            with get_client(sync_client=True) as client:
                for pool_type, pool in pools.items():
                    client.create_work_pool(
                        WorkPoolCreate(name=pool, type=pool_type, base_job_template=pool_template(pool_type)))
        for pool_type, pool in pools.items():
            with logs[pool_type].open("w") as log:
                workers[pool_type] = subprocess.Popen(
                    [sys.executable, "-m", "prefect", "worker", "start", "--pool", pool, "--type", pool_type],
                    env=_env(prefect_server, PREFECT_WORKER_QUERY_SECONDS="1",
                             PREFECT_HOME=str(tmp_path / f"home-{pool_type}")),
                    stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path,
                )
        # The schedules' first runs a little ahead: time for the deploys and the server's scheduler.
        first = (dt.datetime.now(dt.timezone.utc) + dt.timedelta(seconds=40)).replace(microsecond=0)
        deployments = {}
        for pool_type, pool in pools.items():
            deploy = subprocess.run(
                [*FLOWRIG, "deploy", str(hostless_project), "--image", hostless_image,
                 "--pool", pool, "--name", f"{pool_type}-{suffix}", "--interval", "1h",
                 "--anchor-date", first.isoformat(), "--param", "n=5", "--pull-policy", "Never", "--output", "json"],
                capture_output=True, text=True, env=_env(prefect_server), cwd=tmp_path, timeout=300,
            )
            assert deploy.returncode == 0, deploy.stderr
            report = json.loads(deploy.stdout.strip().splitlines()[-1])
            assert report["action"] == "created" and report["deployment"] == f"{FLOW_NAME}/{pool_type}-{suffix}"
            deployments[pool_type] = report["deployment_id"]
        for pool_type, deployment_id in deployments.items():
            _check_scheduled_run(prefect_server, deployment_id, first, workers[pool_type], logs[pool_type])
    finally:
        for worker in workers.values():
            _terminate(worker)


def _check_scheduled_run(server: str, deployment_id: str, first: dt.datetime, worker: subprocess.Popen,
                         log: Path) -> None:
    """The schedule's run at ``first`` completed on the image's cluster, over TLS, and the
    server holds it, its task runs, its log lines and the Dask side of the run."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        DeploymentFilter,
        DeploymentFilterId,
        FlowRunFilter,
        FlowRunFilterId,
        LogFilter,
        LogFilterFlowRunId,
    )
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings(updates={PREFECT_API_URL: server}):
        with get_client(sync_client=True) as client:
            deployment_filter = DeploymentFilter(id=DeploymentFilterId(any_=[deployment_id]))
            deadline = time.monotonic() + 420
            run = None
            while time.monotonic() < deadline:
                runs = [r for r in client.read_flow_runs(deployment_filter=deployment_filter)
                        if r.expected_start_time == first]
                run = runs[0] if runs else None
                if run is not None and run.state is not None and run.state.is_final():
                    break
                assert worker.poll() is None, "the worker exited: " + log.read_text()[-3000:]
                time.sleep(2)
            assert run is not None, "the schedule made no run: " + log.read_text()[-3000:]
            assert run.state is not None and run.state.is_completed(), f"{run.state}\n" + log.read_text()[-5000:]
            assert "auto-scheduled" in run.tags and run.parameters == {"n": 5}
            # The server records task runs from the events the run sent, a moment after they came.
            run_filter = FlowRunFilter(id=FlowRunFilterId(any_=[run.id]))
            deadline = time.monotonic() + 60
            while True:
                done = [t for t in client.read_task_runs(flow_run_filter=run_filter)
                        if t.state is not None and t.state.is_completed()]
                if len(done) == 6 or time.monotonic() > deadline:
                    break
                time.sleep(1)
            names = sorted(t.name.split("-")[0] for t in done)
            assert names.count("square") == 5 and names.count("scheduler_address") == 1, names
            lines = [entry.message for entry in client.read_logs(LogFilter(flow_run_id=LogFilterFlowRunId(any_=[run.id])))]
            assert any(line.startswith("cluster scheduler at tls://") for line in lines), lines
    _check_dask_side(server, run)


def _check_dask_side(server: str, run) -> None:
    """The Dask side of the scheduled run on the server: flowrig's lines (workers asked
    for and joined), the timeline artifact and a worker-joined event on the flow run."""
    from tests.e2e.docker.test_run_told import Server, flowrig_lines

    told = Server(server)
    lines = flowrig_lines(told.logs(run.id))
    assert any("asking the local backend for 2 workers" in line for line in lines), lines
    assert any(line.startswith("worker 0 joined at tls://") for line in lines), lines
    # Made as the run's teardown ends, after the flow run went Completed.
    [artifact] = told.wait_for(lambda: told.artifacts(run.id), lambda found: len(found) == 1)
    assert artifact.type == "markdown" and "### Start-up timeline" in artifact.data, artifact
    assert "| first worker joined |" in artifact.data, artifact.data
    events = told.wait_for(lambda: told.events(run.id),
                           lambda found: "flowrig.worker.joined" in {e["event"] for e in found})
    joined = [e for e in events if e["event"] == "flowrig.worker.joined"]
    assert joined, sorted({e["event"] for e in events})
    related = {r["prefect.resource.role"]: r["prefect.resource.id"] for r in joined[0]["related"]}
    assert related["flow-run"] == f"prefect.flow-run.{run.id}"
