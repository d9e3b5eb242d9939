"""Many tasks against a real Prefect server, for ``bench_scale.py --server``.

Side by side, each as a fresh process timed from launch to exit, interleaved per n:

- flowrig: ``flowrig run`` of bench_scale's project (3 local workers, mutual TLS);
- prefect-dask: the same flow with prefect-dask's ``DaskTaskRunner`` on a TLS
  ``LocalCluster`` of the same size, Prefect's own way;
- plain Dask: ``client.map`` on the same cluster, which records nothing (the floor);
- with ``--baseline DIR``, flowrig again with another checkout's code first on the path
  (``git worktree add DIR main``): before and after a change, in one run.

While a Prefect run goes, and after it exits, the server's task-run count is polled:
a run's task runs are recorded when the count has grown by n. Printed per run: how long
after its exit the last was recorded, and the server's recording rate (task runs per
second, from the first task run recorded to the last). ``--profile-server`` samples the
server process with py-spy during the last flowrig run of the largest n, until its task
runs are recorded, and prints where the server's time went.
"""

from __future__ import annotations

import collections
import json
import os
import shutil
import statistics
import subprocess
import sys
import textwrap
import threading
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from plain_tls import install as install_plain_tls

WORKERS = 3

PREFECT_DASK = textwrap.dedent(
    """
    import sys
    from distributed import LocalCluster
    from plain_tls import cluster_kwargs, security
    from prefect import flow, task
    from prefect_dask import DaskTaskRunner

    @task
    def double(x: int) -> int:
        return 2 * x

    if __name__ == "__main__":
        certs, n = sys.argv[1], int(sys.argv[2])
        sec = security(certs)
        runner = DaskTaskRunner(cluster_class=LocalCluster, client_kwargs={"security": sec},
                                cluster_kwargs=cluster_kwargs(sec, %(workers)d))

        @flow(name="scale-prefect-dask", task_runner=runner)
        def scale(n: int = 10) -> int:
            return sum(double.map(range(n)).result())

        print(scale(n))
    """
) % {"workers": WORKERS}


def task_runs(url: str) -> int:
    request = urllib.request.Request(url + "/task_runs/count", data=b"{}", method="POST",
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=60) as response:
        return int(response.read())


@dataclass
class Timed:
    wall: float
    #: Seconds from the run's exit until its task runs were all recorded (None: no recording).
    lag: float | None = None
    #: Task runs the server recorded per second, first to last.
    rate: float | None = None


class Recording:
    """Polls the server's task-run count from a run's start until it grew by ``goal``."""

    def __init__(self, url: str, goal: int, interval: float = 0.5) -> None:
        self.url, self.goal, self.interval = url, goal, interval
        self.before = task_runs(url)
        self.points: list[tuple[float, int]] = []
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()

    def _poll(self) -> None:
        while not self._done.is_set():
            count = task_runs(self.url) - self.before
            self.points.append((time.perf_counter(), count))
            if count >= self.goal:
                self._done.set()
                return
            self._done.wait(self.interval)

    def wait(self, timeout: float = 900) -> tuple[float, float]:
        """(when the last was recorded, task runs per second from the first to the last)."""
        if not self._done.wait(timeout):
            sys.exit(f"the server recorded {self.points[-1][1]} of {self.goal} task runs within {timeout:.0f} s")
        self._thread.join()
        first = next(t for t, count in self.points if count > 0)
        last = self.points[-1][0]
        return last, self.goal / max(last - first, self.interval)


class ServerBench:
    def __init__(self, work: Path, env: dict[str, str], url: str, project: Path, certs: Path,
                 runner: Path, plain: Path, baseline: Path | None) -> None:
        self.work, self.env, self.url, self.project, self.certs = work, env, url, project, certs
        self.runner, self.plain_script, self.baseline = runner, plain, baseline
        self.prefect_dask_script = work / "prefect_dask_flow.py"
        self.prefect_dask_script.write_text(PREFECT_DASK)
        install_plain_tls(work)

    def _timed(self, argv: list[str], env: dict[str, str], recorded: int | None) -> Timed:
        recording = Recording(self.url, recorded) if recorded else None
        start = time.perf_counter()
        done = subprocess.run(argv, capture_output=True, text=True, env=env)
        end = time.perf_counter()
        if done.returncode != 0:
            sys.exit(f"benchmark step failed ({' '.join(argv[:5])} ...):\n{done.stderr[-3000:]}")
        if recording is None:
            return Timed(end - start)
        last, rate = recording.wait()
        return Timed(end - start, max(last - end, 0.0), rate)

    def flowrig(self, n: int, code: Path | None = None) -> Timed:
        params = self.work / "server-params.json"
        params.write_text(json.dumps({"n": n}))
        env = dict(self.env)
        if code is not None:
            env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(code), env.get("PYTHONPATH")]))
        argv = [sys.executable, str(self.runner), str(self.work / "server-rss.txt"), "run", str(self.project),
                "--params-file", str(params), "--output", "json", "--quiet", "--certs", str(self.certs)]
        return self._timed(argv, env, n)

    def prefect_dask(self, n: int) -> Timed:
        return self._timed([sys.executable, str(self.prefect_dask_script), str(self.certs), str(n)], self.env, n)

    def plain(self, n: int) -> Timed:
        return self._timed([sys.executable, str(self.plain_script), str(self.certs), str(n), "-", "0"], self.env, None)


