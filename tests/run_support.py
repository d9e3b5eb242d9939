"""Helpers for tests that run flows: tiny projects on disk, the CLI as a subprocess
(:func:`run_cli`, :data:`FLOWRIG`) or in this process (:func:`invoke`), and a check that a
run left no process or listening port behind."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import textwrap
import uuid
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest

REPO = Path(__file__).resolve().parents[1]
SEED = REPO / "examples" / "seed"
#: ``flowrig`` as a process: this interpreter running the CLI module.
FLOWRIG = [sys.executable, "-m", "flowrig.cli"]
#: The installed ``flowrig`` console script, as a user types it (one argv element):
#: for tests that signal or time the command a user starts.
FLOWRIG_SCRIPT = str(Path(sys.executable).with_name("flowrig"))
TEN = "x=[0,1,2,3,4,5,6,7,8,9]"


def write_project(root: Path, flow_source: str, toml: str = "") -> Path:
    """Write a project with ``flow.py`` and a ``flowrig.toml`` (default: flow ``main``)."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "flow.py").write_text(textwrap.dedent(flow_source))
    (root / "flowrig.toml").write_text(textwrap.dedent(toml) or 'flow = "flow.py:main"\n')
    return root


@dataclass
class Completed:
    returncode: int
    stdout: str
    stderr: str
    marker: str

    @property
    def json(self) -> dict:
        return json.loads(self.stdout.strip().splitlines()[-1])


def marked_env(marker: str) -> dict[str, str]:
    """Environment for a run whose every descendant process carries ``marker``."""
    env = dict(os.environ)
    env["FLOWRIG_TEST_MARK"] = marker
    env.pop("PREFECT_API_URL", None)
    return env


def run_cli(*args: str, timeout: float = 240) -> Completed:
    """Run ``flowrig ARGS`` in a subprocess whose descendants carry a unique marker."""
    marker = uuid.uuid4().hex
    done = subprocess.run(
        [*FLOWRIG, *args], env=marked_env(marker), capture_output=True, text=True, timeout=timeout
    )
    return Completed(done.returncode, done.stdout, done.stderr, marker)


def invoke(
    *args: str, env: dict[str, str | None] | None = None, cwd: Path | str | None = None, input: str | None = None
) -> subprocess.CompletedProcess:
    """Run ``flowrig ARGS`` in this process, through the same entry point as the
    ``flowrig`` command (:func:`flowrig.cli.main`), so the exit code and the one line on
    stderr come from the same error mapping a subprocess would show.

    For what renders, validates or refuses input: no process start per case. What needs
    a process of its own (a run: signals, deadlines, forks; an import check) uses
    :func:`run_cli` or :data:`FLOWRIG`. ``env`` holds overrides of this process's
    environment (``None`` removes a variable); the environment and the working
    directory are restored afterwards, whatever the command changed.
    """
    from typer.testing import CliRunner

    from flowrig.cli import main

    argv = ["flowrig", *args]
    saved_env = dict(os.environ)
    code: int = 0
    try:
        with CliRunner().isolation(input=input, env=env) as (out, err, _), \
                contextlib.chdir(cwd or os.getcwd()), \
                pytest.MonkeyPatch.context() as patch:
            patch.setattr(sys, "argv", argv)
            try:
                main()
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
            sys.stdout.flush()
            sys.stderr.flush()
            stdout, stderr = out.getvalue().decode(), err.getvalue().decode()
    finally:
        os.environ.clear()
        os.environ.update(saved_env)
    return subprocess.CompletedProcess(argv, code, stdout, stderr)


def processes_with_marker(marker: str) -> list[psutil.Process]:
    """Live processes whose environment holds ``FLOWRIG_TEST_MARK=marker``."""
    found = []
    for proc in psutil.process_iter():
        try:
            if proc.environ().get("FLOWRIG_TEST_MARK") == marker and proc.status() != psutil.STATUS_ZOMBIE:
                found.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return found


