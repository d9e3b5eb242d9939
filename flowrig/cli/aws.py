"""``flowrig aws``: what ``ecs``/``fargate`` runs left in AWS (tagged flowrig-run-id)."""

from __future__ import annotations

import json
from typing import Annotated, Optional

import typer

app = typer.Typer(
    help="AWS resources of ecs/fargate/ec2 runs.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


#: Largest --older-than (about 19 years): beyond it the time arithmetic overflows.
_MAX_MINUTES = 1e7


@app.callback()
def aws() -> None:
    """AWS resources of ecs/fargate/ec2 runs (tagged flowrig-run-id)."""


@app.command("leftovers")
def leftovers(
    older_than: Annotated[
        float,
        typer.Option(
            "--older-than",
            metavar="MIN",
            help="Only runs whose lease expired (or, without a lease, that were created) more than MIN "
            "minutes ago (default 10: two leases, so that a live run whose renewals failed for a "
            "while is not taken for a killed one).",
        ),
    ] = 10.0,
    remove: Annotated[bool, typer.Option("--remove", help="Remove what is listed, in dependency order.")] = False,
    run_id: Annotated[Optional[str], typer.Option("--run-id", help="Only this run.")] = None,
    region: Annotated[
        Optional[str], typer.Option("--region", help="AWS region; default: AWS_REGION or the profile's.")
    ] = None,
    output: Annotated[str, typer.Option("--output", "-o", help="text or json.")] = "text",
) -> None:
    """List the AWS resources of ecs/fargate/ec2 runs that are over, grouped by run.

    A run is over when its lease (renewed by its runner while it lives) expired, or,
    for a run without a lease, when it was created, more than --older-than minutes ago.
    """
    from datetime import datetime, timedelta, timezone

    from flowrig.backends.ecs import aws as aws_calls
    from flowrig.backends.ecs.defaults import CLEANUP_TIMEOUT
    from flowrig.backends.ecs.leftovers import group_by_run, render_text, to_json
    from flowrig.backends.ecs.sweep import Remover, find
    from flowrig.errors import BadInput, InfrastructureError

    if output not in ("text", "json"):
        raise BadInput(f"--output {output!r}: use text or json")
    if not 0 <= older_than < _MAX_MINUTES:
        raise BadInput(f"--older-than {older_than:g}: give minutes >= 0 (and less than {_MAX_MINUTES:g})")
    session = aws_calls.session(region)
    runs = group_by_run(find(session), datetime.now(timezone.utc), timedelta(minutes=older_than))
    runs = [run for run in runs if run.over and (run_id is None or run.run_id == run_id)]
    if output == "json":
        print(json.dumps(to_json(runs), sort_keys=True))
    else:
        print(render_text(runs))
    if not remove:
        return
    remover = Remover(session, CLEANUP_TIMEOUT)
    failures: list[str] = []
    for run in runs:
        removed, failed = remover.remove(run)
        kept = f"; not removed: {', '.join(what for what, _ in failed)}" if failed else ""
        typer.echo(f"removed run {run.run_id}: {', '.join(removed) or 'nothing'}{kept}", err=True)
        failures.extend(f"run {run.run_id} {what}: {why}" for what, why in failed)
    if failures:
        more = f" (and {len(failures) - 1} more, named above)" if len(failures) > 1 else ""
        raise InfrastructureError(f"could not remove {failures[0]}{more}; run the command again")
