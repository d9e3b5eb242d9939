"""What docker-backend runs left behind, grouped by run (pure).

A run removes its containers and network on every way out its process sees. A process
killed with ``kill -9`` (or a machine that lost power) sees none, so the leftovers keep
their ``flowrig.run-id`` label; ``flowrig docker leftovers`` lists them by run and
removes them (:func:`flowrig.containers.engine.remove_run`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

from flowrig.containers.labels import LABEL_ROLE, LABEL_RUN_ID


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
        run_id = item_labels.get(LABEL_RUN_ID)
        if not run_id:
            continue
        names = item.get("Names") or [item.get("Id", "?")[:12]]
        entry = (names[0].lstrip("/"), item_labels.get(LABEL_ROLE, "?"), item.get("State", "?"))
        runs.setdefault(run_id, RunLeftovers(run_id)).containers.append(entry)
    for item in networks:
        run_id = (item.get("Labels") or {}).get(LABEL_RUN_ID)
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
