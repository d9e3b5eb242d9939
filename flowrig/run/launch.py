"""From a command line to a finished run: ``flowrig run`` and the image's ``run`` role.

The run's parameters travel one way: the command line (:class:`RunInputs`) ->
:func:`run_command`, which reads ``flowrig.toml`` once and resolves the backend once ->
:func:`config_from_project` -> :func:`flowrig.run.execute` -> the flow.
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
from flowrig.errors import exit_status
from flowrig.run.config import RunConfig, RunRecord
from flowrig.run.console import Verbosity
from flowrig.run.report import OutcomeReport
from flowrig.run.timings import RunTimer

#: Set (to ``1``) for a strict run (``--strict``): the docker backend's runner container
#: gets it from its host.
STRICT_ENV = "FLOWRIG_STRICT"

if TYPE_CHECKING:
    from flowrig.backends import Backend
    from flowrig.certs import TLSMaterial
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


def config_from_project(
    project: "Project", inputs: RunInputs, backend: "Backend", tls: "TLSMaterial | None" = None
) -> RunConfig:
    """Load the flow, hook, parameters and certificates of a run into a :class:`RunConfig`.

    A container a Prefect worker started for a flow run (``PREFECT__FLOW_RUN_ID`` set)
    reads that flow run's parameters from the API, and refuses (marking it Failed) a
    flow run of another flow (:mod:`flowrig.run.flow_runs`).

    Raises
    ------
    BadInput
        For a missing or invalid flow, sizing hook, parameters or certificates, or a
        flow run of another flow.
    """
    from flowrig.project import flow_loader
    from flowrig.project import parameters as params_mod

    flow_run_id = os.environ.get("PREFECT__FLOW_RUN_ID")
    flow = flow_loader.load_flow(project.flow_path, project.flow_function)
    raw = {**(inputs.given_parameters or {}), **params_mod.gather(inputs.params, inputs.params_file)}
    if flow_run_id:
        from flowrig.run import flow_runs

        request = flow_runs.read_flow_run(flow_run_id)
        flow_runs.refuse_other_flow(request, flow.name, project.flow)
        raw = {**request.parameters, **raw}
    cluster = project.cluster
    hook = None
    if cluster.sizing:
        path, _, name = cluster.sizing.rpartition(":")
        hook = flow_loader.load_function(project.root / path, name, "sizing hook")
    if tls is None and inputs.certs is not None:
        from flowrig.certs import TLSMaterial

        tls = TLSMaterial.from_dir(inputs.certs)
    options = {"address": inputs.scheduler_address} if inputs.scheduler_address else dict(cluster.options)
    return RunConfig(
        flow=flow,
        parameters=raw,
        backend=backend,
        n_workers=cluster.n_workers,
        adapt=(cluster.adapt.minimum, cluster.adapt.maximum) if cluster.adapt else None,
        min_workers=cluster.min_workers,
        max_workers=cluster.max_workers,
        sizing_hook=hook,
        sizing_hook_name=cluster.sizing or "sizing hook",
        options=options,
        tls=tls,
        image=inputs.image or cluster.image or os.environ.get("FLOWRIG_IMAGE"),
        worker_threads=cluster.worker_threads,
        no_client_timeout=cluster.no_client_timeout,
        flow_run_id=flow_run_id,
        allow_environment=tuple(project.build.allow_environment),
    )


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
    from flowrig.backends import get_backend
    from flowrig.common.startup_gc import collector_paused
    from flowrig.internals.prefect_engine import import_flow_engine
    from flowrig.project import load_project
    from flowrig.project.defaults import BACKEND, PROJECT_FILE
    from flowrig.run import console
    from flowrig.run.execute import execute, run_certificates, start_prefect_api

    if layout.in_image():
        from flowrig.backends.docker import control

        if control.controlled():
            # A runner container of the docker backend: its host sends the parameters.
            inputs = dataclasses.replace(inputs, given_parameters=control.take_run_inputs())
    directory = Path(inputs.project_dir)
    # The one read of flowrig.toml for this run.
    project = load_project(directory) if (directory / PROJECT_FILE).is_file() or directory.is_file() else None
    name = "address" if inputs.scheduler_address else (
        inputs.backend or (project.cluster.backend if project else BACKEND)
    )
    report.record.backend = name
    deadline.arm(inputs.timeout if inputs.timeout is not None else (project.run.timeout if project else None))
    strict = inputs.strict if inputs.strict is not None else bool(project and project.run.fail_on_task_failure)
    if name == "docker" and not layout.in_image():
        # On the host, the docker backend runs the runner itself in a container, which
        # prints the outcome; the host prints one only when the runner could not.
        from flowrig.run.in_container import run_in_container

        with report.watching_stdout(), _environment({STRICT_ENV: "1"} if strict else {}):
            return run_in_container(
                directory, project=project, image=inputs.image, params=inputs.params,
                params_file=inputs.params_file, output=inputs.output, verbosity=inputs.verbosity.name.lower(),
                timeout=inputs.timeout, deadline=deadline,
            )
    if project is None:
        load_project(directory)  # raises the one-line reason
    assert project is not None
    backend = get_backend(name)
    given = None
    if inputs.certs is not None:
        from flowrig.certs import TLSMaterial

        given = TLSMaterial.from_dir(inputs.certs)
    options = {"address": inputs.scheduler_address} if inputs.scheduler_address else project.cluster.options
    tls = run_certificates(backend, given, options)
    api = start_prefect_api(backend, tls)
    try:
        if name == "local" and not layout.in_image():
            # Local workers are forked from this interpreter: a requirement it lacks would
            # fail a task only once the cluster is up (an image installed them at build).
            # Checked while the API starts, off its path; a refusal stops it below.
            from flowrig.project.requirements import check_environment

            check_environment(project)
        # Loading the flow imports Prefect: a start-up phase of a process flowrig owns.
        with collector_paused():
            config = config_from_project(project, inputs, backend, tls)
            import_flow_engine()
        # After Prefect set up its logging, before any worker starts (they inherit it).
        console.configure(inputs.verbosity, to_api=api is None)
        # Still one thread: the local backend forks its fork server now, with all of
        # the flow's imports; only then may the API's readiness be watched in a thread.
        backend.prepare()
        if api is not None:
            api.watch()
    except BaseException:
        if api is not None:
            api.stop()
        raise
    watcher = console.Console(inputs.verbosity, sys.stderr, timeline=inputs.output != "json")
    outcome = execute(config, api=api, console=watcher, record=report.record)
    failure = outcome.conclude(strict)
    report.outcome(outcome)
    if failure is not None:
        raise failure
    return 0
