"""A run's timings: the durations of its phases and its timeline, from one zero.

The zero is the start of the command (:func:`flowrig.common.clock.command_started`)
when a command line runs the run, else the moment :func:`flowrig.run.execute` was
called. The phases follow each other without gaps, so that they add up to ``total``,
the whole wall time up to the outcome:

``startup``
    the interpreter and the command line's imports, up to flowrig's first step;
``load``
    reading ``flowrig.toml``, starting the run's API, importing the flow and Prefect;
``prepare``, ``cluster_start``, ``api_wait``, ``flow``, ``teardown``
    :func:`~flowrig.run.execute`'s steps.

``startup`` and ``load`` are ``None`` for a run started from Python (no command).
"""

from __future__ import annotations

import threading
import time
from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:
    from flowrig.backends import StartedCluster

#: The start-up timeline's marks, in the order a run reaches them, with their labels.
TIMELINE = (
    ("api_ready", "API ready"),
    ("scheduler_up", "scheduler up"),
    ("first_worker_joined", "first worker joined"),
    ("all_workers_joined", "all workers joined"),
    ("first_task_finished", "first task finished"),
    ("flow_finished", "flow finished"),
    ("teardown_done", "teardown done"),
)

#: The phases, in order; they follow each other and add up to ``total``.
PHASES = ("startup", "load", "prepare", "cluster_start", "api_wait", "flow", "teardown")


class RunTimer:
    """A run's timings, counted from ``started``.

    Parameters
    ----------
    started
        Wall-clock time (``time.time()``) of the zero: the command's start; ``None``
        for now (a run started from Python).
    """

    def __init__(self, started: float | None = None) -> None:
        now_wall, now = time.time(), time.perf_counter()
        #: The zero, on the ``time.perf_counter()`` clock every mark uses, and on the wall clock.
        self.start = now - (now_wall - started) if started is not None else now
        self.start_wall = started if started is not None else now_wall
        self.phases: dict[str, float | None] = dict.fromkeys(PHASES)
        if started is not None:
            self.phases["startup"] = now - self.start
        self.timeline: dict[str, float | None] = {key: None for key, _ in TIMELINE}
        self.total: float | None = None
        #: When the phase in progress began (``perf_counter``).
        self._since = now
        self._lock = threading.Lock()

    def begin_run(self) -> None:
        """The run's own steps begin: for a command, what came since its start is ``load``."""
        if self.phases["startup"] is not None:
            self.phase("load")
        else:
            self._since = time.perf_counter()

    def phase(self, name: str) -> None:
        """End phase ``name``: it lasted from the end of the previous one until now."""
        now = time.perf_counter()
        self.phases[name] = now - self._since
        self._since = now

    def end_open_phase(self, before: str) -> None:
        """End the phase in progress, if it is one before ``before``: a run that stopped
        early spent the time since the last phase's end in the one it was in."""
        measured = [i for i, name in enumerate(PHASES) if self.phases[name] is not None]
        following = measured[-1] + 1 if measured else PHASES.index("prepare")
        if following < PHASES.index(before):
            self.phase(PHASES[following])

    def reached(self, key: str, at: float | None = None) -> None:
        """Mark ``key`` of the timeline, once (the first time it is reached counts)."""
        with self._lock:
            if self.timeline.get(key) is None:
                self.timeline[key] = (at if at is not None else time.perf_counter()) - self.start

    def finish(self) -> None:
        """The run is over: ``total`` is the time from the zero until now."""
        self.total = time.perf_counter() - self.start

    def elapsed(self) -> float:
        """Seconds since the zero."""
        return time.perf_counter() - self.start

    def as_dict(self) -> dict[str, float | None]:
        """Phases, ``total`` (until now, when the run is not over) and the timeline."""
        total = self.total if self.total is not None else self.elapsed()
        return {**self.phases, "total": total, **self.timeline}

    def watch_workers(self, started: "StartedCluster", expected: int, stop: threading.Event) -> None:
        """Mark when the first and the last of ``expected`` workers joined (in a thread)."""
        cluster = started.cluster
        joined_so_far: Callable[[], int] | None = started.workers_joined
        if joined_so_far is None:
            if getattr(cluster, "scheduler_info", None) is None:
                return

            def joined_so_far() -> int:
                return len(getattr(cluster, "scheduler_info", {}).get("workers", {}))

        if expected < 1:
            return
        count = joined_so_far

        def watch() -> None:
            while not stop.is_set():
                joined = count()
                if joined >= 1:
                    self.reached("first_worker_joined")
                if joined >= expected:
                    self.reached("all_workers_joined")
                    return
                stop.wait(0.02)

        threading.Thread(target=watch, name="flowrig-workers-joined", daemon=True).start()


def timeline_line(run_id: str, timings: dict[str, float | None]) -> str:
    """``flowrig run ID timeline: API ready 2.10 s, scheduler up 0.52 s, ...``."""
    parts = [f"{label} {timings[key]:.2f} s" for key, label in TIMELINE if timings.get(key) is not None]
    return f"flowrig run {run_id} timeline: " + (", ".join(parts) or "nothing started")
