"""CPU seconds per role of one benchmarked run, for ``bench_scale.py --profile-roles``.

A run is started as a child process and its whole process tree is polled (psutil, every
0.2 s) until it exits: each process's last CPU seconds (user + system) and the TCP ports
it listens on (read every 2 s). When the run has ended, each process gets a role:

- ``runner``: the started process itself (for plain Dask: its client *and* scheduler);
- ``api``: the run's embedded Prefect API (``flowrig.api.serve``);
- ``scheduler``: the process listening on the scheduler's port (from the run's JSON
  outcome, ``scheduler_address``);
- ``worker``: every other process that listens on a TCP port (Dask workers);
- ``other``: the rest (fork server, resource tracker).

What it leaves out: the CPU a process spends after the last poll before it exits (at
most 0.2 s of each process's life; teardown), and the CPU of processes that lived less
than one poll.
"""

from __future__ import annotations

import json
import subprocess
import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field

import psutil

INTERVAL = 0.2


@dataclass
class _Seen:
    cmdline: str = ""
    cpu: float = 0.0
    ports: set[int] = field(default_factory=set)


def _poll(root: psutil.Process, seen: dict[int, _Seen], ports: bool) -> None:
    try:
        processes = [root, *root.children(recursive=True)]
    except psutil.Error:
        return
    for process in processes:
        try:
            with process.oneshot():
                times = process.cpu_times()
                entry = seen.get(process.pid)
                if entry is None:
                    entry = seen[process.pid] = _Seen(" ".join(process.cmdline()))
                entry.cpu = times.user + times.system
                if ports or not entry.ports:
                    entry.ports |= {c.laddr.port for c in process.net_connections("tcp") if c.status == "LISTEN"}
        except psutil.Error:
            continue


def run(argv: list[str], env: dict[str, str]) -> tuple[subprocess.CompletedProcess, dict[str, list[float]]]:
    """Run ``argv`` to its end; its outcome and the CPU seconds of each process by role."""
    child = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    root = psutil.Process(child.pid)
    seen: dict[int, _Seen] = {}
    done = threading.Event()

    def sample() -> None:
        polls = 0
        while not done.is_set():
            # Listening ports are read on a process's first polls and every 2 s after
            # (a process may listen on its scheduler port after another one).
            _poll(root, seen, ports=polls % 10 == 0)
            polls += 1
            done.wait(INTERVAL)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    started = time.monotonic()
    stdout, stderr = child.communicate()
    done.set()
    sampler.join()
    completed = subprocess.CompletedProcess(argv, child.returncode, stdout, stderr)
    completed.wall = time.monotonic() - started  # type: ignore[attr-defined]
    return completed, classify(child.pid, seen, stdout)


def _scheduler_port(stdout: str) -> int | None:
    for line in reversed(stdout.strip().splitlines()):
        try:
            address = json.loads(line).get("scheduler_address") or ""
        except (ValueError, AttributeError):
            continue
        return int(address.rsplit(":", 1)[1]) if ":" in address else None
    return None


def classify(root: int, seen: dict[int, _Seen], stdout: str) -> dict[str, list[float]]:
    """CPU seconds of each process, grouped by role (see the module's docstring)."""
    port = _scheduler_port(stdout)
    roles: dict[str, list[float]] = defaultdict(list)
    for pid, entry in seen.items():
        if pid == root:
            role = "runner"
        elif "flowrig.api.serve" in entry.cmdline:
            role = "api"
        elif port is not None and port in entry.ports:
            role = "scheduler"
        elif entry.ports:
            role = "worker"
        else:
            role = "other"
        roles[role].append(entry.cpu)
    return dict(roles)


def summary(roles: dict[str, list[float]], tasks: int) -> str:
    """One line: each role's CPU seconds, and the workers' per task."""
    parts = [f"{role} {sum(cpu):.1f} s" + (f" ({len(cpu)})" if len(cpu) > 1 else "")
             for role, cpu in sorted(roles.items())]
    workers = sum(roles.get("worker", []))
    return f"{', '.join(parts)}; worker CPU {1000 * workers / tasks:.2f} ms/task"
