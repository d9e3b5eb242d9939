"""``flowrig run``: one flow run on a fresh cluster (also the image's ``run`` role)."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer

from flowrig.backends import backend_choices


class Output(str, Enum):
    text = "text"
    json = "json"


def run(
    project: Annotated[
        Optional[Path],
        typer.Argument(
            help="Flow project directory (holds flowrig.toml); default: the baked one in the image, else '.'."
        ),
    ] = None,
    backend: Annotated[
        Optional[str],
        typer.Option("--backend", "-b", help=f"{backend_choices()}; default: [cluster] backend, else local."),
    ] = None,
    param: Annotated[
        Optional[list[str]],
        typer.Option(
            "--param", "-p",
            help="k=v; v parses as JSON, else it is a string. Repeatable. Other users of this machine can "
            "read a command line: pass private values with --params-file or FLOWRIG_PARAMETERS.",
        ),
    ] = None,
    params_file: Annotated[
        Optional[Path],
        typer.Option("--params-file", help="JSON object of parameters, from a file or from standard input ('-')."),
    ] = None,
    image: Annotated[
        Optional[str], typer.Option("--image", help="Image for container backends.", envvar="FLOWRIG_IMAGE")
    ] = None,
    certs: Annotated[
        Optional[Path],
        typer.Option("--certs", help="Directory with ca.crt, tls.crt, tls.key; default: per-run certificates."),
    ] = None,
    scheduler_address: Annotated[
        Optional[str],
        typer.Option("--scheduler-address", help="Use a running tls:// scheduler instead of starting one."),
    ] = None,
    output: Annotated[
        Output,
        typer.Option(
            "--output", "-o", help="text, or json: the outcome as one JSON line, last on stdout, on every exit."
        ),
    ] = Output.text,
    timeout: Annotated[
        Optional[float],
        typer.Option(
            "--timeout",
            help="Seconds the whole run may take; then it ends, torn down, with exit 124. Overrides [run] timeout.",
        ),
    ] = None,
    verbose: Annotated[
        bool,
        typer.Option(
            "--verbose", "-v", help="Also Dask's INFO lines and every task's INFO lines, Prefect's own included."
        ),
    ] = False,
    quiet: Annotated[
        bool, typer.Option("--quiet", "-q", help="Only errors (with the tracebacks of failed tasks).")
    ] = False,
    strict: Annotated[
        Optional[bool],
        typer.Option(
            "--strict/--no-strict",
            help="A flow that completed while tasks failed fails the run (exit 1). Overrides [run] "
            "fail_on_task_failure.",
            envvar="FLOWRIG_STRICT",
            show_default=False,
        ),
    ] = None,
) -> None:
    # long: typer reads the command's options from this signature (67 lines, one per
    # option); the body only hands them to flowrig.run.launch (28 lines).
    """Run one flow run on a fresh mutual-TLS Dask cluster sized from its parameters.

    By default stderr shows flowrig's lines, Prefect's flow-level lines, what tasks log at
    WARNING or above or print under log_prints, failed tasks with their tracebacks, and
    the tasks' progress. Exit codes: 0 completed, 1 the flow failed, 2 bad input, 3
    infrastructure, 124 the run's timeout, 128+N a signal.
    """
    if param:
        # First, before any process starts: they would inherit the command line.
        _hide_param_values()
    from flowrig.errors import BadInput
    from flowrig.run.console import Verbosity
    from flowrig.run.launch import RunInputs, default_project_dir, reporting, run_command

    with reporting(output.value) as report:
        if verbose and quiet:
            raise BadInput("--verbose and --quiet contradict each other: pass one of them")
        if timeout is not None and not 0 < timeout < float("inf"):
            raise BadInput(f"--timeout must be a finite number of seconds greater than 0, got {timeout:g}")

        inputs = RunInputs(
            project_dir=project or default_project_dir(),
            params=tuple(param or ()),
            params_file=params_file,
            backend=backend,
            image=image,
            certs=certs,
            scheduler_address=scheduler_address,
            output=output.value,
            timeout=timeout,
            verbosity=Verbosity.VERBOSE if verbose else Verbosity.QUIET if quiet else Verbosity.NORMAL,
            strict=strict,
        )
        code = run_command(inputs, report)
    raise typer.Exit(code)


#: How ``--output json`` may be spelt on a command line.
_JSON_FLAGS = ("--output=json", "-ojson", "-o=json")


def asks_for_json(argv: list[str]) -> bool:
    """Whether the ``run`` command line ``argv`` asks for ``--output json``."""
    for flag, value in zip(argv, argv[1:] + [""]):
        if flag == "--":
            return False
        if flag in _JSON_FLAGS or (flag in ("--output", "-o") and value == "json"):
            return True
    return False


def usage_error_outcome(exc: BaseException, argv: list[str]) -> None:
    """A command line that ``run`` could not parse, with ``--output json`` among its
    arguments: the JSON outcome all the same (exit 2, the usage error as its error)."""
    ctx = getattr(exc, "ctx", None)
    command = getattr(getattr(ctx, "command", None), "name", None)
    if command != "run" or not asks_for_json(argv):
        return
    from flowrig.errors import EXIT_BAD_INPUT, one_line
    from flowrig.run.launch import reporting

    message = getattr(exc, "format_message", lambda: str(exc))()
    with reporting("json") as report:
        report.ended(EXIT_BAD_INPUT, one_line(message))


def _hide_param_values() -> None:
    import logging

    from flowrig.project.parameters import hide_param_values

    if not hide_param_values():
        logging.getLogger("flowrig").warning(
            "--param values stay readable in this command's command line (and in its local workers'): "
            "pass private values with --params-file or FLOWRIG_PARAMETERS instead"
        )
