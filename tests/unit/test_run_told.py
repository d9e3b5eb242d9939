"""What a run tells a Prefect server, as data: batched lines, exit codes in words, and the
console rule on the runner. Against a real server: tests/e2e/docker/test_run_told.py.
"""

from __future__ import annotations

import os

from flowrig.backends.watch import exit_text
from flowrig.run import reporter_lines

# --- pure parts -----------------------------------------------------------------------------------


def test_a_send_carries_ten_lines_of_a_kind_and_counts_the_rest():
    told = [reporter_lines.Told("worker.joined", f"worker {i} joined", float(i), str(i)) for i in range(25)]
    told.append(reporter_lines.Told("cluster.started", "up", 0.0))
    lines = reporter_lines.batch(told, {"worker.lost": 3})
    assert [line.kind for line in lines] == ["cluster.started"] + ["worker.joined"] * 11 + ["worker.lost"]
    assert lines[-2].message == "... and 15 more workers joined: " + ", ".join(str(i) for i in range(10, 25))
    assert lines[-2].payload["count"] == 15 and lines[-2].at == 24.0
    assert lines[-1].message == "... and 3 more workers lost" and lines[-1].level == 30
    assert reporter_lines.batch([], {}) == []


def test_exit_codes_are_told_in_words():
    assert exit_text(-9) == "killed by SIGKILL"
    assert exit_text(137) == "killed by SIGKILL (exit code 137)"
    assert exit_text(3) == "exit code 3"
    assert exit_text(-200).startswith("killed by signal 200")


# --- task runs' lines: the server gets Prefect's, the console its own ------------------------------


def test_on_the_runner_the_console_rule_filters_the_console_and_not_the_api(monkeypatch):
    """A task the flow calls directly runs in the runner: its INFO line reaches Prefect's
    API handler (on the task-run logger) but not the console (the root's handler)."""
    import logging

    from flowrig.run import console

    for name in ("DASK_LOGGING__DISTRIBUTED", "PREFECT_LOGGING_LOGGERS_PREFECT_TASK_RUNS_LEVEL"):
        monkeypatch.setenv(name, os.environ.get(name, ""))
    task_runs, root = logging.getLogger("prefect.task_runs"), logging.getLogger()
    saved = {name: logging.getLogger(name).level for name in
             ("distributed", "prefect.task_runs", "prefect.task_runner", "prefect.flow_runs", "flowrig")}
    saved_filters = {id(h): list(h.filters) for h in (task_runs, *root.handlers)}
    api, shown = [], []

    class Collect(logging.Handler):
        def __init__(self, into):
            super().__init__()
            self.into = into

        def emit(self, record):
            self.into.append(record.getMessage())

    on_logger, on_root = Collect(api), Collect(shown)
    task_runs.addHandler(on_logger)
    root.addHandler(on_root)
    try:
        console.configure(console.Verbosity.NORMAL, to_api=True)
        task_runs.info("Finished in state Completed()")
        task_runs.warning("a warning of the task's own")
    finally:
        task_runs.removeHandler(on_logger)
        root.removeHandler(on_root)
        for name, level in saved.items():
            logging.getLogger(name).setLevel(level)
        for holder in (task_runs, *root.handlers):
            holder.filters[:] = saved_filters.get(id(holder), [])
    assert api == ["Finished in state Completed()", "a warning of the task's own"]
    assert shown == ["a warning of the task's own"]
