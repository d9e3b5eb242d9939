"""What a person sees of a run: a short default output, ``--verbose`` and ``--quiet``,
the tasks' own warnings, errors and prints, the progress of mapped tasks (on a terminal
and off one), failed tasks with their tracebacks, a flow that completed while tasks
failed, the start-up timeline and honest ``timings``, and ``--output json``'s line on
every way out.

Cases that need none of these are in tests/unit/test_run_output.py.
"""

from __future__ import annotations

import io
import json
import os
import pty
import re
import select
import signal
import subprocess
import threading
import time
from pathlib import Path

import psutil
import pytest

from flowrig.run.console import TIMELINE
from flowrig.run.progress import ProgressDisplay, TaskProgress, summary_line
from flowrig.run.timings import PHASES
from tests.run_support import (
    FLOWRIG,
    NAP_FLOW,
    SEED,
    TEN,
    Completed,
    assert_nothing_left,
    marked_env,
    run_cli,
    write_project,
)
from tests.unit.test_run_output import OUTCOME_KEYS, TIMING_KEYS

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
    # What the run used, after the timeline: the seed's ten items take two workers.
    [used] = [line for line in lines if ": used " in line]
    assert re.search(r": used scheduler 1 x [\d.]+ s, worker 2 x [\d.]+ s; [\d,]+ vCPU-s, ", used), used
    assert used.endswith("no price: it ran on this machine"), used
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
    # The flow completed, with the results of the tasks that did.
    assert done.stdout.strip().endswith("Completed, but 3 tasks failed (step 3), result 24")


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


def test_json_output_keeps_its_shape():
    done = run_cli("run", str(SEED), "--param", TEN, "--output", "json")
    assert set(done.json) == OUTCOME_KEYS
    assert set(done.json["timings"]) == TIMING_KEYS
    assert (done.json["exit_code"], done.json["error"]) == (0, None)
    assert done.json["failed_tasks"] == {"count": 0, "by_task": {}, "names": []}
    assert json.loads(done.stdout.strip().splitlines()[-1])["result"] == 90
    # What the run used: processes on this machine, measured, shaped like it, never priced.
    usage = done.json["usage"]
    roles = usage["roles"]
    assert sorted(roles) == ["scheduler", "worker"] and usage["estimated_cost_total"] is None
    assert (roles["scheduler"]["count"], roles["worker"]["count"]) == (1, 2)
    total = done.json["timings"]["total"]
    for role in roles.values():
        assert role["placement"] == {"market": "local", "vcpu": float(psutil.cpu_count()), "gpus": 0, "price_key": "",
                                     "memory_gib": round(psutil.virtual_memory().total / 1024**3, 3)}
        assert 0 < role["seconds"] <= role["count"] * total
        assert role["vcpu_seconds"] == pytest.approx(role["seconds"] * psutil.cpu_count(), rel=1e-3)
        assert (role["no_price"], role["spot_share"], role["estimated_cost"]) == ("local", 0, None)
    # The scheduler and both workers lived through the whole flow (looked at every 0.5 s).
    flow_seconds = done.json["timings"]["flow"]
    assert roles["scheduler"]["seconds"] >= flow_seconds
    assert roles["worker"]["seconds"] / 2 >= flow_seconds - 0.6, (roles, flow_seconds)


def test_timings_count_the_whole_wall_time_from_the_commands_start():
    """``total`` is what the person waited, the interpreter's start included; the phases
    follow each other without a gap and add up to it."""
    started = time.monotonic()
    done = run_cli("run", str(SEED), "--param", TEN, "--output", "json")
    wall = time.monotonic() - started
    assert done.returncode == 0, done.stderr[-3000:]
    timings = done.json["timings"]
    assert all(isinstance(timings[phase], float) for phase in PHASES), timings
    assert abs(sum(timings[phase] for phase in PHASES) - timings["total"]) < 0.02, timings
    # All but the interpreter's exit after the outcome line, which no clock inside sees.
    assert wall - 3 < timings["total"] <= wall, (wall, timings)
    assert timings["startup"] < timings["total"] and timings["load"] > 0
    assert timings["teardown_done"] == pytest.approx(timings["total"], abs=0.01)


# --- a task's own lines reach the console ----------------------------------------------

#: Each task logs at every level and prints; the numbers tell the lines apart.
LOG_FLOW = """
    from prefect import flow, get_run_logger, task

    @task(log_prints=True)
    def step(x: int) -> int:
        logger = get_run_logger()
        logger.info("info-line-%d", x)
        logger.warning("warning-line-%d", x)
        logger.error("error-line-%d", x)
        print(f"printed-line-{x}")
        return x

    @flow
    def main(n: int = 2) -> int:
        return sum(step.map(range(n)).result())
"""


def _lines_with(stderr: str, text: str) -> list[str]:
    return [line for line in stderr.splitlines() if text in line]


