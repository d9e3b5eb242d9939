"""``[[cluster.worker_groups]]`` on the local backend, end to end: a real LocalCluster over
TLS whose workers are named by group; each tagged task runs on its group's workers
(what the task runs say of the worker that ran them), the untagged ones anywhere."""

from __future__ import annotations

import time

from tests.groups_support import GROUPS_FLOW, check_routing, groups_toml
from tests.run_support import assert_nothing_left, run_cli, write_project


def test_tagged_tasks_run_on_their_groups_workers_and_untagged_ones_anywhere(tmp_path):
    project = write_project(tmp_path / "groups", GROUPS_FLOW, groups_toml("local"))
    done = run_cli("run", str(project), "--output", "json")
    assert done.returncode == 0, done.stderr[-3000:]
    outcome = done.json
    assert outcome["state"] == "Completed" and outcome["n_workers"] == 3
    assert "3 workers (gpu 1, cpu 2) on local" in done.stderr
    check_routing(outcome["result"])
    assert_nothing_left(done.marker, outcome["scheduler_address"])


def test_a_lost_group_worker_starts_again_in_its_group(tls):
    import dask
    from distributed import Client

    from flowrig.backends.base import ClusterSpec, WorkerGroupSpec
    from flowrig.backends.local import LocalBackend
    from flowrig.project.sizing import ClusterSize, GroupSize

    groups = (WorkerGroupSpec("gpu", 1, 2, {"flowrig-group-gpu": 2, "GPU": 1}),
              WorkerGroupSpec("cpu", 1, 1, {"flowrig-group-cpu": 1}))
    spec = ClusterSpec(run_id="groupkeep1", size=ClusterSize(2, groups=(GroupSize("gpu", 1), GroupSize("cpu", 1))), tls=tls,
                       groups=groups)
    started = LocalBackend().start(spec)
    cluster = started.cluster

    def shapes(client) -> dict:
        return {w["name"]: (w["nthreads"], w["resources"]) for w in client.scheduler_info()["workers"].values()}

    try:
        with dask.config.set({"distributed.deploy.lost-worker-timeout": "1s"}), \
                Client(started.scheduler_address, security=tls.to_security()) as client:
            expected = {"gpu-1": (2, {"flowrig-group-gpu": 2, "GPU": 1}), "cpu-1": (1, {"flowrig-group-cpu": 1})}
            assert shapes(client) == expected  # all joined when start returned
            gone = cluster.workers["gpu-1"]
            cluster.sync(gone.close)  # a closed nanny does not restart its worker: lost for good
            deadline = time.monotonic() + 30
            # The new worker joins the scheduler a moment before the cluster records it.
            while not (cluster.keeper.replaced == 1 and len(client.scheduler_info()["workers"]) == 2
                       and cluster.workers.get("gpu-1") not in (None, gone)):
                assert time.monotonic() < deadline, (cluster.keeper.replaced, cluster.workers)
                time.sleep(0.2)
            assert shapes(client) == expected
            assert client.submit(sum, [1, 2], resources={"flowrig-group-gpu": 1}).result(timeout=30) == 3
    finally:
        started.close()