def listening(address: str) -> bool:
    """Whether anything accepts connections at ``tls://host:port`` or ``http://host:port/...``."""
    hostport = address.split("://", 1)[-1].split("/", 1)[0]
    host, _, port = hostport.rpartition(":")
    with socket.socket() as sock:
        sock.settimeout(1)
        return sock.connect_ex((host, int(port))) == 0


def assert_nothing_left(marker: str, *addresses: str | None) -> None:
    """No process of the run is alive and none of its addresses still listens."""
    import time

    # A process that is exiting may already be unreadable (so no longer listed) while
    # the kernel still closes its sockets: wait for both, within the deadline.
    def busy() -> bool:
        return bool(processes_with_marker(marker)) or any(listening(a) for a in addresses if a)

    deadline = time.monotonic() + 15
    while busy() and time.monotonic() < deadline:
        time.sleep(0.25)
    left = processes_with_marker(marker)
    assert not left, f"processes left running: {[(p.pid, p.cmdline()[:4]) for p in left]}"
    for address in addresses:
        if address:
            assert not listening(address), f"{address} still listens after the run"


@pytest.fixture
def project_factory(tmp_path):
    """Write small flow projects under the test's temporary directory."""

    def make(flow_source: str, toml: str = "", name: str = "project") -> Path:
        return write_project(tmp_path / name, flow_source, toml)

    return make


#: A flow whose one task naps ``seconds`` (by default longer than any test or benchmark
#: waits): a run to end from outside, by a signal or a timeout.
NAP_FLOW = """
    import time
    from prefect import flow, task

    @task
    def nap(seconds: float) -> float:
        time.sleep(seconds)
        return seconds

    @flow
    def main(seconds: float = 600.0) -> float:
        return nap.submit(seconds).result()
"""

#: A flow whose task writes the file ``started`` and then never returns; with
#: ``swallow=true`` the flow catches whatever ends its wait (a termination) and goes on
#: waiting, so that only a teardown from outside the flow can end the run.
STUCK_FLOW = """
    import time
    from pathlib import Path
    from prefect import flow, task

    @task
    def forever(started: str) -> int:
        Path(started).write_text("running")
        time.sleep(10**6)
        return 0

    @flow
    def main(started: str, swallow: bool = False) -> int:
        future = forever.submit(started)
        while True:
            try:
                return future.result()
            except BaseException:
                if not swallow:
                    raise
"""


#: A map of slow tasks: a run long enough to be looked at while it runs (its dashboard,
#: its processes); ``secret`` is a parameter whose value must not leak.
SLOW_MAP_FLOW = """
    import time
    from prefect import flow, task

    @task
    def slow(i: int, seconds: float) -> int:
        time.sleep(seconds)
        return i

    @flow
    def main(n: int = 20, seconds: float = 1.0, secret: str = "") -> int:
        return sum(f.result() for f in slow.map(range(n), seconds))
"""


class RunWatcher:
    """A running ``flowrig run`` whose stderr lines are collected in a thread."""

    def __init__(self, process: subprocess.Popen) -> None:
        import threading

        self.process = process
        self.lines: list[str] = []
        threading.Thread(target=lambda: self.lines.extend(process.stderr), daemon=True).start()

    def wait_for(self, pattern: str, timeout: float):
        """The first match of ``pattern`` in a stderr line, once one is there."""
        import re
        import time

        deadline = time.monotonic() + timeout
        while True:
            for line in list(self.lines):
                match = re.search(pattern, line)
                if match:
                    return match
            assert self.process.poll() is None, f"the run ended ({self.process.returncode}):\n{self.tail()}"
            assert time.monotonic() < deadline, f"no line matching {pattern!r} within {timeout} s:\n{self.tail()}"
            time.sleep(0.2)

    def tail(self, n: int = 4000) -> str:
        return "".join(self.lines)[-n:]

    def stop(self, timeout: float = 90) -> int:
        """SIGTERM (the run tears down), then its exit code; killed if it hangs."""
        import signal

        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise AssertionError(f"the run did not end within {timeout} s of SIGTERM:\n{self.tail()}") from None
