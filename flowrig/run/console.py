"""What a run prints on stderr, for a person: by verbosity, and its start-up timeline.

Default (text): flowrig's own lines, Prefect's flow-level lines, what the tasks logged
at WARNING or above and printed under ``log_prints`` (:mod:`flowrig.run.tasklog`),
failed tasks with their tracebacks and one progress display
(:mod:`flowrig.run.progress`). ``--verbose`` adds Dask's INFO lines and every task's
INFO lines, Prefect's own included; ``--quiet`` keeps errors only. The levels are set
in processes flowrig owns (the ``flowrig run`` command and the workers it starts),
never by :func:`flowrig.run.execute` in a caller's process.
"""

from __future__ import annotations

import enum
import logging
import os
import sys
from typing import TextIO

from flowrig.run import heartbeat_lines
from flowrig.run.tasklog import TaskLines, TaskLinesFilter, TaskLogForwarding
from flowrig.run.timings import TIMELINE, timeline_line

__all__ = ["TIMELINE", "Console", "Verbosity", "configure", "timeline_line", "worker_environment"]


class Verbosity(enum.IntEnum):
    """How much a run says on stderr."""

    QUIET = 0
    NORMAL = 1
    VERBOSE = 2


def _levels(verbosity: Verbosity) -> dict[str, int]:
    """Logger levels of a run's processes."""
    quiet, normal = verbosity == Verbosity.QUIET, verbosity == Verbosity.NORMAL
    return {
        # Dask's start-up and teardown chatter: dozens of lines per worker.
        "distributed": logging.INFO if verbosity == Verbosity.VERBOSE else logging.WARNING,
        # Task runs: on workers their lines travel to the runner (tasklog); the workers'
        # own stderr shows none of them. Tasks the runner runs itself: see configure().
        "prefect.task_runs": logging.CRITICAL if not verbosity == Verbosity.VERBOSE else logging.INFO,
        # prefect-dask's "connecting to the cluster" lines: flowrig says where it is.
        "prefect.task_runner": logging.INFO if verbosity == Verbosity.VERBOSE else logging.WARNING,
        # Flow-level lines (beginning, final state).
        "prefect.flow_runs": logging.ERROR if quiet else logging.INFO,
        "flowrig": logging.ERROR if quiet else (logging.INFO if normal else logging.DEBUG),
    }


def worker_environment(verbosity: Verbosity, to_api: bool = False) -> dict[str, str]:
    """Environment that gives workers in containers the same levels (read at start-up);
    ``to_api``: see :func:`configure`."""
    levels = _levels(verbosity)
    # A server of the user's gets task runs' lines at Prefect's own level.
    task_runs = min(levels["prefect.task_runs"], logging.INFO) if to_api else levels["prefect.task_runs"]
    return {
        "DASK_LOGGING__DISTRIBUTED": logging.getLevelName(levels["distributed"]).lower(),
        "PREFECT_LOGGING_LOGGERS_PREFECT_TASK_RUNS_LEVEL": logging.getLevelName(task_runs),
    }


def base_worker_environment(run_id: str, verbosity: Verbosity | None, to_api: bool = False) -> dict[str, str]:
    """What every run's workers get before its Prefect API's settings: the run's id,
    Prefect's analytics off, and the log levels of ``verbosity`` (none: the roles' own;
    ``to_api``: see :func:`configure`).

    ``flowrig vm cloud-init`` shows the same in a worker's user data.
    """
    return {
        "FLOWRIG_RUN_ID": run_id,
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        **(worker_environment(verbosity, to_api) if verbosity is not None else {}),
    }


def configure(verbosity: Verbosity, to_api: bool = False) -> None:
    """Set the run's levels in this process (after Prefect configured its logging).

    Local workers fork from this process (or from a server started with its
    environment), so they start with the same levels. ``to_api``: the run reports to a
    Prefect server of the user's, which gets every task run's lines as Prefect sends
    them; the console still shows the lines of ``verbosity`` only.
    """
    for name, level in _levels(verbosity).items():
        logging.getLogger(name).setLevel(level)
    # A task the flow calls directly runs here: its lines are chosen by the same rule.
    lines = TaskLines.for_verbosity(verbosity, to_api)
    task_runs = logging.getLogger("prefect.task_runs")
    task_runs.setLevel(lines.logger_level)
    for holder in (task_runs, *logging.getLogger().handlers):
        for old in [f for f in holder.filters if isinstance(f, TaskLinesFilter)]:
            holder.removeFilter(old)
    if to_api:
        # The rule picks what the console shows, not what Prefect's API handler gets.
        for handler in logging.getLogger().handlers:
            handler.addFilter(TaskLinesFilter(lines, task_runs_only=True))
    else:
        task_runs.addFilter(TaskLinesFilter(lines))
    os.environ.update(worker_environment(verbosity, to_api))
    heartbeat_lines.install()
    if not logging.getLogger("flowrig").handlers and not logging.getLogger().handlers:
        logging.basicConfig(stream=sys.stderr, format="%(message)s")


class Console:
    """flowrig's own lines of a run, on stderr.

    Parameters
    ----------
    verbosity
        What to say.
    stream
        Where (stderr).
    timeline
        End with the start-up timeline line (text output; JSON has it in ``timings``).
    """

    def __init__(
        self, verbosity: Verbosity = Verbosity.NORMAL, stream: TextIO | None = None, *, timeline: bool = True
    ) -> None:
        self.verbosity = verbosity
        self.stream = stream or sys.stderr
        self.timeline = timeline

    def line(self, text: str) -> None:
        """A line a person wants by default (not with ``--quiet``)."""
        if self.verbosity >= Verbosity.NORMAL:
            self.stream.write(text + "\n")
            self.stream.flush()

    @property
    def shows_progress(self) -> bool:
        return self.verbosity >= Verbosity.NORMAL

    def task_logs(self, to_api: bool = False) -> TaskLogForwarding:
        """What the run's workers send of their tasks' log lines, for this console;
        ``to_api``: and what they keep for a Prefect server of the user's."""
        from flowrig.run.progress import TOPIC

        return TaskLogForwarding(TOPIC, TaskLines.for_verbosity(int(self.verbosity), to_api))