def test_a_tasks_warnings_errors_and_prints_reach_the_console_by_default(project_factory):
    project = project_factory(LOG_FLOW, 'flow = "flow.py:main"\n[cluster]\nn_workers = 2\n')
    done = run_cli("run", str(project))
    assert done.returncode == 0, done.stderr[-3000:]
    for x in (0, 1):
        for kind, level in (("warning", "WARNING"), ("error", "ERROR"), ("printed", "INFO")):
            [line] = _lines_with(done.stderr, f"{kind}-line-{x}")  # once: not also from the worker's stderr
            assert f"| {level:<7} | Task run 'step-" in line, line
        assert not _lines_with(done.stderr, f"info-line-{x}")  # INFO stays behind --verbose
    # Prefect's own lines about each task stay behind --verbose as well.
    assert not [line for line in _lines_with(done.stderr, "Task run 'step-") if "Finished in state" in line]
    assert done.stdout.strip().endswith("Completed, result 1")


def test_verbose_shows_every_task_line_once_and_quiet_only_errors(project_factory):
    project = project_factory(LOG_FLOW, 'flow = "flow.py:main"\n[cluster]\nn_workers = 2\n')
    verbose = run_cli("run", str(project), "--verbose", "--param", "n=1")
    assert verbose.returncode == 0, verbose.stderr[-3000:]
    for kind in ("info", "warning", "error", "printed"):
        assert len(_lines_with(verbose.stderr, f"{kind}-line-0")) == 1, (kind, verbose.stderr[-3000:])
    assert any("Task run 'step-" in line and "Finished in state Completed()" in line
               for line in verbose.stderr.splitlines())
    quiet = run_cli("run", str(project), "--quiet", "--param", "n=1")
    assert quiet.returncode == 0, quiet.stderr[-3000:]
    assert len(_lines_with(quiet.stderr, "error-line-0")) == 1
    for kind in ("info", "warning", "printed"):
        assert not _lines_with(quiet.stderr, f"{kind}-line-0"), kind


def test_task_lines_travel_from_workers_whose_output_nobody_sees(project_factory, tls, tmp_path, capfd):
    """Workers of a cluster someone else started (as on ecs, fargate and the VM
    backends): their stderr is not the runner's, yet the task's lines reach the run's
    console, over the run's Dask connection."""
    from distributed import LocalCluster

    project = project_factory(LOG_FLOW, 'flow = "flow.py:main"\n')
    certs = tmp_path / "certs"
    tls.write_to_dir(certs)
    with LocalCluster(n_workers=1, processes=True, protocol="tls://", security=tls.to_security(),
                      host="127.0.0.1", dashboard_address=None) as cluster:
        done = run_cli("run", str(project), "--scheduler-address", cluster.scheduler_address, "--certs", str(certs),
                       "--param", "n=1")
    assert done.returncode == 0, done.stderr[-3000:]
    for kind in ("warning", "error", "printed"):
        assert len(_lines_with(done.stderr, f"{kind}-line-0")) == 1, (kind, done.stderr[-3000:])
    # The workers' own output (this test's) did not show them.
    assert "warning-line-0" not in capfd.readouterr().err


# --- a flow that completed while tasks failed ------------------------------------------

#: Each ``boom`` fails; the ``after`` it feeds is never run (NotReady), and the flow,
#: which only waits for them, ends Completed with a null result: Prefect's rule.
FAILED_FEEDING_FLOW = """
    from prefect import flow, task
    from prefect.futures import wait

    @task
    def boom(x: int) -> int:
        raise ValueError(f"boom {x}")

    @task
    def after(x: int) -> int:
        return x

    @flow
    def main(n: int = 2) -> None:
        wait([after.submit(boom.submit(i)) for i in range(n)])
"""


@pytest.fixture(scope="module")
def loose_project(tmp_path_factory) -> Path:
    return write_project(tmp_path_factory.mktemp("loose") / "project", FAILED_FEEDING_FLOW, 'flow = "flow.py:main"\n')


@pytest.fixture(scope="module")
def completed_with_failures(loose_project) -> Completed:
    """The module's one run, at the default output, of a flow that completed while its
    tasks failed: each test below checks it from its own angle."""
    return run_cli("run", str(loose_project))


def test_default_output_counts_failures(completed_with_failures):
    done = completed_with_failures
    assert done.returncode == 0, done.stderr[-3000:]
    assert "tasks 4/4 done, 2 failed" in done.stderr
    # One traceback a failed task; none for the tasks that never ran.
    assert done.stderr.count("failed:\nTraceback") == 2


