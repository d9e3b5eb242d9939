"""The image's worker role: a nanny whose worker process is a fork of it, with Prefect's
task engine imported before the fork, joining a real mutual-TLS scheduler."""

from __future__ import annotations

import os
import signal
import subprocess
import time

import psutil

from tests.e2e.local.test_entrypoint import ENTRYPOINT, entrypoint_env, tls  # noqa: F401  (fixture)
from tests.tls_support import local_scheduler


def _worker_facts() -> dict:
    import sys

    return {
        "pid": os.getpid(),
        "ppid": os.getppid(),
        "cmdline": open("/proc/self/cmdline", "rb").read().split(b"\0"),
        "engine": "prefect.task_engine" in sys.modules,
    }


def _wait_for_worker(client, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not client.scheduler_info()["workers"]:
        assert time.monotonic() < deadline, "the worker never joined"
        time.sleep(0.2)


def test_the_worker_process_is_a_fork_of_its_nanny_with_the_engine_imported(tls):  # noqa: F811
    from distributed import Client

    from flowrig.certs import TLSMaterial

    material = TLSMaterial.from_dir(tls)
    with local_scheduler(material, workers=0) as cluster:
        address = cluster.scheduler_address
        proc = subprocess.Popen(
            [ENTRYPOINT, "worker", address, "--name", "forked", "--nthreads", "1", "--no-dashboard"],
            env=entrypoint_env(tls), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE, start_new_session=True,
        )
        try:
            with Client(address, security=material.to_security(), timeout=30) as client:
                _wait_for_worker(client)
                facts = client.submit(_worker_facts, pure=False).result(timeout=60)
                nanny = psutil.Process(proc.pid)
                # Exec form: the process started is the nanny, running flowrig's worker module.
                assert nanny.cmdline()[1:3] == ["-m", "flowrig.roles.forked_dask_worker"]
                # Its worker process is a fork (same command line, not a fresh interpreter's
                # `-c from multiprocessing...`), made by a fork server that is itself a fork of
                # the nanny, and it holds Prefect's engine, which nothing in it imported.
                assert [part.decode() for part in facts["cmdline"][1:3]] == ["-m", "flowrig.roles.forked_dask_worker"]
                assert facts["engine"]
                server = psutil.Process(facts["ppid"])
                assert server.ppid() == proc.pid and facts["pid"] != proc.pid
                family = [proc.pid, server.pid, facts["pid"]]
                # Stopped as a container is (dumb-init sends `docker stop`'s SIGTERM to the
                # whole group) while a task naps: the worker process gets it too, and the
                # role ends at once instead of waiting for the nanny to close it.
                napping = client.submit(time.sleep, 120, pure=False)
                while not client.processing()[next(iter(client.scheduler_info()["workers"]))]:
                    time.sleep(0.1)
                time.sleep(1)

                started = time.monotonic()
                os.killpg(proc.pid, signal.SIGTERM)
                code = proc.wait(timeout=20)
                assert time.monotonic() - started < 3
                del napping
            assert code in (0, 143, -signal.SIGTERM), proc.stderr.read().decode()[-2000:]
            # Nothing of it is left: the worker process and the fork server went with it.
            deadline = time.monotonic() + 10
            while any(psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
                      for pid in family) and time.monotonic() < deadline:
                time.sleep(0.1)
            left = [pid for pid in family
                    if psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE]
            assert not left
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            proc.stderr.close()
