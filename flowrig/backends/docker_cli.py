"""``flowrig docker``: what docker-backend runs left behind.

A run removes its containers and network on every way out its process sees. A process
killed with ``kill -9`` (or a machine that lost power) sees none, so the leftovers keep
their ``flowrig.run-id`` label: ``flowrig docker leftovers`` lists them by run and
``--remove`` removes them.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Annotated, Any, Iterable, Mapping, Optional

import typer

from flowrig import defaults

app = typer.Typer(
    help="Containers and networks of docker-backend runs.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.callback()
def docker() -> None:
    """Containers and networks of docker-backend runs (labelled flowrig.run-id)."""


@dataclass
class RunLeftovers:
    """What one run left: containers as ``(name, role, state)`` and network names."""

    run_id: str
    containers: list[tuple[str, str, str]] = field(default_factory=list)
    networks: list[str] = field(default_factory=list)


def group_by_run(containers: Iterable[Mapping[str, Any]], networks: Iterable[Mapping[str, Any]]) -> list[RunLeftovers]:
    """Group Docker API listings (``GET /containers/json``, ``GET /networks``) by run id.

    Parameters
    ----------
    containers
        Items with ``Names`` (``["/name"]``), ``Labels`` and ``State``.
    networks
        Items with ``Name`` and ``Labels``.

    Returns
    -------
    list of RunLeftovers
        Sorted by run id; containers sorted by role and name. Items without the run
        label are ignored.
    """
    runs: dict[str, RunLeftovers] = {}
    for item in containers:
        item_labels = item.get("Labels") or {}
        run_id = item_labels.get(defaults.DOCKER_LABEL_RUN_ID)
        if not run_id:
            continue
        names = item.get("Names") or [item.get("Id", "?")[:12]]
        entry = (names[0].lstrip("/"), item_labels.get(defaults.DOCKER_LABEL_ROLE, "?"), item.get("State", "?"))
        runs.setdefault(run_id, RunLeftovers(run_id)).containers.append(entry)
    for item in networks:
        run_id = (item.get("Labels") or {}).get(defaults.DOCKER_LABEL_RUN_ID)
        if run_id:
            runs.setdefault(run_id, RunLeftovers(run_id)).networks.append(item.get("Name", "?"))
    for run in runs.values():
        run.containers.sort(key=lambda c: (c[1], c[0]))
        run.networks.sort()
    return [runs[k] for k in sorted(runs)]


def render_text(runs: list[RunLeftovers]) -> str:
    """Human listing: one block per run."""
    if not runs:
        return "no leftovers of docker-backend runs"
    lines: list[str] = []
    for run in runs:
        lines.append(f"run {run.run_id}:")
        lines += [f"  container {name} ({role}, {state})" for name, role, state in run.containers]
        lines += [f"  network {name}" for name in run.networks]
    return "\n".join(lines)


def _listings(client: Any) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    label = {"label": defaults.DOCKER_LABEL_RUN_ID}
    return client.api.containers(all=True, filters=label), client.api.networks(filters=label)


@app.command("leftovers")
def leftovers(
    remove: Annotated[bool, typer.Option("--remove", help="Remove what is listed (running containers too).")] = False,
    run_id: Annotated[Optional[str], typer.Option("--run-id", help="Only this run.")] = None,
    output: Annotated[str, typer.Option("--output", "-o", help="text or json.")] = "text",
) -> None:
    """List containers and networks labelled flowrig.run-id, grouped by run."""
    from flowrig.backends.docker import connect, remove_run
    from flowrig.errors import BadInput

    if output not in ("text", "json"):
        raise BadInput(f"--output {output!r}: use text or json")
    client = connect()
    runs = group_by_run(*_listings(client))
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