def test_a_completed_flow_whose_tasks_failed_says_so_and_strict_runs_fail(
    project_factory, loose_project, completed_with_failures
):
    loose = loose_project
    strict = project_factory(
        FAILED_FEEDING_FLOW, 'flow = "flow.py:main"\n[run]\nfail_on_task_failure = true\n', name="strict"
    )
    done = completed_with_failures
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().splitlines()[-1].endswith(": Completed, but 2 tasks failed (boom 2), result None")
    assert "tasks 4/4 done, 2 failed, 2 not run (an upstream task failed)" in done.stderr

    by_flag = run_cli("run", str(loose), "--strict", "--output", "json")
    by_file = run_cli("run", str(strict), "--output", "json")
    for failed in (by_flag, by_file):
        assert failed.returncode == 1, failed.stderr[-3000:]
        outcome = failed.json
        assert (outcome["state"], outcome["exit_code"], outcome["result"]) == ("Completed", 1, None)
        assert outcome["failed_tasks"]["count"] == 2 and outcome["failed_tasks"]["by_task"] == {"boom": 2}
        assert sorted(name.split("-")[0] for name in outcome["failed_tasks"]["names"]) == ["boom", "boom"]
        assert outcome["error"].startswith("flow run ended Completed, but 2 tasks failed (boom 2)")
        assert failed.stderr.strip().splitlines()[-1] == f"flowrig: error: {outcome['error']}"
    overridden = run_cli("run", str(strict), "--no-strict", "--output", "json")
    assert (overridden.returncode, overridden.json["exit_code"]) == (0, 0), overridden.stderr[-3000:]
    assert overridden.json["failed_tasks"]["count"] == 2


def test_fail_on_task_failure_must_be_true_or_false(project_factory):
    project = project_factory(FAILED_FEEDING_FLOW, 'flow = "flow.py:main"\n[run]\nfail_on_task_failure = "yes"\n')
    done = run_cli("run", str(project))
    assert done.returncode == 2
    assert "flowrig.toml: 'run.fail_on_task_failure' must be true or false, got 'yes'" in done.stderr


# --- --output json on every way out ----------------------------------------------------


def _assert_ended_early(done: Completed, code: int, state: str, error: str | None) -> dict:
    assert done.returncode == code, done.stderr[-3000:]
    outcome = done.json  # the last stdout line
    assert set(outcome) == OUTCOME_KEYS, outcome
    assert (outcome["state"], outcome["exit_code"]) == (state, code), outcome
    if error is None:
        assert outcome["error"] is None
    else:
        assert outcome["error"].startswith(error), outcome["error"]
        assert done.stderr.strip().splitlines()[-1] == f"flowrig: error: {outcome['error']}"
    assert outcome["timings"]["total"] > 0 and outcome["result"] is None
    return outcome


def test_json_line_on_bad_input_and_on_a_usage_error(project_factory):
    project = project_factory(LOG_FLOW)
    outcome = _assert_ended_early(
        run_cli("run", str(project), "--output", "json", "--param", "n=[1,2"), 2, "BadInput", "--param n: malformed JSON"
    )
    assert outcome["backend"] == "local" and outcome["scheduler_address"] is None
    usage = run_cli("run", str(project), "-o", "json", "--no-such-option")
    assert usage.returncode == 2 and (usage.json["state"], usage.json["exit_code"]) == ("BadInput", 2)
    assert "No such option: --no-such-option" in usage.json["error"]
    contradiction = run_cli("run", str(project), "--output=json", "--verbose", "--quiet")
    _assert_ended_early(contradiction, 2, "BadInput", "--verbose and --quiet contradict each other")


def test_json_line_when_the_infrastructure_fails(project_factory):
    project = project_factory(LOG_FLOW, 'flow = "flow.py:main"\n[cluster.options]\nmemory_limit = "lots"\n')
    outcome = _assert_ended_early(
        run_cli("run", str(project), "--output", "json"), 3, "InfrastructureError", "the local cluster could not start"
    )
    assert outcome["timings"]["cluster_start"] is not None and outcome["timings"]["flow"] is None


@pytest.mark.parametrize(("signum", "code"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_json_line_when_a_signal_ends_the_run(project_factory, signum, code):
    project = project_factory(NAP_FLOW, 'flow = "flow.py:main"\n[cluster]\nn_workers = 1\n')
    marker = "signalled-" + os.urandom(4).hex()
    process = subprocess.Popen(
        [*FLOWRIG, "run", str(project), "--output", "json"], env=marked_env(marker),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    lines: list[str] = []
    began = threading.Event()

    def read() -> None:
        for line in process.stderr:
            lines.append(line)
            if "Beginning flow run" in line:
                began.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        assert began.wait(180), "".join(lines)[-3000:]
        process.send_signal(signum)
        out, _ = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    reader.join(10)
    outcome = _assert_ended_early(Completed(process.returncode, out, "".join(lines), marker), code, "Terminated", None)
    assert outcome["scheduler_address"].startswith("tls://") and outcome["n_workers"] == 1
    assert_nothing_left(marker, outcome["scheduler_address"])
