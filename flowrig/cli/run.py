"""``flowrig run``: one flow run on a fresh cluster (also the image's ``run`` role)."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer


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
        typer.Option("--backend", "-b", help="local | docker | ecs | fargate | package.module:ClusterClass."),
    ] = None,
    param: Annotated[
        Optional[list[str]],
        typer.Option("--param", "-p", help="k=v; v parses as JSON, else it is a string. Repeatable."),
    ] = None,
    params_file: Annotated[
        Optional[Path], typer.Option("--params-file", help="JSON object of parameters.")
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
        Output, typer.Option("--output", "-o", help="text, or json: one JSON line last on stdout.")
    ] = Output.text,
    timeout: Annotated[
        Optional[float],
        typer.Option(
            "--timeout",
            help="Seconds the whole run may take; then it ends, torn down, with exit 124. Overrides [run] timeout.",
        ),
    ] = None,
    verbose: Annotated[
        bool, typer.Option("--verbose", "-v", help="Also Dask's INFO lines and every task's own log lines.")
    ] = False,
    quiet: Annotated[
        bool, typer.Option("--quiet", "-q", help="Only errors (with the tracebacks of failed tasks).")
    ] = False,
) -> None:
    """Run one flow run on a fresh mutual-TLS Dask cluster sized from its parameters."""
    from flowrig.errors import BadInput
    from flowrig.run.console import Verbosity
    from flowrig.run.launch import RunInputs, default_project_dir, run_command

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
    )
    raise typer.Exit(run_command(inputs))
