"""Adaptive worker groups on the local backend, end to end: ``flowrig run`` of a flow
whose first group ``base`` (1-2 workers) grows for untagged tasks that wait, and whose
group ``burst`` (``adapt = { minimum = 0, maximum = 3 }``) starts with no worker, grows
for its tagged tasks, runs each on its own workers (what the task runs say of their
worker), and retires them once idle, on a real LocalCluster over TLS; the run's usage
counts each group's workers apart."""

from __future__ import annotations

from tests.group_adapt_support import ADAPT_FLOW, adapt_toml, check_adapted
from tests.run_support import assert_nothing_left, run_cli, write_project


def test_adaptive_groups_grow_for_their_tasks_run_them_and_shrink_after(tmp_path):
    project = write_project(tmp_path / "adapt", ADAPT_FLOW, adapt_toml("local"))
    done = run_cli("run", str(project), "--output", "json")
    assert done.returncode == 0, done.stderr[-3000:]
    outcome = done.json
    assert outcome["state"] == "Completed" and outcome["n_workers"] == 1, outcome
    assert "1-5 workers (base 1-2, burst 0-3) on local" in done.stderr
    check_adapted(outcome["result"], memory_bytes=2**30)
    # What the run used, per group: each worker's life counted in its own group.
    roles = outcome["usage"]["roles"]
    assert roles["worker:base"]["count"] == 2 and 2 <= roles["worker:burst"]["count"] <= 3, roles
    assert_nothing_left(done.marker, outcome["scheduler_address"])
