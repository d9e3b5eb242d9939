"""``flowrig docker``: what docker-backend runs left behind (labelled flowrig.run-id)."""

from __future__ import annotations

import json
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
    remove: Annotated[
        bool, typer.Option("--remove", help="Remove what is listed (running containers of a gone run too).")
    ] = False,
    run_id: Annotated[Optional[str], typer.Option("--run-id", help="Only this run.")] = None,
    output: Annotated[str, typer.Option("--output", "-o", help="text or json.")] = "text",
) -> None:
    """List containers and networks of runs whose flowrig process has gone, grouped by run.

    A run whose flowrig process still runs is never listed or removed.
    """
    from flowrig.backends.docker.leftovers import group_by_run, judge, render_json, render_text
    from flowrig.containers.engine import connect, labelled, remove_run
    from flowrig.containers.owner import alive
    from flowrig.errors import BadInput

    if output not in ("text", "json"):
        raise BadInput(f"--output {output!r}: use text or json")
    client = connect()
    runs = group_by_run(*labelled(client))
    if run_id is not None:
        runs = [run for run in runs if run.run_id == run_id]
    verdicts = {run.run_id: judge(run, alive) for run in runs}
    left = [run for run in runs if not verdicts[run.run_id].live]
    live = [run for run in runs if verdicts[run.run_id].live]
    if run_id is not None and live and remove:
        raise BadInput(
            f"run {run_id} is live ({verdicts[run_id].why}): nothing is removed; stop it with Ctrl-C where it "
            "runs, or SIGTERM to its flowrig process"
        )
    if output == "json":
        print(json.dumps(render_json(left, verdicts), sort_keys=True))
    else:
        print(render_text(left, verdicts))
    for run in live:
        typer.echo(f"not listed: run {run.run_id} is live ({verdicts[run.run_id].why})", err=True)
    if remove:
        for run in left:
            removed = remove_run(client, run.run_id)
            typer.echo(f"removed run {run.run_id}: {', '.join(removed) or 'nothing'}", err=True)
