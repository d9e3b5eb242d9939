"""A run's output as data: a task run that runs again counts once, and every timing and outcome
key is in the manual. Real runs: tests/e2e/local/test_run_output.py.
"""

from __future__ import annotations

import time
from pathlib import Path

from flowrig.run.console import TIMELINE
from flowrig.run.progress import TaskProgress, summary_line
from flowrig.run.timings import PHASES

REPO = Path(__file__).resolve().parents[2]


# --- the display on its own ----------------------------------------------------------


def test_a_task_run_that_runs_again_counts_once_with_its_latest_state():
    """A worker lost with the results it held: the scheduler runs those tasks again and
    they report again, under the same task run id."""
    progress = TaskProgress()
    progress.submitted("step", 2)
    first = {"task": "step", "run": "step-a1b", "id": "a1b" * 10, "state": "COMPLETED"}
    second = {"task": "step", "run": "step-c2d", "id": "c2d" * 10, "state": "FAILED", "traceback": "ValueError: x"}
    for message in (first, second, first, dict(second, state="COMPLETED")):
        progress.event((time.time(), message))
    assert progress.snapshot() == {"step": (2, 2, 0, 0)}
    assert summary_line(progress.snapshot()) == "tasks 2/2 done, 0 failed"
    assert progress.failed_tasks()["count"] == 0
    assert len(progress.failures) == 1  # its traceback was shown once, when it failed


# --- the timeline in JSON, and its documentation -------------------------------------


def test_every_timing_and_outcome_key_is_documented_in_the_manual():
    page = (REPO / "docs" / "output.md").read_text()
    for key in sorted(TIMING_KEYS | OUTCOME_KEYS):
        assert f"`{key}`" in page, key


#: Every key of the JSON outcome (``message`` and ``result_repr`` only when they apply).
OUTCOME_KEYS = {
    "state", "exit_code", "error", "result", "n_workers", "backend", "scheduler_address", "dashboard_link",
    "timings", "run_id", "failed_tasks", "usage",
}
TIMING_KEYS = {*PHASES, "total", *(key for key, _ in TIMELINE)}


