"""A run ends on SIGTERM whatever its flow is doing: exit 143 within seconds, its cluster
and API torn down, no process of it left.

- a task that never returns, the signal sent to ``flowrig run`` alone or to its whole
  process group (as ``timeout(1)``, Ctrl-C in a terminal, or an init in a container
  send it);
- a flow that swallows the termination and goes on waiting: the run is torn down from
  outside the flow after :data:`flowrig.common.signals.STOP_GRACE` seconds;
- a run whose own timeout passes while its flow swallows it: exit 124, as timed out;
- the watchdog alone, in a small process: a stuck block is torn down through the
  teardown it registered, and a process kept alive by a thread of its flow after the
  command returned exits anyway.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from tests.run_support import FLOWRIG, STUCK_FLOW, assert_nothing_left, marked_env

pytestmark = pytest.mark.timeout(300)

SCHEDULER_LINE = re.compile(r"scheduler at (tls://[\d.]+:\d+), dashboard at (\S+)")


def _start(project: Path, marker: str, started: Path, *args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [*FLOWRIG, "run", str(project), "--param", f"started={started}", *args],
        env=marked_env(marker),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its own process group, which the test may signal whole
    )


def _wait_running(proc: subprocess.Popen, started: Path, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while not started.exists():
        assert proc.poll() is None, f"the run ended early: {proc.stderr.read()[-3000:]}"
        assert time.monotonic() < deadline, "the task never started"
        time.sleep(0.2)
    time.sleep(0.5)  # well inside the task's sleep


def _stop(proc: subprocess.Popen, whole_group: bool, limit: float = 120) -> tuple[float, str, str]:
    """SIGTERM the run; seconds until it exited, its stdout and its stderr."""
    sent = time.monotonic()
    if whole_group:
        os.killpg(proc.pid, signal.SIGTERM)
    else:
        proc.send_signal(signal.SIGTERM)
    try:
        stdout, stderr = proc.communicate(timeout=limit)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise AssertionError(f"the run was still there {limit:g} s after SIGTERM") from None
    return time.monotonic() - sent, stdout, stderr


def _run_and_stop(project: Path, marker: str, started: Path, *args: str, whole_group: bool = False):
    """Start a run, SIGTERM it once its task runs; (returncode, seconds, stdout, stderr)."""
    proc = _start(project, marker, started, *args)
    try:
        _wait_running(proc, started)
        seconds, stdout, stderr = _stop(proc, whole_group)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    return proc.returncode, seconds, stdout, stderr


def _outcome(stdout: str) -> dict:
    """The JSON line ``--output json`` promises on every way out."""
    return json.loads(stdout.strip().splitlines()[-1])


def _addresses(stderr: str) -> tuple[str, str]:
    match = SCHEDULER_LINE.search(stderr)
    assert match, stderr[-3000:]
    return match.group(1), match.group(2)


@pytest.mark.parametrize("whole_group", [False, True], ids=["runner", "process-group"])
def test_sigterm_ends_a_run_stuck_in_a_task(project_factory, tmp_path, whole_group):
    marker = f"stuck-{tmp_path.name}"
    code, seconds, stdout, stderr = _run_and_stop(project_factory(STUCK_FLOW), marker, tmp_path / "started",
                                                  "--output", "json", whole_group=whole_group)
    assert code == 128 + signal.SIGTERM, stderr[-3000:]
    # The run's own teardown: the flow run is reported crashed to the run's API, which
    # therefore outlived the signal the whole group got.
    assert "Finished in state Crashed" in stderr, stderr[-3000:]
    assert _outcome(stdout)["exit_code"] == 143
    assert "did not stop within" not in stderr
    assert seconds < 30, f"{seconds:.1f} s from SIGTERM to exit"
    assert_nothing_left(marker, *_addresses(stderr))


def test_sigterm_ends_a_run_whose_flow_swallows_it(project_factory, tmp_path):
    marker = f"swallow-{tmp_path.name}"
    code, seconds, stdout, stderr = _run_and_stop(project_factory(STUCK_FLOW), marker, tmp_path / "started",
                                                  "--param", "swallow=true", "--output", "json")
    assert code == 128 + signal.SIGTERM, stderr[-3000:]
    assert "flowrig: error: the run did not stop within 5 s of SIGTERM" in stderr, stderr[-3000:]
    # Forced out, it still says how it ended on its JSON line.
    outcome = _outcome(stdout)
    assert (outcome["state"], outcome["exit_code"], outcome["error"]) == ("Terminated", 143, None)
    assert seconds < 40, f"{seconds:.1f} s from SIGTERM to exit"
    assert_nothing_left(marker, *_addresses(stderr))


def test_a_timeout_ends_a_run_whose_flow_swallows_it_as_timed_out(project_factory, tmp_path):
    project = project_factory(STUCK_FLOW)
    started, marker = tmp_path / "started", f"timeout-{tmp_path.name}"
    proc = _start(project, marker, started, "--param", "swallow=true", "--timeout", "20", "--output", "json")
    try:
        stdout, stderr = proc.communicate(timeout=200)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert started.exists(), stderr[-3000:]
    assert proc.returncode == 124, stderr[-3000:]
    assert "longer than its timeout of 20 s" in stderr, stderr[-3000:]
    outcome = _outcome(stdout)
    assert (outcome["state"], outcome["exit_code"]) == ("TimedOut", 124)
    assert "longer than its timeout of 20 s" in outcome["error"]
    assert_nothing_left(marker, *_addresses(stderr))


# --- the watchdog alone ----------------------------------------------------------------------

WATCHED = """
    import sys, threading, time
    from pathlib import Path
    from flowrig.cli.exits import run_and_exit
    from flowrig.common.signals import stop_guard, terminating

    out = Path(sys.argv[1])
    mode = sys.argv[2]

    def command():
        with terminating():
            if mode == "lingering-thread":
                threading.Thread(target=time.sleep, args=(10**6,)).start()  # not a daemon
            guard = stop_guard(lambda: out.write_text("torn down from outside"))
            out.with_suffix(".ready").write_text("")
            while True:
                try:
                    time.sleep(10**6)
                except BaseException:
                    if mode != "swallow":
                        break
            guard.release()
            out.write_text("torn down by the block")

    run_and_exit(command, "watched")
"""


@pytest.mark.parametrize(("mode", "teardown", "at_least", "at_most"), [
    ("swallow", "torn down from outside", 4.5, 15),  # STOP_GRACE
    ("lingering-thread", "torn down by the block", 4.5, 15),  # EXIT_GRACE
    ("prompt", "torn down by the block", 0, 4),
])
def test_the_watchdog_ends_what_a_signal_could_not(tmp_path, mode, teardown, at_least, at_most):
    script = tmp_path / "watched.py"
    script.write_text(textwrap.dedent(WATCHED))
    out = tmp_path / "teardown"
    proc = subprocess.Popen([sys.executable, str(script), str(out), mode], stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while not out.with_suffix(".ready").exists():
            assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read()
            time.sleep(0.05)
        sent = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=60)
        seconds = time.monotonic() - sent
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 128 + signal.SIGTERM, stderr
    assert out.read_text() == teardown
    assert at_least <= seconds < at_most, f"{seconds:.1f} s"
    assert ("did not stop within 5 s of SIGTERM" in stderr) == (mode == "swallow"), stderr
