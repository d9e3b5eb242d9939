"""Whether the machine was quiet while the report ran: ``/tmp/QUIET`` held for the whole
run, and a sampler of the load average and of every other process's CPU.

The sampler reads every process's CPU time every ``interval`` seconds (psutil) and sorts
the time used since the last sample into: this report and its descendants; processes in
containers (under a ``containerd-shim``), image builds (BuildKit's steps, under ``dockerd``)
and Docker's own daemons; kernel threads; and everything else ("others"). Containers and
daemons count as the report's own while a step that runs containers is measured, as others
otherwise. A process that starts and ends between two samples is not seen at all, so
"others" is a lower bound; the machine's whole busy time is recorded beside it."""

from __future__ import annotations

import os
import statistics
import threading
import time
from collections import Counter
from pathlib import Path

import psutil

QUIET = Path("/tmp/QUIET")
DAEMONS = {"dockerd", "containerd", "docker-proxy"}


class QuietHeld(Exception):
    """``/tmp/QUIET`` already exists: another benchmark holds the machine."""


class QuietHold:
    """Holds ``path`` (creates it, refusing when it exists) and removes it on exit,
    also on an error or an interrupt; never removes a hold that is not its own."""

    def __init__(self, path: Path = QUIET, wait: bool = False, poll: float = 30.0):
        self.path, self.wait, self.poll = path, wait, poll
        self.held = False

    def __enter__(self) -> QuietHold:
        while True:
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                if not self.wait:
                    holder = self.path.read_text(errors="replace").strip() if self.path.exists() else ""
                    raise QuietHeld(f"{self.path} exists ({holder or 'no owner written'}): another benchmark "
                                    f"holds the machine; wait until it is gone, or pass --wait") from None
                time.sleep(self.poll)
                continue
            with os.fdopen(fd, "w") as out:
                out.write(f"benchmarks/bench_report.py pid {os.getpid()} since "
                          f"{time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())}\n")
            self.held = True
            return self

    def __exit__(self, *exc) -> None:
        if self.held:
            self.path.unlink(missing_ok=True)
            self.held = False


class Sampler(threading.Thread):
    """Samples the machine every ``interval`` seconds until :meth:`stop`."""

    def __init__(self, interval: float = 2.0):
        super().__init__(daemon=True, name="quiet-sampler")
        self.interval = interval
        self.samples: list[dict] = []
        self._stopping = threading.Event()
        self._cpu: dict[int, float] = {}
        self._busy = _busy_seconds()
        self._at = time.monotonic()
        self._read()  # the baseline every first difference is taken from

    def run(self) -> None:
        while not self._stopping.wait(self.interval):
            self._read()

    def stop(self) -> None:
        self._stopping.set()
        self.join(timeout=self.interval * 5)

    def _read(self) -> None:
        now, busy = time.monotonic(), _busy_seconds()
        spent: dict[str, float] = Counter()
        names: Counter = Counter()
        table = snapshot()
        seen = {pid: info["cpu_times"].user + info["cpu_times"].system for pid, info in table.items()}
        mine = _descendants(table, os.getpid())
        for pid, total in seen.items():
            used = total - self._cpu.get(pid, 0.0) if self._cpu else 0.0
            if used <= 0:
                continue
            kind = _kind(table, pid, mine)
            spent[kind] += used
            if kind == "others":
                names[table[pid]["name"]] += used
        dt = now - self._at
        if self._cpu and dt > 0:
            self.samples.append({"at": time.time(), "seconds": dt, "load1": os.getloadavg()[0],
                                 "machine": (busy - self._busy) / dt,
                                 **{kind: spent[kind] / dt for kind in ("ours", "containers", "kernel", "others")},
                                 "names": dict(names)})
        self._cpu, self._busy, self._at = seen, busy, now


def snapshot() -> dict[int, dict]:
    """Every process's pid, parent, name and CPU times, by pid."""
    table = {}
    for process in psutil.process_iter(["pid", "ppid", "name", "cpu_times"]):
        if process.info["cpu_times"] is not None:
            table[process.info["pid"]] = process.info
    return table


def kinds(table: dict[int, dict]) -> dict[int, str]:
    """Each process of ``table`` as ``ours``, ``containers``, ``kernel`` or ``others``."""
    mine = _descendants(table, os.getpid())
    return {pid: _kind(table, pid, mine) for pid in table}


def _busy_seconds() -> float:
    times = psutil.cpu_times()
    return sum(times) - times.idle - getattr(times, "iowait", 0.0)


def _descendants(table: dict[int, dict], root: int) -> set[int]:
    children: dict[int, list[int]] = {}
    for pid, info in table.items():
        children.setdefault(info["ppid"], []).append(pid)
    found, todo = {root}, [root]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def _kind(table: dict[int, dict], pid: int, mine: set[int]) -> str:
    if pid in mine:
        return "ours"
    if pid == 2 or table[pid]["ppid"] == 2:
        return "kernel"
    seen, current = set(), pid
    while current in table and current not in seen:
        seen.add(current)
        # Under a shim: a container. Under dockerd itself (through runc): a BuildKit
        # build step, such as the pip of an image a docker step builds.
        name = table[current]["name"]
        if name in DAEMONS or name.startswith("containerd-shim"):
            return "containers"
        current = table[current]["ppid"]
    return "others"


def summary(samples: list[dict], docker: bool, limit: float) -> dict:
    """The samples of one window: mean and peak load, other processes' CPU (in cores; a
    step that runs no containers counts containers as others: ``docker``, or the sample's
    own ``docker`` mark), the busiest others by name, and ``quiet``: others used at most
    ``limit`` cores on average."""
    if not samples:
        return {"quiet": False, "samples": 0, "why": "no samples"}
    others = [s["others"] + (0.0 if s.get("docker", docker) else s["containers"]) for s in samples]
    names: Counter = Counter()
    for s in samples:
        names.update(s["names"])
    mean = statistics.fmean(others)
    return {
        "quiet": mean <= limit, "samples": len(samples), "others_cores_mean": round(mean, 3),
        "others_cores_max": round(max(others), 3), "limit_cores": limit,
        "containers_cores_mean": round(statistics.fmean(s["containers"] for s in samples), 3),
        "machine_cores_mean": round(statistics.fmean(s["machine"] for s in samples), 3),
        "load1_mean": round(statistics.fmean(s["load1"] for s in samples), 2),
        "load1_max": round(max(s["load1"] for s in samples), 2),
        "busiest_others": {name: round(seconds, 1) for name, seconds in names.most_common(5)},
    }
