"""Tasks that use the run's cluster themselves: tasks that submit tasks, and tasks that
open a Dask client (``prefect_dask.get_dask_client()``) to compute a Dask collection.

- A flow mapping a task that submits three of its own, on 2 workers of 2 threads (the
  mapped tasks fill every thread), ends with the right result: through ``flowrig run``
  on local and on docker, and twice in one process, after which no default Dask client
  or its config is left behind.
- ``get_dask_client()`` inside a task computes on the run's own cluster, over the run's
  mutual TLS with the run's credentials, with nothing set by the user: a dask.bag
  groupby (foldby, a shuffle across workers) and a dask.array reduction.
"""

from __future__ import annotations

import json
import subprocess
import uuid

import pytest

from tests.docker_support import derived_image, docker_run_env
from tests.run_support import FLOWRIG, assert_nothing_left, run_cli

pytestmark = pytest.mark.timeout(600)

FLOW = """
    import operator
    from prefect import flow, task

    @task
    def leaf(x: int) -> int:
        return x + 1

    @task
    def parent(x: int) -> int:
        futures = [leaf.submit(10 * x + i) for i in range(3)]
        return sum(f.result() for f in futures)

    @task
    def grouped(items: int) -> dict:
        import dask.bag as db
        from prefect_dask import get_dask_client

        with get_dask_client() as client:
            bag = db.from_sequence(range(items), npartitions=4)
            groups = client.compute(bag.foldby(lambda v: v % 3, operator.add, 0)).result()
            workers = len(client.scheduler_info()["workers"])
        return {"groups": {str(k): v for k, v in sorted(groups)}, "workers": workers}

    @task
    def array_sum(items: int) -> int:
        import dask.array as da
        from prefect_dask import get_dask_client

        with get_dask_client() as client:
            return int(client.compute(da.arange(items, chunks=7).sum()).result())

    @flow
    def main(n: int = 4, items: int = 30, arrays: bool = True) -> dict:
        nested = parent.map(range(n))
        groups = grouped.submit(items)
        total = array_sum.submit(items) if arrays else None
        return {
            "nested": nested.result(),
            "dask": groups.result(),
            "array_sum": total.result() if total is not None else None,
        }
"""

TOML = 'flow = "flow.py:main"\n\n[cluster]\nn_workers = 2\nworker_threads = 2\n'

NESTED = [sum(10 * x + i + 1 for i in range(3)) for x in range(4)]  # [6, 36, 66, 96]
GROUPS = {str(k): sum(v for v in range(30) if v % 3 == k) for k in range(3)}
EXPECTED = {"nested": NESTED, "dask": {"groups": GROUPS, "workers": 2}, "array_sum": sum(range(30))}


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    from tests.run_support import write_project

    return write_project(tmp_path_factory.mktemp("on-the-cluster"), FLOW, TOML)


def dask_defaults() -> tuple:
    """This process's default Dask client, and the dask config a default client sets."""
    import dask
    from distributed.client import _get_global_client

    return _get_global_client(), dask.config.get("scheduler", None), dask.config.get("shuffle", None)


def test_flowrig_run_on_local(project):
    done = run_cli("run", str(project), "--output", "json", timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.json["result"] == EXPECTED
    assert_nothing_left(done.marker, done.json["scheduler_address"])


def test_twice_in_one_process_leaving_no_default_client(project):
    import distributed

    from flowrig.project.flow_loader import load_flow
    from flowrig.run.config import RunConfig
    from flowrig.run.execute import execute

    flow = load_flow(project / "flow.py", "main")
    before = dask_defaults()
    with pytest.raises(ValueError):
        distributed.default_client()
    for n in (4, 2):
        outcome = execute(RunConfig(flow=flow, parameters={"n": n}, n_workers=2, worker_threads=2))
        assert outcome.state == "Completed", outcome.message
        assert outcome.result == {**EXPECTED, "nested": NESTED[:n]}
        assert dask_defaults() == before
    with pytest.raises(ValueError):
        distributed.default_client()


@pytest.mark.docker
def test_flowrig_run_on_docker(docker_client, seed_image, project):
    from flowrig.containers import engine

    run_id = "t" + uuid.uuid4().hex[:9]
    with derived_image(docker_client, seed_image, project, "flowrig-on-the-cluster") as image:
        try:
            # dask.bag needs no compiled library beyond the image's own dependencies.
            done = subprocess.run(
                [*FLOWRIG, "run", str(project), "--backend", "docker", "--image", image,
                 "--param", "arrays=false", "--output", "json"],
                env=docker_run_env(run_id), capture_output=True, text=True, timeout=400,
            )
            assert done.returncode == 0, done.stderr[-3000:]
            outcome = json.loads(done.stdout.strip().splitlines()[-1])
            assert outcome["backend"] == "docker"
            assert outcome["result"] == {**EXPECTED, "array_sum": None}
            label = {"label": f"flowrig.run-id={run_id}"}
            assert docker_client.containers.list(all=True, filters=label) == []
            assert docker_client.networks.list(filters=label) == []
        finally:
            engine.remove_run(docker_client, run_id)
