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


def test_not_attempted_while_threads_run():
    import threading

    stop = threading.Event()
    thread = threading.Thread(target=stop.wait)
    thread.start()
    try:
        assert forked_forkserver.start() is False
    finally:
        stop.set()
        thread.join()


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
