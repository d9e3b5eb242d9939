"""``[[cluster.worker_groups]]`` on the local backend, end to end: a real LocalCluster over
TLS whose workers are named by group; each tagged task runs on its group's workers
(what the task runs say of the worker that ran them), the untagged ones anywhere."""

from __future__ import annotations

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
