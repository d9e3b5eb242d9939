"""What a person sees of a run: a short default output, ``--verbose`` and ``--quiet``,
the progress of mapped tasks (on a terminal and off one), failed tasks with their
tracebacks, and the start-up timeline (also in the JSON ``timings``)."""

from __future__ import annotations

import io
import json
import os
import pty
import re
import select
import subprocess
import time
from pathlib import Path

from flowrig.run.console import TIMELINE
from flowrig.run.progress import ProgressDisplay, TaskProgress, summary_line
from tests.run_support import FLOWRIG, SEED, TEN, assert_nothing_left, marked_env, run_cli

REPO = Path(__file__).resolve().parents[1]

FAILING_FLOW = """
    from prefect import flow, task

    @task
    def step(x: int) -> int:
        if x % 3 == 0:
            raise ValueError(f"cannot handle {x}")
        return x * 2

    @flow
    def main(n: int = 7) -> int:
        futures = step.map(range(n))
        futures.wait()
        return sum(f.result() for f in futures if f.state.is_completed())
"""


def dask_info_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if re.search(r"\| INFO +\| distributed\.", line)]


# --- the default, --verbose, --quiet (real runs) -------------------------------------


def test_default_output_is_short_with_progress_and_timeline():
    done = run_cli("run", str(SEED), "--param", TEN)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stderr.strip().splitlines()
    assert len(lines) <= 20, lines
    assert dask_info_lines(done.stderr) == []
    assert not any("View at" in line for line in lines)  # no link into the run's own API
    assert any(line.endswith("tasks 11/11 done, 0 failed (times_two 10/10, get_sum 1/1)") for line in lines), lines
    [timeline] = [line for line in lines if " timeline: " in line]
    for _, label in TIMELINE:
        assert label in timeline, timeline
    assert any("Beginning flow run" in line for line in lines)  # Prefect's flow-level lines stay
    assert done.stdout.strip().endswith("Completed, result 90")
    assert_nothing_left(done.marker)


def test_verbose_brings_back_dask_start_up_lines():
    done = run_cli("run", str(SEED), "--param", TEN, "--verbose")
    assert done.returncode == 0, done.stderr[-3000:]
    assert len(dask_info_lines(done.stderr)) > 10
    assert any("Task run" in line and "Finished in state Completed()" in line for line in done.stderr.splitlines())


def test_quiet_shows_failed_tasks_with_their_tracebacks_only(project_factory):
    project = project_factory(FAILING_FLOW, 'flow = "flow.py:main"\n[cluster]\nn_workers = 2\n')
    done = run_cli("run", str(project), "--quiet")
    assert done.returncode == 0, done.stderr[-3000:]
    stderr = done.stderr
    for x in (0, 3, 6):
        assert f"ValueError: cannot handle {x}" in stderr
    assert f'File "{project / "flow.py"}", line 7, in step' in stderr  # the flow file, not <dynamic-code>
    assert "task_engine.py" not in stderr  # Prefect's own frames are left out
    for chatter in ("Beginning flow run", "timeline:", "tasks 4/7", "scheduler at"):
        assert chatter not in stderr, chatter
    assert done.stdout.strip().endswith("Completed, result 24")


def test_default_output_counts_failures(project_factory):
    project = project_factory(FAILING_FLOW, 'flow = "flow.py:main"\n[cluster]\nn_workers = 2\n')
    done = run_cli("run", str(project))
    assert done.returncode == 0, done.stderr[-3000:]
    assert "tasks 7/7 done, 3 failed" in done.stderr
    assert done.stderr.count("failed:\nTraceback") == 3


def test_verbose_and_quiet_together_is_bad_input():
    done = run_cli("run", str(SEED), "--verbose", "--quiet")
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "flowrig: error: --verbose and --quiet contradict each other: pass one of them"
    ]


