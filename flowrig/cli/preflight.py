"""``flowrig preflight``: check what a project's run needs before anything is created."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from flowrig.backends import backend_choices
from flowrig.cli.run import Output


def preflight_command(
    project: Annotated[
        Path, typer.Argument(help="Flow project directory (holds flowrig.toml).")
    ] = Path("."),
    backend: Annotated[
        Optional[str],
        typer.Option("--backend", "-b", help=f"{backend_choices()}; default: [cluster] backend, else local."),
    ] = None,
    image: Annotated[
        Optional[str], typer.Option("--image", help="Image of the run; default: [cluster] image.",
                                    envvar="FLOWRIG_IMAGE")
    ] = None,
    output: Annotated[
        Output, typer.Option("--output", "-o", help="text, or json: the report as one JSON object on stdout.")
    ] = Output.text,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Also list the checks that passed.")] = False,
) -> None:
    """Check, with read-only calls, what a run of PROJECT needs from its backend: the
    image in its registry and of the run's architecture, each subnet's way to the
    registry and the services the run calls, the security groups, the runner's rights,
    and the quotas for the run's largest size. Nothing is created.

    One line per failed check, naming the fix. Exit codes: 0 ready, 2 a check failed
    (or bad input), 3 the cloud did not answer.
    """
    from flowrig.errors import EXIT_BAD_INPUT
    from flowrig.run.preflight import preflight, render_json, render_text

    report = preflight(project, backend, image)
    typer.echo(render_json(report) if output == Output.json else render_text(report, passed=verbose))
    raise typer.Exit(0 if report.ok else EXIT_BAD_INPUT)
