"""From a command line to a finished run: ``flowrig run`` and the image's ``run`` role.

A run's inputs travel one way: the command line (:class:`RunInputs`) ->
:func:`run_command`, which reads ``flowrig.toml`` once, resolves the backend once and
picks the front end: the run here (:func:`flowrig.run.prepared.prepare`, whose
:class:`~flowrig.run.prepared.PreparedRun` :func:`flowrig.run.execute` runs), or the
runner in a container of its own (:func:`flowrig.run.in_container.run_in_container`,
which takes the inputs whole; in that container this module runs again, as the run
here).
"""

from __future__ import annotations

import dataclasses
import os
import sys
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Mapping

from flowrig import layout
from flowrig.common.clock import STARTED_ENV, command_started
from flowrig.common.runid import RUN_ID_ENV
from flowrig.errors import BadInput, exit_status
from flowrig.project.defaults import BACKEND
from flowrig.run.config import RunRecord
from flowrig.run.console import Verbosity
from flowrig.run.report import OutcomeReport
from flowrig.run.timings import RunTimer

if TYPE_CHECKING:
    from flowrig.api import EmbeddedPrefectAPI
    from flowrig.backends import Backend
    from flowrig.common.deadline import RunDeadline
    from flowrig.project import Project


@dataclass(frozen=True)
class RunInputs:
    """What ``flowrig run`` was given on its command line.

    Parameters
    ----------
    project_dir
        The flow project (holds ``flowrig.toml``).
    params, params_file
        ``k=v`` items and a JSON file of parameters (see :mod:`flowrig.project.parameters`).
    backend
        Overrides ``[cluster] backend``.
    image
        Image of container backends; overrides ``[cluster] image``.
    certs
        Certificate directory; default: per-run certificates (or the image's own).
    scheduler_address
        A running ``tls://`` scheduler to use instead of starting a cluster.
    output
        ``text`` or ``json``.
    timeout
        Seconds the whole run may take; overrides ``[run] timeout``.
    verbosity
        How much the run says on stderr (:mod:`flowrig.run.console`).
    strict
        A flow that completed while tasks failed fails the run (exit 1); ``None``:
        ``[run] fail_on_task_failure``.
    given_parameters
        Parameters handed over by whoever started this runner (the docker backend's
        host process); every other source overrides them.
    """

    project_dir: Path
    params: tuple[str, ...] = ()
    params_file: Path | None = None
    backend: str | None = None
    image: str | None = None
    certs: Path | None = None
    scheduler_address: str | None = None
    output: str = "text"
    timeout: float | None = None
    verbosity: Verbosity = Verbosity.NORMAL
    strict: bool | None = None
    given_parameters: Mapping[str, Any] | None = None


def default_project_dir() -> Path:
    """The baked project in the image, else the current directory."""
    if layout.in_image() and layout.IMAGE_PROJECT_DIR.is_dir():
        return layout.IMAGE_PROJECT_DIR
    return Path.cwd()


@contextmanager
def reporting(output: str) -> Iterator[OutcomeReport]:
    """A command whose run's outcome is printed on every way out of the block.

    With ``--output json`` the last stdout line is the outcome also when the command
    ends with bad input, an infrastructure error, its timeout or a signal: what the run
    reached, its ``exit_code`` and ``error`` (:meth:`OutcomeReport.ended`). Its timings
    count from the command's start (:func:`flowrig.common.clock.command_started`).
    """
    report = OutcomeReport(output, RunRecord(RunTimer(command_started())))
    try:
        yield report
    except BaseException as exc:
        report.ended(*exit_status(exc))
        raise


@contextmanager
def _environment(values: Mapping[str, str]) -> Iterator[None]:
    """``values`` in this process's environment for the block, then as they were."""
    saved = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def run_command(inputs: RunInputs, report: OutcomeReport | None = None) -> int:
    """Run a project from a command line; returns the exit code (0, else raises).

    SIGTERM and Ctrl-C tear down and end the command as terminated; logs go to stderr,
    and the outcome is printed on every way out (JSON as the last stdout line; see
    :func:`reporting`, whose ``report`` a caller may pass when its own checks come
    first). The run's Prefect API starts first, so that its start-up overlaps with
    importing the flow. A run that takes longer than its timeout (``--timeout``, else
    ``[run] timeout``) is ended and torn down the same way.

    Raises
    ------
    flowrig.errors.FlowRunFailed
        When the flow run did not complete, or completed while tasks failed and the
        run is strict (exit 1).
    flowrig.errors.RunTimedOut
        When the run's timeout passed (exit 124).
    """
    from flowrig.common.deadline import run_deadline
    from flowrig.common.runid import current_run_id
    from flowrig.common.signals import terminating

    if report is None:
        with reporting(inputs.output) as report:
            return run_command(inputs, report)
    record = report.record
    record.run_id = record.run_id or current_run_id()
    started = record.timer.start_wall
    # Whatever this process starts for the run (the docker backend's runner container)
    # belongs to the same run and the same command.
    with _environment({RUN_ID_ENV: record.run_id, STARTED_ENV: repr(started)}):
        with run_deadline(started) as deadline, terminating(last_words=report.ended):
            return _run_command(inputs, deadline, report)