def test_progress_on_a_terminal_is_one_live_display():
    """stderr a terminal: rich draws the counts live, and no summary lines are printed."""
    leader, follower = pty.openpty()
    env = marked_env("pty")
    env.pop("NO_COLOR", None)
    env.setdefault("TERM", "xterm")
    process = subprocess.Popen(
        [*FLOWRIG, "run", str(SEED), "--param", TEN], stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE, stderr=follower, env=env,
    )
    os.close(follower)
    seen = b""
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        ready, _, _ = select.select([leader], [], [], 0.5)
        if ready:
            try:
                chunk = os.read(leader, 65536)
            except OSError:
                break
            if not chunk:
                break
            seen += chunk
        elif process.poll() is not None:
            break
    process.wait(timeout=60)
    os.close(leader)
    text = seen.decode(errors="replace")
    assert process.returncode == 0, text[-3000:]
    assert "times_two" in text and "10/10" in text  # the live rows
    assert "\x1b[" in text  # drawn with terminal control sequences
    assert re.search(r"tasks 11/11 done, 0 failed", text)


# --- the display on its own ----------------------------------------------------------


def _event(task: str, state: str, run: str = "r", tb: str = "") -> tuple[float, dict]:
    return (time.time(), {"task": task, "state": state, "run": run, "traceback": tb})


def test_counts_of_mapped_tasks_and_failures_in_summary_lines():
    firsts = []
    progress = TaskProgress(on_first_finished=lambda: firsts.append(1))
    progress.submitted("double", 3)
    progress.submitted("total")
    out = io.StringIO()
    display = ProgressDisplay(progress, out, interactive=False, prefix="run x", interval=0.05).start()
    progress.event(_event("double", "COMPLETED"))
    progress.event(_event("double", "FAILED", "double-2", "Traceback...\nValueError: no"))
    time.sleep(0.4)
    progress.event(_event("double", "COMPLETED"))
    progress.event(_event("total", "COMPLETED"))
    display.stop()
    lines = out.getvalue().splitlines()
    assert firsts == [1]  # the first finished task is marked once
    assert "run x: task run 'double-2' failed:" in lines and "ValueError: no" in lines
    assert any(line.startswith("run x: tasks 2/4 done, 1 failed") for line in lines), lines
    assert lines[-1] == "run x: tasks 4/4 done, 1 failed (double 3/3, total 1/1)"
    assert summary_line({"a": (1, 2, 0)}) == "tasks 1/2 done, 0 failed"


def test_only_the_first_failures_print_their_traceback():
    progress = TaskProgress()
    out = io.StringIO()
    display = ProgressDisplay(progress, out, interactive=False, counts=False).start()
    for i in range(6):
        progress.event(_event("t", "FAILED", f"t-{i}", f"ValueError: {i}"))
    display.stop()
    text = out.getvalue()
    assert [f"ValueError: {i}" in text for i in range(6)] == [True] * 3 + [False] * 3
    assert "more tasks failed" in text
    assert "tasks 6/6" not in text  # counts off: failures only


# --- the timeline in JSON, and its documentation -------------------------------------


def test_json_timings_keep_their_keys_and_gain_the_timeline():
    done = run_cli("run", str(SEED), "--param", TEN, "--output", "json")
    assert done.returncode == 0, done.stderr[-3000:]
    timings = done.json["timings"]
    assert {"prepare", "cluster_start", "api_wait", "flow", "teardown", "total"} <= set(timings)
    marks = [timings[key] for key, _ in TIMELINE]
    assert all(isinstance(mark, float) for mark in marks), timings
    # Reached in this order; every mark within the run.
    api_ready, scheduler_up, first, every, first_task, flow_done, teardown_done = marks
    assert scheduler_up <= first <= every <= first_task <= flow_done <= teardown_done <= timings["total"] + 0.01
    assert 0 < api_ready <= first_task


def test_every_timing_key_is_documented_in_the_readme():
    readme = (REPO / "README.md").read_text()
    for key in ["prepare", "cluster_start", "api_wait", "flow", "teardown", "total", *(k for k, _ in TIMELINE)]:
        assert f"`{key}`" in readme, key


def test_json_output_keeps_its_shape():
    done = run_cli("run", str(SEED), "--param", TEN, "--output", "json")
    assert set(done.json) == {
        "state", "result", "n_workers", "backend", "scheduler_address", "dashboard_link", "timings", "run_id",
    }
    assert json.loads(done.stdout.strip().splitlines()[-1])["result"] == 90
