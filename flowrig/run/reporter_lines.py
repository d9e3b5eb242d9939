"""What a run tells a Prefect server of the user's, as data (pure: no client, no thread):
its lines and their kinds, the lines one send carries, and the artifact's markdown.

:mod:`flowrig.run.reporter` sends them (see there for what is told, and when).
"""

from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass, field
from typing import Any, Mapping

from flowrig.run.timings import TIMELINE

#: Lines (and events) of one kind sent one by one per interval; the rest are counted.
PER_KIND = 10
#: Names a summary line lists at most.
SUMMARY_NAMES = 20
#: Rows of the cluster's size over time, at most (the rest are merged by second).
SIZE_ROWS = 100

#: Event of each kind of line: ``flowrig.`` and the kind.
KINDS = (
    "cluster.asked", "cluster.started", "cluster.start-failed",
    "worker.started", "worker.joined", "worker.lost", "worker.replaced", "worker.retired", "run.usage",
)
_LEVELS = {"cluster.start-failed": logging.ERROR, "worker.lost": logging.WARNING}
#: What a summary line says of the items of each kind it counts.
_SUMMARY = {
    "worker.started": "more workers started", "worker.joined": "more workers joined",
    "worker.lost": "more workers lost", "worker.replaced": "more workers replaced",
    "worker.retired": "more workers retired",
}


@dataclass(frozen=True)
class Told:
    """One line of the run's Dask side, and its event."""

    kind: str
    message: str
    at: float
    worker: str | None = None
    payload: Mapping[str, Any] = field(default_factory=dict)

    @property
    def level(self) -> int:
        return _LEVELS.get(self.kind, logging.INFO)


@dataclass(frozen=True)
class Size:
    """The cluster's size after one change."""

    at: float
    joined: int
    change: str


def batch(pending: list[Told], dropped: Mapping[str, int] | None = None) -> list[Told]:
    """The lines one send carries: per kind, the first :data:`PER_KIND` as they are, the
    rest (and those ``dropped`` unkept) as one line that counts them."""
    by_kind: dict[str, list[Told]] = {}
    for told in pending:
        by_kind.setdefault(told.kind, []).append(told)
    lines: list[Told] = []
    for kind in sorted(set(by_kind) | set(dropped or {}), key=lambda k: KINDS.index(k) if k in KINDS else 99):
        items = by_kind.get(kind, [])
        lines.extend(items[:PER_KIND])
        rest = items[PER_KIND:]
        unkept = (dropped or {}).get(kind, 0)
        if rest or unkept:
            count = len(rest) + unkept
            names = [t.worker for t in rest if t.worker is not None]
            shown = ", ".join(names[:SUMMARY_NAMES]) + (", ..." if len(names) > SUMMARY_NAMES else "")
            what = _SUMMARY.get(kind, f"more {kind} lines")
            message = f"... and {count} {what}" + (f": {shown}" if shown else "")
            last = rest[-1].at if rest else time.time()
            lines.append(Told(kind, message, last, None, {"count": count, "workers": names[:200]}))
    return lines


def artifact_key(flow_name: str) -> str:
    """The artifact's key: one per flow, so that its runs' artifacts line up in the UI."""
    slug = re.sub(r"[^a-z0-9]+", "-", flow_name.lower()).strip("-") or "flow"
    return f"flowrig-{slug}"[:100]


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def render_artifact(run_id: str, backend: str, timeline: Mapping[str, float | None], sizes: list[Size],
                    since: float, usage: Any = None) -> str:
    """The artifact's markdown: the timeline's marks, the cluster's size over time, and
    what the run used (a :class:`~flowrig.backends.usage.Usage`, when known)."""
    rows = [f"## flowrig run {run_id} on {backend}", "", "### Start-up timeline", "",
            "| mark | seconds since the run started |", "|---|---:|"]
    rows += [f"| {label} | {_seconds(timeline.get(key))} |" for key, label in TIMELINE]
    rows += ["", "### Workers joined over time", ""]
    if not sizes:
        rows.append("No worker news: this backend's cluster is not watched, or no worker joined.")
        return "\n".join(rows + _usage_rows(usage)) + "\n"
    rows += ["| seconds since the run started | workers joined | what changed |", "|---:|---:|---|"]
    entries = [(s.at - since, s.joined, s.change.replace("|", "\\|")) for s in sizes]
    if len(entries) > SIZE_ROWS:
        merged: dict[int, tuple[float, int, list[str]]] = {}
        for at, joined, change in entries:
            second = int(at)
            _, _, changes = merged.get(second, (at, joined, []))
            merged[second] = (at, joined, changes + [change])
        entries = [(at, joined, f"{len(changes)} changes, the last: {changes[-1]}" if len(changes) > 1 else changes[0])
                   for at, joined, changes in merged.values()]
        entries = entries[:SIZE_ROWS - 1] + ([entries[-1]] if len(entries) >= SIZE_ROWS else [])
    rows += [f"| {at:.2f} | {joined} | {change} |" for at, joined, change in entries]
    return "\n".join(rows + _usage_rows(usage)) + "\n"


def _usage_rows(usage: Any) -> list[str]:
    """The artifact's table of what the run used, per role."""
    if usage is None:
        return []
    from flowrig.backends.usage import cost_words

    rows = ["", "### What the run used", "",
            "| role | count | seconds | vCPU-s | GB-s | GPU-s | spot | est. cost |",
            "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for key, role in usage.roles.items():
        cost = "no price" if role.estimated_cost is None else f"{role.estimated_cost:.4f} {usage.currency}"
        rows.append(f"| {key} | {role.count} | {role.seconds:.1f} | {role.vcpu_seconds:.0f} | {role.gb_seconds:.0f} "
                    f"| {role.gpu_seconds:.0f} | {role.spot_share:.0%} | {cost} |")
    return [*rows, "", cost_words(usage)]
