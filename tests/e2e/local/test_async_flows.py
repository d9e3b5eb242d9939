"""``async def`` flows with mapped async tasks, through every front end, give what plain
Prefect with prefect-dask's ``DaskTaskRunner`` gives.

The reference is computed once per session by plain Prefect (no flowrig in the run: a
``DaskTaskRunner`` that starts its own ``LocalCluster``, against a real Prefect server);
then ``flowrig run``, the image's ``run`` role (a container of the real image), a
deployment's flow run and :class:`flowrig.DaskCloudProviderEnvironment` (also from inside
a running event loop, as in a notebook) must each give exactly that.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import textwrap
import uuid

import pytest

from tests.docker_support import derived_image
from tests.run_support import FLOWRIG, assert_nothing_left, marked_env, run_cli

pytestmark = pytest.mark.timeout(600)

ASYNC_FLOW = """
    import asyncio
    from prefect import flow, task

    @task
    async def square(x: int) -> int:
        await asyncio.sleep(0.01)
        return x * x

    @task
    async def total(values: list) -> int:
        await asyncio.sleep(0)
        return sum(values)

    @flow
    async def main(x: list[int]) -> dict:
        squares = square.map(x)
        summed = total.submit(squares)
        direct = await square(3)  # an async task called in the flow itself
        return {"squares": squares.result(), "total": summed.result(), "direct": direct}
"""

X = [0, 1, 2, 3, 4, 5, 6]
EXPECTED = {"squares": [x * x for x in X], "total": sum(x * x for x in X), "direct": 9}

PLAIN_PREFECT = """
    import asyncio, importlib.util, json, sys
    from prefect_dask import DaskTaskRunner

    if __name__ == "__main__":
        spec = importlib.util.spec_from_file_location("async_flow", sys.argv[1])
        module = importlib.util.module_from_spec(spec)
        sys.modules["async_flow"] = module
        spec.loader.exec_module(module)
        runner = DaskTaskRunner(cluster_kwargs={"n_workers": 2, "processes": True, "dashboard_address": None})
        result = asyncio.run(module.main.with_options(task_runner=runner)(x=json.loads(sys.argv[2])))
        print(json.dumps(result))
"""


@pytest.fixture(scope="module")
def async_project(tmp_path_factory):
    root = tmp_path_factory.mktemp("async-project")
    (root / "flow.py").write_text(textwrap.dedent(ASYNC_FLOW))
    (root / "flowrig.toml").write_text('flow = "flow.py:main"\n\n[cluster]\nn_workers = 2\n')
    return root


@pytest.fixture(scope="module")
def plain_prefect_result(async_project, prefect_server, tmp_path_factory):
    """What Prefect and prefect-dask alone make of the flow."""
    script = tmp_path_factory.mktemp("plain") / "plain.py"
    script.write_text(textwrap.dedent(PLAIN_PREFECT))
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(PREFECT_API_URL=prefect_server, PREFECT_SERVER_ANALYTICS_ENABLED="false")
    done = subprocess.run(
        [sys.executable, str(script), str(async_project / "flow.py"), json.dumps(X)],
        env=env, capture_output=True, text=True, timeout=400, cwd=async_project,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result == EXPECTED
    return result


def test_flowrig_run(async_project, plain_prefect_result):
    done = run_cli("run", str(async_project), "--param", f"x={json.dumps(X)}", "--output", "json")
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.json["state"] == "Completed"
    assert done.json["result"] == plain_prefect_result
    assert_nothing_left(done.marker, done.json["scheduler_address"])


def test_a_deployments_flow_run(async_project, plain_prefect_result, prefect_server):
    """``PREFECT__FLOW_RUN_ID`` set, as a Prefect worker starts it: the existing flow run
    is run (asynchronously) and its final state reported to the server."""
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings(updates={PREFECT_API_URL: prefect_server}):
        with get_client(sync_client=True) as client:
            flow_id = client.create_flow_from_name("main")
            deployment_id = client.create_deployment(
                flow_id=flow_id, name=f"async-{uuid.uuid4().hex[:6]}", entrypoint="flow.py:main"
            )
            flow_run = client.create_flow_run_from_deployment(deployment_id, parameters={"x": X})
    env = {**marked_env("deployment-" + flow_run.id.hex), "PREFECT_API_URL": prefect_server,
           "PREFECT__FLOW_RUN_ID": str(flow_run.id)}
    done = subprocess.run([*FLOWRIG, "run", str(async_project), "--output", "json"], env=env,
                          capture_output=True, text=True, timeout=400)
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads(done.stdout.strip().splitlines()[-1])["result"] == plain_prefect_result
    with temporary_settings(updates={PREFECT_API_URL: prefect_server}):
        with get_client(sync_client=True) as client:
            final = client.read_flow_run(flow_run.id)
    assert final.state is not None and final.state.is_completed(), final.state


def _load_flow(async_project):
    from flowrig.project.flow_loader import load_flow

    return load_flow(async_project / "flow.py", "main")


def test_dask_cloud_provider_environment(async_project, plain_prefect_result):
    from flowrig import DaskCloudProviderEnvironment

    outcome = DaskCloudProviderEnvironment("local", n_workers=2).run(_load_flow(async_project), {"x": X})
    assert outcome.state == "Completed", outcome.message
    assert outcome.result == plain_prefect_result


def test_dask_cloud_provider_environment_inside_a_running_event_loop(async_project, plain_prefect_result):
    """A notebook's cell runs inside an event loop: the flow runs on a loop of its own."""
    from flowrig import DaskCloudProviderEnvironment

    env = DaskCloudProviderEnvironment("local", n_workers=1)

    async def cell():
        return env.run(_load_flow(async_project), {"x": X})

    outcome = asyncio.run(cell())
    assert outcome.state == "Completed", outcome.message
    assert outcome.result == plain_prefect_result


@pytest.mark.docker
def test_the_images_run_role(docker_client, seed_image, async_project, plain_prefect_result):
    with derived_image(docker_client, seed_image, async_project, "flowrig-async") as image:
        done = subprocess.run(
            ["docker", "run", "--rm", image, "run", "--param", f"x={json.dumps(X)}", "--output", "json"],
            capture_output=True, text=True, timeout=400,
        )
    assert done.returncode == 0, done.stderr[-3000:]
    outcome = json.loads(done.stdout.strip().splitlines()[-1])
    assert outcome["state"] == "Completed"
    assert outcome["result"] == plain_prefect_result
