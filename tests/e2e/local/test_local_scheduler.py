"""The local backend's scheduler runs in a process of its own: it serves the run over
mutual TLS, is not the runner, and ends with the runner however the runner ends."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import psutil

from flowrig.backends.base import ClusterSpec
from flowrig.backends.local import LocalBackend
from flowrig.project.sizing import ClusterSize

RUNNER = textwrap.dedent(
    """
    import json, sys, time
    from flowrig.backends.base import ClusterSpec
    from flowrig.backends.local import LocalBackend
    from flowrig.certs import TLSMaterial
    from flowrig.project.sizing import ClusterSize

    if __name__ == "__main__":
        started = LocalBackend().start(ClusterSpec(run_id="kill9", size=ClusterSize(1), tls=TLSMaterial.ephemeral()))
        cluster = started.cluster
        print(json.dumps({"scheduler": cluster.scheduler.process.pid}), flush=True)
        time.sleep(600)
    """
)


def test_the_scheduler_is_its_own_process_and_serves_the_run(tls):
    from distributed import Client

    started = LocalBackend().start(ClusterSpec(run_id="sched1", size=ClusterSize(2), tls=tls))
    try:
        scheduler_pid = started.cluster.scheduler.process.pid
        assert scheduler_pid != os.getpid()
        assert started.scheduler_up is not None and started.scheduler_address.startswith("tls://127.0.0.1:")
        with Client(started.scheduler_address, security=tls.to_security()) as client:
            assert client.run_on_scheduler(os.getpid) == scheduler_pid
            assert client.submit(sum, [1, 2, 3]).result() == 6
            assert len(client.scheduler_info()["workers"]) == 2
    finally:
        started.close()
    assert not psutil.pid_exists(scheduler_pid) or psutil.Process(scheduler_pid).status() == psutil.STATUS_ZOMBIE


def test_the_scheduler_refuses_a_client_without_the_runs_certificate(tls, foreign_tls):
    from distributed import Client

    started = LocalBackend().start(ClusterSpec(run_id="sched2", size=ClusterSize(1), tls=tls))
    try:
        try:
            Client(started.scheduler_address, security=foreign_tls.to_security(), timeout=5).close()
        except (OSError, TimeoutError) as exc:
            refused = exc
        else:
            refused = None
        assert refused is not None, "a client with another CA's certificate was let in"
    finally:
        started.close()


def test_the_scheduler_ends_when_its_runner_is_killed(tmp_path):
    script = tmp_path / "runner.py"
    script.write_text(RUNNER)
    runner = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    try:
        line = runner.stdout.readline()
        assert line, "the runner did not start its cluster"
        scheduler = psutil.Process(json.loads(line)["scheduler"])
        assert scheduler.is_running()
    finally:
        runner.send_signal(signal.SIGKILL)
        runner.wait(30)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        try:
            if scheduler.status() == psutil.STATUS_ZOMBIE:
                break
        except psutil.NoSuchProcess:
            break
        time.sleep(0.2)
    else:
        raise AssertionError("the scheduler outlived its runner by 15 s")
