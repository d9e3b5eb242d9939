"""``flowrig docker``: what docker-backend runs left behind (labelled flowrig.run-id)."""

from __future__ import annotations

import json
from dataclasses import asdict
from typing import Annotated, Optional

import typer

from flowrig.cli.apps import command_group

app = command_group(
    help="Containers and networks of docker-backend runs.",
)


@app.callback()
def docker() -> None:
    """Containers and networks of docker-backend runs (labelled flowrig.run-id)."""


@app.command("leftovers")
def leftovers(
    remove: Annotated[bool, typer.Option("--remove", help="Remove what is listed (running containers too).")] = False,
    run_id: Annotated[Optional[str], typer.Option("--run-id", help="Only this run.")] = None,
    output: Annotated[str, typer.Option("--output", "-o", help="text or json.")] = "text",
) -> None:
    """List containers and networks labelled flowrig.run-id, grouped by run."""
    from flowrig.backends.docker.leftovers import group_by_run, render_text
    from flowrig.containers.engine import connect, labelled, remove_run
    from flowrig.errors import BadInput

    if output not in ("text", "json"):
        raise BadInput(f"--output {output!r}: use text or json")
    client = connect()
    runs = group_by_run(*labelled(client))
    if run_id is not None:
        runs = [run for run in runs if run.run_id == run_id]
    if output == "json":
        print(json.dumps([asdict(run) for run in runs], sort_keys=True))
    else:
        print(render_text(runs))
    if remove:
        for run in runs:
            removed = remove_run(client, run.run_id)
            typer.echo(f"removed run {run.run_id}: {', '.join(removed) or 'nothing'}", err=True)
