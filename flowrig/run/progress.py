"""Task progress of a run: counted where tasks run, shown where the run was started.

When a task ends, the worker that ran it sends its final state, and the traceback of
a failure, as a Dask worker event on :data:`TOPIC` (``Worker.log_event``; the message is
made by :func:`report`, which the run's task runner calls). The runner's Dask client
subscribes to the topic (``Client.subscribe_topic``), so the counts are the same on
every backend, local processes and cloud containers alike, and cost one small message
per task. A task run counts once, by its id: a task that runs again because the worker
that held its result was lost is not counted twice. The tasks' own log lines travel on
the same topic (:mod:`flowrig.run.tasklog`).

:class:`ProgressDisplay` shows them: on a terminal one live line per task name (done /
total / failed, via rich, which honours ``NO_COLOR``); elsewhere a one-line summary at
most every :data:`SUMMARY_SECONDS`, and a last one at the end.
"""

from __future__ import annotations

import sys
import threading
import time
import traceback
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable, NamedTuple, TextIO

#: The Dask event topic task states travel on.
TOPIC = "flowrig-task-state"
#: The topic on which a worker's nanny says it restarted its worker for exceeding the
#: worker's memory budget (distributed's own event, on every backend whose workers
#: have nannies).
MEMORY_TOPIC = "worker-restart-memory"
#: Seconds between two summary lines when stderr is not a terminal.
SUMMARY_SECONDS = 10.0
#: Failed tasks whose traceback is printed; later failures are only counted.
TRACEBACKS_SHOWN = 3
#: Longest traceback text a failure event carries.
TRACEBACK_LIMIT = 8000
#: Names of failed task runs an outcome lists; the rest are counted.
FAILED_NAMES_SHOWN = 20
#: The final states a failed task run reports, and the one of a task run that never ran
#: because what it waited for failed (Prefect's ``NotReady``).
FAILED_STATES = ("FAILED", "CRASHED")
NOT_RUN_STATE = "PENDING"


def _engine_dirs() -> tuple[str, ...]:
    import os

    import prefect

    return (os.path.dirname(prefect.__file__) + os.sep,)


def format_failure(exc: BaseException) -> str:
    """The traceback of a task's exception, without the frames of Prefect's engine."""
    engine = _engine_dirs()
    seen: set[int] = set()

    def trim(te: traceback.TracebackException | None) -> None:
        while te is not None and id(te) not in seen:
            seen.add(id(te))
            te.stack = traceback.StackSummary.from_list(
                [frame for frame in te.stack if not frame.filename.startswith(engine)]
            )
            trim(te.__context__)
            te = te.__cause__

    summary = traceback.TracebackException.from_exception(exc)
    trim(summary)
    return "".join(summary.format())


def report(task: Any, task_run_id: Any, state: Any) -> dict[str, Any]:
    """What a worker sends the runner when a task ends (runs on the worker).

    The traceback goes with failures only, Prefect's own frames left out.
    """
    message: dict[str, Any] = {
        "task": task.name,
        "state": state.type.value,
        # Prefect names a task run after its task and the start of its id.
        "run": f"{task.name}-{task_run_id.hex[:3]}",
        "id": task_run_id.hex,
    }
    if state.is_failed() or state.is_crashed():
        try:
            exc = state.result(raise_on_failure=False)
            text = format_failure(exc) if isinstance(exc, BaseException) else (state.message or "")
        except Exception as error:  # the result could not be read: say so, briefly
            text = f"{state.message or ''} ({type(error).__name__} reading the result)"
        message["traceback"] = text[-TRACEBACK_LIMIT:]
    return message


class Counts(NamedTuple):
    """Task runs of one task name so far."""

    done: int
    total: int
    failed: int
    not_run: int = 0


@dataclass
class _Counts:
    total: int = 0
    done: int = 0
    failed: int = 0
    not_run: int = 0

    def add(self, state: str | None, sign: int) -> None:
        self.done += sign
        if state in FAILED_STATES:
            self.failed += sign
        elif state == NOT_RUN_STATE:
            self.not_run += sign


