"""``flowrig local``: what local runs left on this machine (:mod:`flowrig.common.runfolders`)."""

from __future__ import annotations

import json
import time
from dataclasses import asdict
from typing import TYPE_CHECKING, Annotated

import typer

from flowrig.cli.apps import command_group

if TYPE_CHECKING:
    from flowrig.common.runfolders import Leftover

app = command_group(help="Folders of local runs on this machine.")


@app.callback()
def local() -> None:
    """Folders of local runs on this machine (a run's Prefect database and CA file, its
    workers' scratch space)."""


def render_text(found: "list[Leftover]", now: float) -> str:
    """One line per folder: path, kind, run, age and size."""
    if not found:
        return "no leftovers of local runs"
    lines = []
    for left in found:
        age = f"{(now - left.created) / 60:.0f} min old" if left.created is not None else "age unknown"
        run = f"run {left.run_id}" if left.run_id else "run unknown"
        lines.append(f"{left.path} ({left.kind}, {run}, {age}, {left.size / 1e6:.1f} MB)")
    return "\n".join(lines)


@app.command("leftovers")
def leftovers(
    remove: Annotated[bool, typer.Option("--remove", help="Delete what is listed.")] = False,
    output: Annotated[str, typer.Option("--output", "-o", help="text or json.")] = "text",
) -> None:
    """List the folders of local runs whose processes are all gone (killed with kill -9,
    by the OOM killer, a lost machine), which their runs could not remove.

    A folder is a run's while any process of the run holds its lock file open: a live
    run's folders are never listed, nor removed.
    """
    from flowrig.common import runfolders
    from flowrig.errors import BadInput

    if output not in ("text", "json"):
        raise BadInput(f"--output {output!r}: use text or json")
    found = runfolders.leftovers()
    if output == "json":
        print(json.dumps([asdict(left) for left in found], sort_keys=True))
    else:
        print(render_text(found, time.time()))
    if remove:
        for left in found:
            removed = runfolders.remove_leftover(left.path)
            typer.echo(f"{'removed' if removed else 'kept (in use again or gone)'} {left.path}", err=True)
