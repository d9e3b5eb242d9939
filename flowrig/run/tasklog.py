"""A task's own log lines, from the worker that ran it to the console of its run.

A task runs on a worker: a process of its own on the local backend, a container or a
cloud machine elsewhere, whose output no person watches. So the lines a person wants
from it travel as Dask worker events on the run's progress topic
(:data:`flowrig.run.progress.TOPIC`), the way task states do, and the runner prints
them: the same on every backend.

Which lines (:class:`TaskLines`): by default what the task's code logged at WARNING or
above (``get_run_logger().warning(...)``, ``.error``, ``.exception``) and what it
printed under ``log_prints=True``; with ``--verbose`` every line at INFO or above,
Prefect's own lines about each task included; with ``--quiet`` the code's ERROR lines.
Prefect's own lines about a task that failed are left out by default: the failure
report shows the failure with its traceback once.

On a worker, :meth:`TaskLogForwarding.install` adds one handler to Prefect's
``prefect.task_runs`` logger for the run's flow run while the run lasts; the lines it
takes no longer go to the worker's own stderr (on the local backend that is the
console too, which would show them twice).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable

#: Prefect's logger of task runs (``get_run_logger()`` inside a task).
TASK_RUNS_LOGGER = "prefect.task_runs"
#: Longest text one line carries (a traceback included).
LINE_LIMIT = 8000
#: The level no record reaches: "never".
NEVER = logging.CRITICAL + 1


def _prefect_dir() -> str:
    import prefect

    return os.path.dirname(prefect.__file__) + os.sep


@dataclass(frozen=True)
class TaskLines:
    """Which of a task's log records a person sees.

    Parameters
    ----------
    level
        The task's own records at this level or above.
    prints
        Also what the task printed under ``log_prints=True`` (logged at INFO).
    prefect_level
        Prefect's own records about the task (its engine's) at this level or above.
    api_level
        The level Prefect's API handler gets the task's records at (a Prefect server of
        the user's: Prefect's own default, INFO); only the logger's level depends on it.
    """

    level: int = logging.WARNING
    prints: bool = True
    prefect_level: int = NEVER
    api_level: int = NEVER

    @classmethod
    def for_verbosity(cls, verbosity: int, to_api: bool = False) -> "TaskLines":
        """``--quiet`` (0), default (1), ``--verbose`` (2); ``to_api``: the run reports to
        a Prefect server of the user's."""
        api_level = logging.INFO if to_api else NEVER
        if verbosity >= 2:
            return cls(logging.INFO, True, logging.INFO, api_level)
        if verbosity <= 0:
            return cls(logging.ERROR, False, NEVER, api_level)
        return cls(api_level=api_level)

    @property
    def logger_level(self) -> int:
        """The level the logger must let through for these records to be seen (or sent)."""
        return min(self.level, self.prefect_level, logging.INFO if self.prints else NEVER, self.api_level)

    def wants(self, record: logging.LogRecord, prefect_dir: str) -> bool:
        """Whether ``record`` is shown; call it while the record is being logged."""
        if record.pathname.startswith(prefect_dir):
            return record.levelno >= self.prefect_level
        if record.levelno >= self.level:
            return True
        if self.prints and record.levelno == logging.INFO:
            from flowrig.internals.prefect_prints import logged_by_print

            return logged_by_print()
        return False


class TaskLinesFilter(logging.Filter):
    """A :class:`TaskLines` rule as a logging filter (tasks the runner runs itself).

    ``task_runs_only``: a filter of a handler that other loggers' records reach too
    (the console's), which lets those through.
    """

    def __init__(self, lines: TaskLines, task_runs_only: bool = False) -> None:
        super().__init__()
        self.lines = lines
        self.task_runs_only = task_runs_only
        self._prefect_dir = _prefect_dir()

    def filter(self, record: logging.LogRecord) -> bool:
        if self.task_runs_only and not record.name.startswith(TASK_RUNS_LOGGER):
            return True
        return self.lines.wants(record, self._prefect_dir)


