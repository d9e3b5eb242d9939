"""Task progress of a run: counted where tasks run, shown where the run was started.

When a task ends, the worker that ran it sends its final state, and the traceback of
a failure, as a Dask worker event on :data:`TOPIC` (``Worker.log_event``; the message is
made by :func:`report`, which the run's task runner calls). The runner's Dask client
subscribes to the topic (``Client.subscribe_topic``), so the counts are the same on
every backend, local processes and cloud containers alike, and cost one small message
per task.

:class:`ProgressDisplay` shows them: on a terminal one live line per task name (done /
total / failed, via rich, which honours ``NO_COLOR``); elsewhere a one-line summary at
most every :data:`SUMMARY_SECONDS`, and a last one at the end.
"""

from __future__ import annotations

import sys
import threading
import time
import traceback
from dataclasses import dataclass, field
from typing import Any, Callable, TextIO

#: The Dask event topic task states travel on.
TOPIC = "flowrig-task-state"
#: Seconds between two summary lines when stderr is not a terminal.
SUMMARY_SECONDS = 10.0
#: Failed tasks whose traceback is printed; later failures are only counted.
TRACEBACKS_SHOWN = 3
#: Longest traceback text a failure event carries.
TRACEBACK_LIMIT = 8000


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
    }
    if state.is_failed() or state.is_crashed():
        try:
            exc = state.result(raise_on_failure=False)
            text = format_failure(exc) if isinstance(exc, BaseException) else (state.message or "")
        except Exception as error:  # the result could not be read: say so, briefly
            text = f"{state.message or ''} ({type(error).__name__} reading the result)"
        message["traceback"] = text[-TRACEBACK_LIMIT:]
    return message


@dataclass
class _Counts:
    total: int = 0
    done: int = 0
    failed: int = 0


@dataclass
class TaskProgress:
    """What a run's tasks did so far, by task name (thread-safe).

    Parameters
    ----------
    on_first_finished
        Called once, when the first task reports its final state.
    """

    on_first_finished: Callable[[], None] | None = None
    topic: str = TOPIC
    by_name: dict[str, _Counts] = field(default_factory=dict)
    failures: list[tuple[str, str]] = field(default_factory=list)
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
        name = message.get("task", "?")
        with self._lock:
            first = not any(c.done for c in self.by_name.values())
            counts = self.by_name.setdefault(name, _Counts())
            counts.done += 1
            if message.get("state") in ("FAILED", "CRASHED"):
                counts.failed += 1
                self.failures.append((message.get("run", name), message.get("traceback", "")))
        if first and self.on_first_finished is not None:
            self.on_first_finished()
        self._changed.set()

    def snapshot(self) -> dict[str, tuple[int, int, int]]:
        """``name -> (done, total, failed)``."""
        with self._lock:
            return {name: (c.done, c.total, c.failed) for name, c in self.by_name.items()}

    def wait_changed(self, timeout: float) -> bool:
        changed = self._changed.wait(timeout)
        self._changed.clear()
        return changed


def summary_line(counts: dict[str, tuple[int, int, int]]) -> str:
    """``tasks 40/50 done, 1 failed (times_two 39/49, get_sum 1/1)``."""
    done = sum(c[0] for c in counts.values())
    total = sum(c[1] for c in counts.values())
    failed = sum(c[2] for c in counts.values())
    parts = ", ".join(f"{name} {d}/{t}" for name, (d, t, _) in counts.items())
    return f"tasks {done}/{total} done, {failed} failed" + (f" ({parts})" if len(counts) > 1 else "")


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
        self._thread.join(timeout=5)
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
        reported: dict[str, tuple[int, int, int]] = {}
        while not self._stop.wait(0.2):
            self._print_failures()
            if self.counts and time.monotonic() - last >= self.interval:
                counts = self.progress.snapshot()
                if counts and counts != reported:
                    self._write(f"{self.prefix}: {summary_line(counts)}")
                    reported = counts
                last = time.monotonic()

    def _run_live(self) -> None:
        from rich.console import Console
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
                for name, (done, total, failed) in self.progress.snapshot().items():
                    if name not in rows:
                        rows[name] = bar.add_task(name, total=total, failed=0)
                    bar.update(rows[name], completed=done, total=max(total, done), failed=failed)
                if self.progress.failures[self._shown_failures:]:
                    for run, text in self.progress.failures[self._shown_failures:TRACEBACKS_SHOWN]:
                        bar.console.print(self._failure_text(run, text), markup=False, highlight=False)
                    self._shown_failures = len(self.progress.failures)
