"""The local workers' fork server started as a fork of the runner: it serves real
worker processes, dies with the runner, and is not attempted where it cannot be
done safely."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time

import psutil
import pytest

from flowrig.internals import forkserver as forked_forkserver

CHILD = textwrap.dedent(
    """
    import multiprocessing, os, sys
    from multiprocessing import forkserver
    from flowrig.internals import forkserver as forked_forkserver

    def report(queue):
        queue.put((os.getpid(), os.getppid(), "flowrig.internals.forkserver" in sys.modules))

    if __name__ == "__main__":
        assert forked_forkserver.start()
        context = multiprocessing.get_context("forkserver")
        queue = context.Queue()
        child = context.Process(target=report, args=(queue,))
        child.start()
        pid, parent, inherited = queue.get(timeout=60)
        child.join(30)
        print(forkserver._forkserver._forkserver_pid, pid, parent, inherited, child.exitcode, flush=True)
    """
)


def test_processes_fork_from_the_forked_server_which_dies_with_its_runner(tmp_path):
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    server, worker, parent, inherited, exitcode = done.stdout.split()
    # The process ran in a child of the forked server, with the runner's modules
    # already imported (it never imported this module itself), and ended cleanly.
    assert parent == server and worker != server
    assert inherited == "True" and exitcode == "0"
    deadline = time.monotonic() + 10
    while not _ended(int(server)) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _ended(int(server)), "the fork server must exit with its runner"


def _ended(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


WITH_A_THREAD = textwrap.dedent(
    """
    import threading
    from flowrig.internals import forkserver as forked_forkserver

    stop = threading.Event()
    thread = threading.Thread(target=stop.wait)
    thread.start()
    try:
        print(forked_forkserver.start())
    finally:
        stop.set()
        thread.join()
    """
)


def test_not_attempted_while_threads_run():
    # In a fresh interpreter: in this one an earlier test's local cluster may have
    # started the server already, which start() then reports as running.
    done = subprocess.run([sys.executable, "-c", WITH_A_THREAD], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["False"], done.stdout


def test_not_attempted_on_a_fork_server_it_does_not_know(monkeypatch):
    from multiprocessing import forkserver

    def main(listener_fd, alive_r, preload, main_path=None, sys_path=None, *, authkey_r=None):
        raise AssertionError("never called")

    monkeypatch.setattr(forkserver, "main", main)
    assert forked_forkserver.supported() is False
    assert forked_forkserver.start() is False


@pytest.mark.skipif(sys.version_info[:2] != (3, 11), reason="the fork server this module knows is 3.11's")
def test_supported_here():
    assert forked_forkserver.supported()


WHO_FORKED_ME = """
    import os
    import psutil
    from prefect import flow, task

    @task
    def parent_of_worker() -> list:
        return psutil.Process(psutil.Process(os.getpid()).ppid()).cmdline()

    @flow
    def main() -> list:
        return parent_of_worker.submit().result()  # on a worker (a direct call runs here)
"""


def test_a_runs_workers_fork_from_the_server_forked_from_its_runner(project_factory):
    """In a whole ``flowrig run`` (whose API readiness is watched in a thread), the
    workers' parent is the runner's own fork, not Python's standard fork server."""
    from tests.run_support import run_cli

    project = project_factory(WHO_FORKED_ME)
    done = run_cli("run", str(project), "--output", "json", "--verbose")
    assert done.returncode == 0, done.stderr[-3000:]
    parent = done.json["result"]
    assert "multiprocessing.forkserver" not in " ".join(parent), parent
    assert "run" in parent and str(project) in parent, parent
    assert "standard fork server" not in done.stderr


def test_taken_while_the_runs_deadline_waits(tmp_path):
    """A run with a timeout arms its deadline (a timer thread) before its cluster
    starts: that thread only waits, and does not cost the run the forked server."""
    script = tmp_path / "armed.py"
    script.write_text(textwrap.dedent(
        """
        import threading
        from flowrig.common.deadline import RunDeadline
        from flowrig.internals import forkserver as forked_forkserver

        deadline = RunDeadline()
        deadline.arm(300)
        assert threading.active_count() == 2
        print(forked_forkserver.start(), flush=True)
        deadline.cancel()
        """
    ))
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120)
    assert (done.returncode, done.stdout.strip()) == (0, "True"), done.stderr[-2000:]
