"""Stand-ins for a fargate run's worker tasks: real Dask workers that join the run's real
mutual-TLS scheduler when moto "starts" their task, and leave when it is stopped.

moto runs no containers. :class:`StandinPool` plays the containers: told of each worker
task moto started (:meth:`tests.aws_faults.FaultProxy.on_run_task`), it starts a
``distributed.Worker`` named after the task's id (as the image's entry point names it,
:func:`flowrig.roles.task_name.task_id`, so the pool's view by name matches) after a
delay drawn from a uniform distribution, which models the image pull and the container's
start; told of each StopTask, it closes that worker. Workers live in a few host
processes (``processes`` x up to ``per_process``), one thread each, no nanny, mutual
TLS with the run's certificates, profiling and memory monitoring off.

:func:`start_scheduler` starts the scheduler as the image does (``command_for``), in a
process of its own, so that its memory can be read.

What this leaves out: image pull and ENI attachment (only a delay), Fargate placement
and capacity failures (the fault proxy's ``worker_capacity`` adds them), CloudWatch log
streams, the task metadata endpoint, IAM propagation, and real network latency between
workers and scheduler. Many workers share one interpreter, so their joins are slower
here than on separate machines.

    python benchmarks/standin_workers.py host --scheduler ADDR --tls-dir DIR   (internal)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent

#: Dask settings of the host processes: many workers share one process, and each
#: worker's sampling profiler (every 10 ms) and memory monitor would cost more than the
#: workers themselves.
HOST_CONFIG = {
    "distributed.worker.profile.enabled": False,
    "distributed.admin.tick.limit": "60s",
    "distributed.comm.timeouts.connect": "120s",
}


def _rss_mb(pid: int) -> float:
    """Resident memory of process ``pid`` in MB (0 when it is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def start_scheduler(tls_dir: Path, workdir: Path) -> tuple[subprocess.Popen, str]:
    """The run's scheduler as the image starts it, on 127.0.0.1; the process and its address."""
    sys.path.insert(0, str(ROOT))
    from flowrig.roles.commands import command_for

    scheduler_file = workdir / "scheduler.json"
    argv = command_for("scheduler", ["--host", "127.0.0.1", "--port", "0", "--dashboard-address",
                                     "127.0.0.1:0", "--scheduler-file", str(scheduler_file)], directory=tls_dir)
    env = {**os.environ, "DASK_LOGGING__DISTRIBUTED": "error", "PYTHONPATH": str(ROOT)}
    process = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the scheduler exited with code {process.returncode}")
        try:
            return process, json.loads(scheduler_file.read_text())["address"]
        except (OSError, ValueError, KeyError):
            time.sleep(0.1)
    process.kill()
    raise RuntimeError("the scheduler did not write its address within 60 s")


class StandinPool:
    """Host processes of stand-in workers, driven by the fault proxy's task callbacks.

    Parameters
    ----------
    scheduler_address, tls_dir
        Where the workers join, and the run's certificate files.
    processes, per_process
        Host processes, and workers each holds at most.
    delay
        Seconds from a task's start to its worker's start: uniform between the two.
    time_scale
        Every delay times this (0.1: a 30-60 s container start becomes 3-6 s).
    seed
        Seed of the delays.
    """

    def __init__(self, scheduler_address: str, tls_dir: Path, *, processes: int = 10, per_process: int = 50,
                 delay: tuple[float, float] = (30.0, 60.0), time_scale: float = 0.1, seed: int = 0) -> None:
        self.scheduler_address = scheduler_address
        self.tls_dir = tls_dir
        self.processes = processes
        self.per_process = per_process
        self.delay = delay
        self.time_scale = time_scale
        self.random = random.Random(seed)
        self.lock = threading.Lock()
        #: Worker name -> ``time.time()`` when its task started, it joined, it left.
        self.asked: dict[str, float] = {}
        self.joined: dict[str, float] = {}
        self.left: dict[str, float] = {}
        self.failed: dict[str, str] = {}
        self._hosts: list[subprocess.Popen] = []
        self._load: list[int] = []
        self._where: dict[str, int] = {}
        self._readers: list[threading.Thread] = []

    def start(self) -> "StandinPool":
        env = {**os.environ, "PYTHONPATH": str(ROOT), "DASK_LOGGING__DISTRIBUTED": "error"}
        for _ in range(self.processes):
            host = subprocess.Popen(
                [sys.executable, __file__, "host", "--scheduler", self.scheduler_address, "--tls-dir",
                 str(self.tls_dir)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env, text=True, bufsize=1,
            )
            self._hosts.append(host)
            self._load.append(0)
            reader = threading.Thread(target=self._read, args=(host,), daemon=True)
            reader.start()
            self._readers.append(reader)
        return self

    def _read(self, host: subprocess.Popen) -> None:
        assert host.stdout is not None
        for line in host.stdout:
            try:
                event = json.loads(line)
            except ValueError:
                continue
            with self.lock:
                if "joined" in event:
                    self.joined[event["joined"]] = event["at"]
                elif "left" in event:
                    self.left[event["left"]] = event["at"]
                elif "failed" in event:
                    self.failed[event["failed"]] = event["error"]

    def _send(self, index: int, message: dict[str, Any]) -> None:
        stdin = self._hosts[index].stdin
        assert stdin is not None
        try:
            stdin.write(json.dumps(message) + "\n")
            stdin.flush()
        except (OSError, ValueError) as exc:  # the host process is gone: its workers with it
            self.failed[str(message.get("start") or message.get("stop"))] = f"host process gone: {exc}"

    def task_started(self, task_arn: str, container: str) -> None:
        """The proxy's RunTask callback: a worker task's container starts after its delay."""
        from flowrig.roles.task_name import task_id

        if container != "dask-worker":
            return
        name = task_id(task_arn)
        with self.lock:
            index = min(range(len(self._hosts)), key=lambda i: self._load[i])
            if self._load[index] >= self.per_process:
                self.failed[name] = "no room in the stand-in processes"
                return
            self._load[index] += 1
            self._where[name] = index
            self.asked[name] = time.time()
            delay = self.random.uniform(*self.delay) * self.time_scale
            self._send(index, {"start": name, "delay": delay})

    def task_stopped(self, task_arn: str) -> None:
        """The proxy's StopTask callback: the task's worker leaves."""
        from flowrig.roles.task_name import task_id

        name = task_id(task_arn)
        with self.lock:
            index = self._where.get(name)
            if index is not None:
                self._send(index, {"stop": name})

    def rss_mb(self) -> float:
        """Resident memory of all host processes together, in MB."""
        return sum(_rss_mb(host.pid) for host in self._hosts)

    def close(self) -> None:
        """Stop every host process (their workers close with them)."""
        for index in range(len(self._hosts)):
            self._send(index, {"exit": True})
        for host in self._hosts:
            try:
                host.wait(timeout=30)
            except subprocess.TimeoutExpired:
                host.kill()
                host.wait()


# --- the host process ------------------------------------------------------------------
async def _host(scheduler: str, tls_dir: Path) -> None:
    import dask.config
    from distributed import Worker

    from flowrig import layout
    from flowrig.certs.material import TLSMaterial

    dask.config.set(HOST_CONFIG)
    files = (layout.CA_CERT, layout.LEAF_CERT, layout.LEAF_KEY)
    material = TLSMaterial(*(Path(tls_dir, name).read_bytes() for name in files))
    security = material.to_security()
    workers: dict[str, Worker] = {}
    stopped: set[str] = set()
    loop = asyncio.get_running_loop()
    messages: asyncio.Queue = asyncio.Queue()

    def read_stdin() -> None:
        for line in sys.stdin:
            loop.call_soon_threadsafe(messages.put_nowait, line)
        loop.call_soon_threadsafe(messages.put_nowait, json.dumps({"exit": True}))

    def say(event: dict[str, Any]) -> None:
        print(json.dumps(event), flush=True)

    async def start(name: str, delay: float) -> None:
        await asyncio.sleep(delay)
        if name in stopped:  # stopped before its container came up
            return
        try:
            worker = Worker(scheduler, name=name, nthreads=1, security=security, host="127.0.0.1",
                            memory_limit=0, dashboard=False, death_timeout=120)
            workers[name] = worker
            await worker
            say({"joined": name, "at": time.time()})
        except Exception as exc:  # reported, not raised: one stand-in failing is a figure
            say({"failed": name, "error": f"{type(exc).__name__}: {exc}"})

    async def stop(name: str) -> None:
        stopped.add(name)
        worker = workers.pop(name, None)
        if worker is not None:
            await worker.close(reason="the task was stopped")
            say({"left": name, "at": time.time()})

    threading.Thread(target=read_stdin, daemon=True).start()
    pending: set[asyncio.Task] = set()
    while True:
        message = json.loads(await messages.get())
        if message.get("exit"):
            break
        job = start(message["start"], message["delay"]) if "start" in message else stop(message["stop"])
        task = asyncio.ensure_future(job)
        pending.add(task)
        task.add_done_callback(pending.discard)
    for task in list(pending):
        task.cancel()
    await asyncio.gather(*(w.close(reason="stand-ins done") for w in workers.values()), return_exceptions=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    host = sub.add_parser("host", help="run one host process (the pool starts these)")
    host.add_argument("--scheduler", required=True)
    host.add_argument("--tls-dir", type=Path, required=True)
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    asyncio.run(_host(args.scheduler, args.tls_dir))


if __name__ == "__main__":
    main()