def _median(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def _describe(name: str, runs: list[Timed]) -> str:
    wall, lag, rate = (_median([getattr(r, k) for r in runs]) for k in ("wall", "lag", "rate"))
    text = f"{name} {wall:7.2f} s"
    if rate is not None:
        text += f" (recorded {lag:5.2f} s after exit, {rate:6.1f} task runs/s)"
    return text


def measure_server(bench: ServerBench, sizes: list[int], repeat: int, label: str,
                   profile: Path | None = None, py_spy: str | None = None, prefect_dask: bool = True) -> None:
    sides: list[tuple[str, object]] = [("flowrig", bench.flowrig), ("prefect-dask", bench.prefect_dask),
                                       ("plain Dask", bench.plain)]
    if not prefect_dask:
        del sides[1]
    if bench.baseline is not None:
        sides.insert(1, ("flowrig (baseline)", lambda n: bench.flowrig(n, bench.baseline)))
    results: dict[int, dict[str, list[Timed]]] = {}
    for n in sizes:
        results[n] = {name: [] for name, _ in sides}
        for i in range(repeat):
            # Interleaved, each side first in turn.
            order = sides[i % len(sides):] + sides[:i % len(sides)]
            for name, side in order:
                results[n][name].append(side(n))
        parts = [_describe(name, results[n][name]) for name, _ in sides]
        floor = _median([r.wall for r in results[n]["plain Dask"]])
        ratios = ", ".join(f"{name} / plain {_median([r.wall for r in results[n][name]]) / floor:.2f}"
                           for name, _ in sides if name != "plain Dask")
        print(f"[{label}] n={n:<6} " + " | ".join(parts) + f"   ratios: {ratios}", flush=True)
    if 1000 in results and 5000 in results:
        floor = [_median([r.wall for r in results[n]["plain Dask"]]) for n in (1000, 5000)]
        for name, _ in sides:
            if name == "plain Dask":
                continue
            walls = [_median([r.wall for r in results[n][name]]) for n in (1000, 5000)]
            own = ((walls[1] - walls[0]) - (floor[1] - floor[0])) / 4000 * 1000
            per_task_1000 = (walls[0] - floor[0]) / 1000 * 1000
            print(f"[{label}] {name}: own cost per task {own:.2f} ms (slope 1000->5000 over plain Dask's), "
                  f"{per_task_1000:.2f} ms at n=1000 (whole run over plain Dask's, / n)", flush=True)
    if profile is not None:
        profile_server(bench, max(sizes), profile, py_spy, label)


def _server_pid(url: str) -> int:
    port = url.split(":")[2].split("/")[0]
    found = subprocess.run(["ss", "-ltnpH", f"sport = :{port}"], capture_output=True, text=True).stdout
    return int(found.split("pid=")[1].split(",")[0])


def profile_server(bench: ServerBench, n: int, out: Path, py_spy: str | None, label: str) -> None:
    """Sample the server with py-spy during a flowrig run of n tasks, until recorded."""
    py_spy = py_spy or shutil.which("py-spy")
    if not py_spy:
        sys.exit("--profile-server needs py-spy (pip install py-spy) on PATH or --py-spy PATH")
    # --gil: the samples of the thread running Python code, the server's CPU time (its
    # threads that wait, on a queue or on the database, are left out).
    sampler = subprocess.Popen([py_spy, "record", "--pid", str(_server_pid(bench.url)), "--format", "raw",
                                "--rate", "50", "--nonblocking", "--gil", "-o", str(out)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(1)
    timed = bench.flowrig(n)
    sampler.send_signal(2)  # py-spy writes its file on SIGINT
    sampler.wait(timeout=60)
    print(f"[{label}] server profile of a flowrig run of n={n} ({timed.wall:.1f} s, recorded "
          f"{timed.lag:.1f} s after exit): {out}", flush=True)
    for line in summarise_profile(out):
        print(f"[{label}]   {line}", flush=True)


#: Where a sample's stack says the server's time went, first match from the leaf up.
CATEGORIES = (
    ("database driver (asyncpg / aiosqlite / sqlite3)", ("asyncpg", "aiosqlite", "sqlite3")),
    ("SQLAlchemy", ("sqlalchemy",)),
    ("pydantic validation and serialisation", ("pydantic",)),
    ("JSON", ("json", "orjson")),
    ("HTTP and websockets", ("uvicorn", "starlette", "websockets", "h11", "httptools")),
    ("Prefect's events pipeline and task-run recorder", ("prefect/server/events", "prefect/server/services",
                                                         "prefect/server/utilities/messaging")),
    ("Prefect's API handlers and models", ("prefect/server",)),
    ("asyncio event loop", ("asyncio",)),
)


def summarise_profile(path: Path, top: int = 12) -> list[str]:
    """Samples by category (the frame nearest the leaf that names one) and the functions
    that used most of them themselves."""
    by_category: collections.Counter[str] = collections.Counter()
    by_leaf: collections.Counter[str] = collections.Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        frames = stack.split(";")
        leaf = frames[-1] or "(native code)"
        if any(idle in leaf for idle in ("select (selectors", "_run_once (asyncio", "wait (threading",
                                         "poll (selectors", "epoll")):
            continue  # waiting, not working
        samples = int(count)
        total += samples
        by_leaf[leaf] += samples
        for frame in reversed(frames):
            category = next((name for name, marks in CATEGORIES if any(mark in frame for mark in marks)), None)
            if category:
                by_category[category] += samples
                break
        else:
            by_category["other"] += samples
    if not total:
        return ["no busy samples"]
    lines = [f"{total} samples of the thread holding the GIL; by where the stack is:"]
    lines += [f"{100 * s / total:5.1f} %  {name}" for name, s in by_category.most_common()]
    lines.append("functions with the most samples of their own:")
    lines += [f"{100 * s / total:5.1f} %  {leaf}" for leaf, s in by_leaf.most_common(top)]
    return lines