@dataclass
class TaskProgress:
    """What a run's tasks did so far, by task name (thread-safe).

    Parameters
    ----------
    on_first_finished
        Called once, when the first task reports its final state.
    task_logs
        What the run's workers do with their tasks' log lines
        (:class:`flowrig.run.tasklog.TaskLogForwarding`); ``None``: nothing is sent.
    """

    on_first_finished: Callable[[], None] | None = None
    topic: str = TOPIC
    task_logs: Any = None
    by_name: dict[str, _Counts] = field(default_factory=dict)
    failures: list[tuple[str, str]] = field(default_factory=list)
    #: Log lines of the tasks, as they came, for the display to print.
    lines: deque[dict[str, Any]] = field(default_factory=deque)
    #: Workers restarted for exceeding their memory budget: distributed's events.
    memory_restarts: list[dict[str, Any]] = field(default_factory=list)
    #: What the display has not printed of them yet.
    notices: deque[str] = field(default_factory=deque)
    #: Final state of each task run that reported, by its id: (task name, run name, state).
    _finals: dict[str, tuple[str, str, str | None]] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _changed: threading.Event = field(default_factory=threading.Event)

    #: Run on the workers to make each task's message (pickled by reference).
    report = staticmethod(report)

    def submitted(self, name: str, count: int = 1) -> None:
        with self._lock:
            self.by_name.setdefault(name, _Counts()).total += count
        self._changed.set()

    def event(self, event: Any) -> None:
        """Handler of :data:`TOPIC` events: ``(timestamp, message)``."""
        message = event[1] if isinstance(event, tuple) else event
        if not isinstance(message, dict):
            return
        if "log" in message:
            self.lines.append(message["log"])
            self._changed.set()
            return
        name = message.get("task", "?")
        run = message.get("run", name)
        state = message.get("state")
        # Without an id (an older worker) each report is a task run of its own.
        ident = message.get("id") or f"report-{len(self._finals)}"
        with self._lock:
            first = not self._finals
            counts = self.by_name.setdefault(name, _Counts())
            previous = self._finals.get(ident)
            if previous is not None:
                # Ran again (its worker, and the result it held, were lost): the
                # latest state replaces the earlier one.
                self.by_name.setdefault(previous[0], _Counts()).add(previous[2], -1)
            counts.add(state, +1)
            self._finals[ident] = (name, run, state)
            if state in FAILED_STATES and (previous is None or previous[2] not in FAILED_STATES):
                self.failures.append((run, message.get("traceback", "")))
        if first and self.on_first_finished is not None:
            self.on_first_finished()
        self._changed.set()

    def subscriptions(self) -> dict[str, Callable[[Any], None]]:
        """The Dask event topics the runner's client subscribes to, with their handlers."""
        return {self.topic: self.event, MEMORY_TOPIC: self.memory_event}

    def memory_event(self, event: Any) -> None:
        """Handler of :data:`MEMORY_TOPIC`: a worker was restarted for its memory."""
        message = event[1] if isinstance(event, tuple) else event
        if not isinstance(message, dict):
            return
        self.memory_restarts.append(message)
        rss = message.get("rss")
        used = f" at {rss / 2**20:.0f} MiB" if isinstance(rss, (int, float)) else ""
        self.notices.append(
            f"worker {message.get('worker', '?')} ran out of memory{used} (over 95% of its memory limit) and was "
            "restarted; its tasks run again on other workers"
        )
        self._changed.set()

    def memory_note(self) -> str | None:
        """What to add to a failure when workers were restarted for their memory."""
        count = len(self.memory_restarts)
        if not count:
            return None
        return (
            f"{count} worker{'s were' if count != 1 else ' was'} restarted for running out of memory (over 95% of "
            "the memory limit): give the workers more memory ([cluster.options] of the backend: memory_limit on "
            "local) or the tasks less to hold"
        )

    def snapshot(self) -> dict[str, Counts]:
        """``name -> Counts(done, total, failed, not_run)``."""
        with self._lock:
            return {
                name: Counts(c.done, max(c.total, c.done), c.failed, c.not_run) for name, c in self.by_name.items()
            }

    def failed_tasks(self) -> dict[str, Any]:
        """The task runs whose final state is failed: ``count``, ``by_task`` (count by
        task name) and ``names`` (the first :data:`FAILED_NAMES_SHOWN` task runs)."""
        with self._lock:
            failed = [(name, run) for name, run, state in self._finals.values() if state in FAILED_STATES]
        by_task: dict[str, int] = {}
        for name, _ in failed:
            by_task[name] = by_task.get(name, 0) + 1
        return {"count": len(failed), "by_task": by_task, "names": [run for _, run in failed[:FAILED_NAMES_SHOWN]]}

    def wait_changed(self, timeout: float) -> bool:
        changed = self._changed.wait(timeout)
        self._changed.clear()
        return changed

    def wake(self) -> None:
        """Wake whoever waits for a change (the display, to stop)."""
        self._changed.set()


def summary_line(counts: dict[str, tuple[int, ...]]) -> str:
    """``tasks 40/50 done, 1 failed (times_two 39/49, get_sum 1/1)``, and how many did
    not run because what they waited for failed, when any did not."""
    rows = {name: Counts(*c) for name, c in counts.items()}
    done = sum(c.done for c in rows.values())
    total = sum(c.total for c in rows.values())
    failed = sum(c.failed for c in rows.values())
    not_run = sum(c.not_run for c in rows.values())
    parts = ", ".join(f"{name} {c.done}/{c.total}" for name, c in rows.items())
    line = f"tasks {done}/{total} done, {failed} failed"
    if not_run:
        line += f", {not_run} not run (an upstream task failed)"
    return line + (f" ({parts})" if len(rows) > 1 else "")