def _run_command(inputs: RunInputs, deadline: "RunDeadline", report: OutcomeReport) -> int:
    """Pick the run's front end: the runner in a container of its own (a backend whose
    ``runner_in_container`` says so, on a host), else the run here."""
    from flowrig.run.prepared import spawn_prefect_api

    if layout.in_image():
        from flowrig.backends.docker import control

        if control.controlled():
            # A runner container of the docker backend: its host sends the parameters.
            inputs = dataclasses.replace(inputs, given_parameters=control.take_run_inputs())
    directory = Path(inputs.project_dir)
    # The run's API process first: its imports take longest and need nothing else.
    spawned = spawn_prefect_api(_backend_hint(inputs, directory))
    try:
        return _front_end(inputs, directory, deadline, report, spawned)
    except BaseException:
        if spawned is not None:
            spawned.stop()  # a no-op once the run has stopped it itself
        raise


def _front_end(
    inputs: RunInputs, directory: Path, deadline: "RunDeadline", report: OutcomeReport,
    spawned: "EmbeddedPrefectAPI | None",
) -> int:
    from flowrig.run.prepared import backend_name, resolve_backend

    project, missing = _read_project(directory)
    name = report.record.backend = backend_name(inputs, project)
    deadline.arm(inputs.timeout if inputs.timeout is not None else (project.run.timeout if project else None))
    strict = inputs.strict if inputs.strict is not None else bool(project and project.run.fail_on_task_failure)
    backend = resolve_backend(name)
    if backend.runner_in_container and not layout.in_image():
        # The runner runs in a container of the image, which prints the outcome; the
        # host prints one only when the runner could not.
        from flowrig.run.in_container import run_in_container

        # The host's strictness reaches the runner only when it was decided here
        # (--strict/--no-strict, or the host's project asks for it); otherwise the
        # image's project decides.
        passed = inputs.strict if inputs.strict is not None else (True if strict else None)
        if spawned is not None:
            spawned.stop()
        with report.watching_stdout():
            return run_in_container(dataclasses.replace(inputs, strict=passed), project, deadline)
    if project is None:
        assert missing is not None
        raise missing
    return _run_here(inputs, project, backend, strict, report, spawned)


def _backend_hint(inputs: RunInputs, directory: Path) -> str | None:
    """The backend the run will most likely name, from the command line or a glance at
    ``flowrig.toml`` (plain TOML, nothing validated: :func:`_read_project` reads it for
    the run); ``None`` when it cannot tell."""
    import tomllib

    from flowrig.project.defaults import PROJECT_FILE

    if inputs.scheduler_address:
        return "address"
    if inputs.backend:
        return inputs.backend
    file = directory if directory.is_file() else directory / PROJECT_FILE
    try:
        cluster = tomllib.loads(file.read_text(encoding="utf-8")).get("cluster", {})
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
        return None
    backend = cluster.get("backend", BACKEND) if isinstance(cluster, dict) else None
    return backend if isinstance(backend, str) else None


def _read_project(directory: Path) -> "tuple[Project | None, BadInput | None]":
    """The one read of ``flowrig.toml`` for this run; when there is none, the reason,
    for a front end that needs one (a runner in a container brings the image's)."""
    from flowrig.project import load_project
    from flowrig.project.defaults import PROJECT_FILE

    try:
        return load_project(directory), None
    except BadInput as exc:
        if (directory / PROJECT_FILE).is_file() or directory.is_file():
            raise
        return None, exc


def _run_here(
    inputs: RunInputs,
    project: "Project",
    backend: "Backend",
    strict: bool,
    report: OutcomeReport,
    spawned: "EmbeddedPrefectAPI | None",
) -> int:
    """The run in this process: its inputs prepared once, then executed."""
    from flowrig.run import console
    from flowrig.run.execute import execute
    from flowrig.run.prepared import prepare

    run = prepare(inputs, project, backend, spawned)
    try:
        # After Prefect set up its logging, before any worker starts (they inherit it).
        console.configure(inputs.verbosity, to_api=run.api is None)
        # Still one thread: the local backend forks its fork server now, with all of
        # the flow's imports; only then may the API's readiness be watched in a thread.
        backend.prepare()
        if run.api is not None:
            run.api.watch()
    except BaseException:
        if run.api is not None:
            run.api.stop()
        raise
    watcher = console.Console(inputs.verbosity, sys.stderr, timeline=inputs.output != "json")
    outcome = execute(run, console=watcher, record=report.record)
    failure = outcome.conclude(strict)
    report.outcome(outcome)
    if failure is not None:
        raise failure
    return 0
