"""What docker-backend runs left behind, grouped by run, live runs told apart (pure).

A run removes its containers and network on every way out its process sees. A process
killed with ``kill -9`` (or a machine that lost power) sees none, so the leftovers keep
their ``flowrig.run-id`` label; ``flowrig docker leftovers`` lists them by run and
removes them (:func:`flowrig.containers.engine.remove_run`).

A run whose process still runs is never a leftover: every container and network
carries its owner (:mod:`flowrig.containers.owner`), and :func:`judge` says a run is
live while that process runs. When the owner cannot be checked from this machine (it
ran elsewhere, or was made by a flowrig without owner labels), the run counts as live
while any of its containers runs: its scheduler stops by itself once its runner is
gone (``no_client_timeout``), and then it is a leftover.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping

from flowrig.containers.labels import LABEL_ROLE, LABEL_RUN_ID
from flowrig.containers.owner import LABEL_OWNER, Owner, parse

#: Container states that mean a process of the run still runs there.
RUNNING_STATES = frozenset({"running", "restarting", "paused"})


@dataclass
class RunLeftovers:
    """What one run has: containers as ``(name, role, state)``, network names, and the
    owner labels they carry."""

    run_id: str
    containers: list[tuple[str, str, str]] = field(default_factory=list)
    networks: list[str] = field(default_factory=list)
    owners: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Verdict:
    """Whether a run is live, and why in words."""

    live: bool
    why: str


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

    def run_of(item_labels: Mapping[str, str]) -> RunLeftovers:
        run = runs.setdefault(item_labels[LABEL_RUN_ID], RunLeftovers(item_labels[LABEL_RUN_ID]))
        owner = item_labels.get(LABEL_OWNER)
        if owner and owner not in run.owners:
            run.owners.append(owner)
        return run

    for item in containers:
        item_labels = item.get("Labels") or {}
        if not item_labels.get(LABEL_RUN_ID):
            continue
        names = item.get("Names") or [item.get("Id", "?")[:12]]
        entry = (names[0].lstrip("/"), item_labels.get(LABEL_ROLE, "?"), item.get("State", "?"))
        run_of(item_labels).containers.append(entry)
    for item in networks:
        item_labels = item.get("Labels") or {}
        if item_labels.get(LABEL_RUN_ID):
            run_of(item_labels).networks.append(item.get("Name", "?"))
    for run in runs.values():
        run.containers.sort(key=lambda c: (c[1], c[0]))
        run.networks.sort()
        run.owners.sort()
    return [runs[k] for k in sorted(runs)]


def judge(run: RunLeftovers, alive: Callable[[Owner], bool | None]) -> Verdict:
    """Whether ``run`` is live (never a leftover) or left behind.

    ``alive`` tells whether an owner process runs (``None``: cannot tell from here;
    :func:`flowrig.containers.owner.alive`).
    """
    owners = [owner for owner in map(parse, run.owners) if owner is not None]
    states = [(owner, alive(owner)) for owner in owners]
    for owner, state in states:
        if state:
            return Verdict(True, f"its {owner.describe()} runs")
    if states and all(state is False for _, state in states):
        return Verdict(False, f"its {' and '.join(o.describe() for o in owners)} has gone")
    running = [name for name, _, state in run.containers if state in RUNNING_STATES]
    unknown = " and ".join(o.describe() for o, state in states if state is None) or "its owner (not recorded)"
    if running:
        return Verdict(True, f"{unknown} cannot be checked from here and {len(running)} of its containers run")
    return Verdict(False, f"{unknown} cannot be checked from here, and nothing of it runs")


def render_text(runs: list[RunLeftovers], verdicts: Mapping[str, Verdict] | None = None) -> str:
    """Human listing: one block per run."""
    if not runs:
        return "no leftovers of docker-backend runs"
    lines: list[str] = []
    for run in runs:
        verdict = (verdicts or {}).get(run.run_id)
        lines.append(f"run {run.run_id}:" + (f" ({verdict.why})" if verdict else ""))
        lines += [f"  container {name} ({role}, {state})" for name, role, state in run.containers]
        lines += [f"  network {name}" for name in run.networks]
    return "\n".join(lines)


def render_json(runs: list[RunLeftovers], verdicts: Mapping[str, Verdict]) -> list[dict[str, Any]]:
    """The listing as JSON data: run id, containers, networks, and why it is left."""
    return [
        {
            "run_id": run.run_id,
            "containers": [list(c) for c in run.containers],
            "networks": list(run.networks),
            "why": verdicts[run.run_id].why,
        }
        for run in runs
    ]