def line_message(record: logging.LogRecord) -> dict[str, Any]:
    """What travels for one record: level, time, task run and text (exception included)."""
    text = record.getMessage()
    if record.exc_info:
        text = f"{text}\n{logging.Formatter().formatException(record.exc_info)}"
    return {
        "level": record.levelname,
        "time": record.created,
        "task_run": str(getattr(record, "task_run_name", "") or getattr(record, "task_name", "") or "task"),
        "text": text[-LINE_LIMIT:],
    }


def format_line(line: dict[str, Any]) -> str:
    """A forwarded line as Prefect's console shows a task's lines."""
    when = line.get("time") or time.time()
    stamp = time.strftime("%H:%M:%S", time.localtime(when)) + f".{int(when % 1 * 1000):03d}"
    return f"{stamp} | {str(line.get('level', 'INFO')):<7} | Task run {line.get('task_run')!r} - {line.get('text', '')}"


class _Forwarder(logging.Handler):
    """The one handler of a worker process: sends each wanted record of a run to the
    topic of that run's runner."""

    def __init__(self) -> None:
        super().__init__()
        #: flow run id (text) -> (topic, lines, Dask worker)
        self.runs: dict[str, tuple[str, TaskLines, Any]] = {}
        self.prefect_dir = _prefect_dir()

    def emit(self, record: logging.LogRecord) -> None:
        run = self.runs.get(str(getattr(record, "flow_run_id", "")))
        if run is None and len(self.runs) == 1:
            # A record without its flow run (a logger made by hand): the one run here.
            run = next(iter(self.runs.values()))
        if run is None:
            return
        topic, lines, worker = run
        if not lines.wants(record, self.prefect_dir):
            return
        try:
            worker.log_event(topic, {"log": line_message(record)})
        except Exception:  # a line for a person never fails the task
            self.handleError(record)


_FORWARDER: _Forwarder | None = None
_SAVED: tuple[int, bool] | None = None
_LOCK = threading.Lock()


def _level_for(runs: dict[str, tuple[str, TaskLines, Any]]) -> int:
    return min(lines.logger_level for _, lines, _ in runs.values())


@dataclass(frozen=True)
class TaskLogForwarding:
    """What a run's workers do with their tasks' log lines (sent to them by value).

    Parameters
    ----------
    topic
        The Dask event topic the runner listens on.
    lines
        Which lines (:class:`TaskLines`).
    """

    topic: str
    lines: TaskLines

    def install(self, flow_run_id: Any) -> Callable[[], None]:
        """On a worker, in a task of the run: forward the run's lines from now on.

        Returns what undoes it, once the worker forgets the run.
        """
        from distributed import get_worker

        global _FORWARDER, _SAVED
        worker = get_worker()
        key = str(flow_run_id or "")
        logger = logging.getLogger(TASK_RUNS_LOGGER)
        with _LOCK:
            if _FORWARDER is None:
                _FORWARDER = _Forwarder()
                _SAVED = (logger.level, logger.propagate)
                logger.addHandler(_FORWARDER)
                # The runner prints what it is sent; the worker's own stderr (the
                # console itself on the local backend) would show it twice.
                logger.propagate = False
            _FORWARDER.runs[key] = (self.topic, self.lines, worker)
            logger.setLevel(_level_for(_FORWARDER.runs))

        def undo() -> None:
            global _FORWARDER, _SAVED
            with _LOCK:
                if _FORWARDER is None or _FORWARDER.runs.get(key, (None,))[0] != self.topic:
                    return
                del _FORWARDER.runs[key]
                if _FORWARDER.runs:
                    logger.setLevel(_level_for(_FORWARDER.runs))
                    return
                logger.removeHandler(_FORWARDER)
                _FORWARDER = None
                if _SAVED is not None:
                    logger.setLevel(_SAVED[0])
                    logger.propagate = _SAVED[1]
                    _SAVED = None

        return undo
