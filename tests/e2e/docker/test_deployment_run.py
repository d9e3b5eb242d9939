"""A deployment's flow run, started the way a Prefect ECS worker starts it.

A real Prefect server (``prefect server start``) holds a deployment and a flow run with
parameters. The image is started with ``PREFECT_API_URL`` and ``PREFECT__FLOW_RUN_ID``
and the command a Prefect worker sends (``prefect flow-run execute``); the entrypoint
must read the parameters from the server, size the cluster from them, run the flow as
that flow run and report its final state back, with the Dask side of the run told to
that flow run.
"""

from __future__ import annotations

import subprocess

import pytest

from tests.e2e.docker.test_run_told import Server, flowrig_lines

pytestmark = pytest.mark.docker


def test_flow_run_from_a_deployment_is_sized_from_its_parameters_and_reported(prefect_server, seed_image):
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    x = list(range(15))  # the seed's hook: one worker per five items -> 3 workers
    with temporary_settings(updates={PREFECT_API_URL: prefect_server}):
        with get_client(sync_client=True) as client:
            flow_id = client.create_flow_from_name("dask-cloud-provider-test")
            deployment_id = client.create_deployment(
                flow_id=flow_id, name="ecs", entrypoint="flow.py:dask_cloud_provider_test"
            )
            flow_run = client.create_flow_run_from_deployment(deployment_id, parameters={"x": x})

    done = subprocess.run(
        [
            "docker", "run", "--rm", "--network", "host",
            "-e", f"PREFECT_API_URL={prefect_server}",
            "-e", f"PREFECT__FLOW_RUN_ID={flow_run.id}",
            seed_image, "prefect", "flow-run", "execute",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "3 workers on local" in done.stderr, done.stderr[-3000:]

    with temporary_settings(updates={PREFECT_API_URL: prefect_server}):
        with get_client(sync_client=True) as client:
            final = client.read_flow_run(flow_run.id)
    assert final.state is not None and final.state.is_completed(), final.state
    assert final.parameters == {"x": x}
    # The Dask side, told to the deployment's flow run (whose id was known up front).
    server = Server(prefect_server)
    told = flowrig_lines(server.logs(flow_run.id))
    assert any(line.endswith("asking the local backend for 3 workers") for line in told), told
    assert {"worker 0 joined", "worker 1 joined", "worker 2 joined"} <= {line.split(" at ")[0] for line in told}
    events = server.wait_for(lambda: server.events(flow_run.id),
                             lambda found: "flowrig.worker.joined" in {e["event"] for e in found})
    assert len([e for e in events if e["event"] == "flowrig.worker.joined"]) == 3
    assert len(server.artifacts(flow_run.id)) == 1


@pytest.mark.parametrize("flow_name, entrypoint", [
    ("other", "other.py:other"),                               # another flow altogether
    ("dask-cloud-provider-test", "other.py:dask_cloud_provider_test"),  # the name, but another file
    ("other", "flow.py:dask_cloud_provider_test"),             # the file, but another flow's name
])
def test_a_flow_run_of_another_flow_is_failed_before_any_cluster(prefect_server, seed_image, flow_name, entrypoint):
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings(updates={PREFECT_API_URL: prefect_server}):
        with get_client(sync_client=True) as client:
            flow_id = client.create_flow_from_name(flow_name)
            deployment_id = client.create_deployment(flow_id=flow_id, name="pointed-at-seed", entrypoint=entrypoint)
            flow_run = client.create_flow_run_from_deployment(deployment_id, parameters={"x": [1, 2]})

    done = subprocess.run(
        [
            "docker", "run", "--rm", "--network", "host",
            "-e", f"PREFECT_API_URL={prefect_server}",
            "-e", f"PREFECT__FLOW_RUN_ID={flow_run.id}",
            seed_image, "prefect", "flow-run", "execute",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 2, done.stderr[-3000:]
    [line] = done.stderr.strip().splitlines()
    assert f"deployment {flow_name}/pointed-at-seed is for flow {flow_name!r} ({entrypoint})" in line
    assert "this image runs flow 'dask-cloud-provider-test' (flow.py:dask_cloud_provider_test)" in line
    # The one line is all the run said: no cluster started (a run tells its workers).

    with temporary_settings(updates={PREFECT_API_URL: prefect_server}):
        with get_client(sync_client=True) as client:
            final = client.read_flow_run(flow_run.id)
            task_runs = client.read_task_runs()
    assert final.state is not None and final.state.is_failed(), final.state
    assert final.state.message == line.removeprefix("flowrig-entrypoint: error: ")
    assert not [t for t in task_runs if t.flow_run_id == flow_run.id]
