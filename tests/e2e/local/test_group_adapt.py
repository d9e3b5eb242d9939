"""An adaptive worker group on the local backend, end to end: ``flowrig run`` of a flow
whose group ``burst`` (``adapt = { minimum = 0, maximum = 3 }``) starts with no worker,
grows for its tagged tasks, runs each on its own workers (what the task runs say of
their worker), and retires them once idle, on a real LocalCluster over TLS."""

from __future__ import annotations

from tests.group_adapt_support import ADAPT_FLOW, adapt_toml, check_adapted
from tests.run_support import assert_nothing_left, run_cli, write_project


def test_an_adaptive_group_grows_for_its_tasks_runs_them_and_shrinks_after(tmp_path):
    project = write_project(tmp_path / "adapt", ADAPT_FLOW, adapt_toml("local"))
    done = run_cli("run", str(project), "--output", "json")
    assert done.returncode == 0, done.stderr[-3000:]
    outcome = done.json
    assert outcome["state"] == "Completed" and outcome["n_workers"] == 1, outcome
    assert "1-4 workers (base 1, burst 0-3) on local" in done.stderr
    check_adapted(outcome["result"], memory_bytes=2**30)
    assert_nothing_left(done.marker, outcome["scheduler_address"])