class ProgressDisplay:
    """Shows a run's :class:`TaskProgress` on stderr until :meth:`stop`.

    Parameters
    ----------
    progress
        The counts to show.
    stream
        Where to show them (stderr).
    interactive
        A live display (a terminal) or periodic summary lines; default: whether the
        stream is a terminal.
    prefix
        Put in front of every line (the run's name).
    counts
        Show the counts (live, or as summary lines); ``False`` shows failures only.
    code_file
        The file that tracebacks name ``<dynamic-code>``: the flow file, whose functions
        travel to the workers by value and so lose their file name on the way.
    """

    def __init__(
        self,
        progress: TaskProgress,
        stream: TextIO | None = None,
        *,
        interactive: bool | None = None,
        prefix: str = "flowrig",
        interval: float = SUMMARY_SECONDS,
        counts: bool = True,
        code_file: str | None = None,
    ) -> None:
        self.progress = progress
        self.code_file = code_file
        self.stream = stream or sys.stderr
        self.counts = counts
        self.interactive = counts and (self.stream.isatty() if interactive is None else interactive)
        self.prefix = prefix
        self.interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="flowrig-progress", daemon=True)
        self._shown_failures = 0

    def start(self) -> "ProgressDisplay":
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop showing, print any failure not printed yet, and a last summary line."""
        self._stop.set()
        self.progress.wake()
        self._thread.join(timeout=5)
        self._print_lines()
        self._print_failures()
        counts = self.progress.snapshot()
        if counts and self.counts:
            self._write(f"{self.prefix}: {summary_line(counts)}")

    def _write(self, line: str) -> None:
        self.stream.write(line + "\n")
        self.stream.flush()

    def _failure_text(self, run: str, text: str) -> str:
        if self.code_file:
            text = text.replace('File "<dynamic-code>"', f'File "{self.code_file}"')
        return f"{self.prefix}: task run {run!r} failed:\n{text.rstrip()}"

    def _print_lines(self, show: Callable[[str], None] | None = None) -> None:
        from flowrig.run.tasklog import format_line

        lines, notices = self.progress.lines, self.progress.notices
        while lines:
            (show or self._write)(format_line(lines.popleft()))
        while notices:
            (show or self._write)(f"{self.prefix}: {notices.popleft()}")

    def _print_failures(self) -> None:
        failures = self.progress.failures
        while self._shown_failures < len(failures):
            run, text = failures[self._shown_failures]
            self._shown_failures += 1
            if self._shown_failures <= TRACEBACKS_SHOWN:
                self._write(self._failure_text(run, text))
            elif self._shown_failures == TRACEBACKS_SHOWN + 1:
                self._write(f"{self.prefix}: more tasks failed; the summary counts them")

    def _run(self) -> None:
        if self.interactive:
            self._run_live()
            return
        last = time.monotonic()
        reported: dict[str, Counts] = {}
        while not self._stop.is_set():
            # The tasks' lines and failures are printed as they come.
            self.progress.wait_changed(0.2)
            self._print_lines()
            self._print_failures()
            if self.counts and time.monotonic() - last >= self.interval:
                counts = self.progress.snapshot()
                if counts and counts != reported:
                    self._write(f"{self.prefix}: {summary_line(counts)}")
                    reported = counts
                last = time.monotonic()

    def _run_live(self) -> None:
        from rich.console import Console
        from rich.markup import escape
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        console = Console(file=self.stream, stderr=True)
        columns = (
            TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("{task.fields[failed]} failed"), TimeElapsedColumn(),
        )
        with Progress(*columns, console=console, transient=True) as bar:
            rows: dict[str, Any] = {}
            while not self._stop.is_set():
                self.progress.wait_changed(0.2)
                for name, counts in self.progress.snapshot().items():
                    if name not in rows:
                        rows[name] = bar.add_task(escape(name), total=counts.total, failed=0)
                    bar.update(rows[name], completed=counts.done, total=counts.total, failed=counts.failed)
                self._print_lines(lambda line: bar.console.print(line, markup=False, highlight=False))
                if self.progress.failures[self._shown_failures:]:
                    for run, text in self.progress.failures[self._shown_failures:TRACEBACKS_SHOWN]:
                        bar.console.print(self._failure_text(run, text), markup=False, highlight=False)
                    self._shown_failures = len(self.progress.failures)
