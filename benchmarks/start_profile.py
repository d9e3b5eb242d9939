"""Where one ``flowrig run`` of the seed spends its start: ``bench_local.py --profile``.

Three looks at the same command, each from a run of its own:

1. the runner's imports (``python -X importtime``), the largest cumulative ones, and the
   embedded API's own import of ``prefect.server`` timed in a fresh interpreter;
2. py-spy (``--subprocesses --idle``, raw stacks) of the whole run: per process (runner,
   API, fork server, scheduler, workers) its samples, i.e. its wall time, and the
   frames that hold most of its non-idle samples;
3. the run's own timeline marks and phases (medians over the benchmark's runs): the
   critical path, what the runner waits on at each moment.

py-spy is not a dependency: set ``PY_SPY`` to its binary, or have it on ``PATH``.
"""

from __future__ import annotations

import collections
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

#: Frames that mean a thread waits rather than works.
IDLE = re.compile(r"\b(select|poll|epoll|wait|_wait_for_tstate_lock|sleep|accept|recv|read|readinto|"
                  r"_recv|_recv_bytes|_poll|run_forever|_run_once|acquire|get)\b \(")

RATE = 250


def _imports(argv: list[str], env: dict[str, str], top: int = 25) -> None:
    done = subprocess.run([argv[0], "-X", "importtime", *argv[1:]], capture_output=True, text=True, env=env)
    rows = []
    for line in done.stderr.splitlines():
        match = re.match(r"import time:\s+(\d+) \|\s+(\d+) \| (\s*)(\S+)", line)
        if match:
            rows.append((int(match.group(2)), len(match.group(3)) // 2, match.group(4)))
    total = sum(cum for cum, depth, _ in rows if depth == 0)
    # The fork server and the roles it forks (scheduler, workers) write to the runner's
    # stderr with the runner's flags: their imports are listed too (the scheduler's
    # dashboard is one).
    print(f"\n-- the imports of the runner and its forks (python -X importtime): {total / 1e6:.2f} s "
          "in top-level imports")
    for cum, depth, name in sorted(rows, reverse=True)[:top]:
        print(f"   {cum / 1e6:6.3f} s  {'  ' * depth}{name}")
    code = "import time; t = time.perf_counter(); import uvicorn; from flowrig.internals import prefect_server; " \
           "prefect_server.import_server(); print(time.perf_counter() - t)"
    seconds = [float(subprocess.run([argv[0], "-c", code], capture_output=True, text=True, env=env).stdout)
               for _ in range(3)]
    print(f"   the API's import of prefect.server and uvicorn, fresh interpreter: median "
          f"{statistics.median(seconds):.2f} s of {', '.join(f'{v:.2f}' for v in seconds)}")


#: What a process's stacks hold, by its role: forked processes share the runner's
#: command line, so their frames tell them apart (the first match wins).
ROLES = (("API", "flowrig/api/serve.py"), ("worker", "distributed/worker.py"),
         ("worker", "_run (distributed/nanny.py"), ("scheduler", "flowrig/backends/local/scheduler.py"),
         ("fork server", "multiprocessing/forkserver.py"), ("resource tracker", "resource_tracker.py"))


def _roles(stacks: dict[str, list[str]]) -> dict[str, str]:
    """``process PID:"COMMAND"`` (py-spy's first frame of every stack) -> role and pid."""
    named = {}
    for header, lines in stacks.items():
        pid = re.match(r"process (\d+)", header)
        role = next((role for role, sign in ROLES if any(sign in line for line in lines)), "runner")
        named[header] = f"{role} {pid.group(1) if pid else header[:20]}"
    return named


def _spy(argv: list[str], env: dict[str, str], top: int = 8) -> None:
    spy = os.environ.get("PY_SPY") or shutil.which("py-spy") or "/tmp/pyspy/bin/py-spy"
    if not Path(spy).exists():
        print("\n-- py-spy: not found (set PY_SPY)")
        return
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "raw.txt"
        subprocess.run([spy, "record", "--subprocesses", "--idle", "-r", str(RATE), "--format", "raw",
                        "-o", str(out), "--", *argv], capture_output=True, text=True, env=env)
        lines = out.read_text().splitlines() if out.exists() else []
    stacks: dict[str, list[str]] = collections.defaultdict(list)
    for line in lines:
        stacks[line.split(";", 1)[0]].append(line)
    names = _roles(stacks)
    if len({re.match(r"process (\d+)", header) and header.split(":", 1)[0] for header in stacks}) < 2:
        # Seen with py-spy 0.4.3 in a container: every sample under the first pid, so
        # frames of the API and the runner would be told as one process's.
        print(f"\n-- py-spy followed no subprocess ({len(lines)} stacks, one process): no split per process")
        return
    samples: dict[str, int] = collections.Counter()
    busy: dict[str, int] = collections.Counter()
    frames: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    for line in lines:
        stack, _, count = line.rpartition(" ")
        parts = stack.split(";")
        process, thread_frames = names[parts[0]], parts[2:]
        n = int(count)
        samples[process] += n
        if thread_frames and IDLE.search(thread_frames[-1]):
            continue
        busy[process] += n
        # Inclusive counts of the frames of flowrig, Prefect and distributed, each once per stack.
        for frame in dict.fromkeys(f for f in thread_frames if re.search(r"\((flowrig|prefect|distributed|"
                                                                        r"uvicorn|importlib)", f)):
            frames[process][frame] += n
    print(f"\n-- py-spy, {RATE} samples/s per thread, idle included: per process, its samples (all threads) "
          "and its busy ones")
    for process, count in sorted(samples.items(), key=lambda item: -busy[item[0]]):
        print(f"   {process:<28} {count / RATE:6.2f} thread-s  busy {busy[process] / RATE:5.2f} s")
        # The frames below the roots every busy sample shares: where the time goes.
        below = [(f, n) for f, n in frames[process].most_common() if n < 0.8 * busy[process]]
        for frame, n in below[:top]:
            print(f"        {n / RATE:5.2f} s  {frame[:110]}")


def _critical_path(timings: list[dict], medians: dict[str, float]) -> None:
    def median(key: str) -> float | None:
        values = [t[key] for t in timings if t.get(key) is not None]
        return statistics.median(values) if values else None

    print("\n-- the run's critical path (medians of the timed runs of (a); seconds from the command's start)")
    at = 0.0
    for key, says in (("startup", "interpreter start, CLI imports and parsing"),
                      ("load", "API spawned, flowrig.toml, certificates, flow and engine imports, fork server"),
                      ("prepare", "parameters validated, size decided, workers' environment"),
                      ("cluster_start", "scheduler and workers (waits for the workers)"),
                      ("api_wait", "waiting for the API to answer"),
                      ("flow", "the flow on the cluster"),
                      ("teardown", "cluster closed, API stopped")):
        seconds = median(key) or 0.0
        at += seconds
        print(f"   {key:<14} {seconds:5.2f} s  until {at:5.2f} s  {says}")
    total = median("total") or at
    print(f"   {'exit':<14} {medians['a'] - total:5.2f} s  until {medians['a']:5.2f} s  after the run's "
          "timings end: interpreter exit (wall time of the command minus its total)")
    marks = ", ".join(f"{key} {value:.2f}" for key in ("api_ready", "scheduler_up", "first_worker_joined",
                                                        "all_workers_joined", "first_task_finished",
                                                        "flow_finished", "teardown_done")
                      if (value := median(key)) is not None)
    print(f"   marks: {marks}")


def profile(argv: list[str], env: dict[str, str], timings: list[dict], medians: dict[str, float]) -> None:
    """Print the three looks at ``argv`` (a ``flowrig run`` command)."""
    _critical_path(timings, medians)
    _imports(argv, env)
    _spy(argv, env)
    sys.stdout.flush()
