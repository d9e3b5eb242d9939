"""What ``ecs``/``fargate``/``ec2`` runs left in AWS, grouped by run and judged over or not (pure).

A run deletes its resources on every way out its process sees; a runner killed with
``kill -9`` (or by ECS, or by the OOM killer) sees none, and its resources keep the
``flowrig-run-id`` tag. :mod:`flowrig.backends.aws.sweep` finds them in AWS; this
module groups them by run, decides which runs are over (:func:`judge`) and renders
the listing. A run is over when its lease (:mod:`flowrig.backends.aws.lease`) expired
more than ``older_than`` ago; a run without any lease (made by an older flowrig) when
its newest resource was created more than ``older_than`` ago.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Iterable, Mapping

from flowrig.backends.aws.lease import format_time, lease_until

#: Kinds of resources, in the order a run's are removed: tasks and instances hold network
#: interfaces in the security group and tasks run in the cluster, task definitions name
#: the log group and the roles, the secret is read with the execution or instance role
#: until tasks and instances are gone, and a role goes once no instance profile holds it.
REMOVAL_ORDER = (
    "task", "instance", "task-definition", "log-group", "security-group", "cluster", "secret",
    "instance-profile", "role",
)


@dataclass(frozen=True)
class Resource:
    """One AWS resource of a run.

    Parameters
    ----------
    kind
        One of :data:`REMOVAL_ORDER`.
    ident
        What names it to its service: an ARN (tasks, task definitions, clusters,
        secrets), an instance or group id, a log group, instance profile or role name.
    run_id
        Its :data:`RUN_TAG` value.
    tags
        All its tags.
    created
        When it was made, where its service tells (clusters and security groups: never).
    detail
        Service-specific facts worth showing (a task's status and cluster, a role's path).
    """

    kind: str
    ident: str
    run_id: str
    tags: Mapping[str, str] = field(default_factory=dict)
    created: datetime | None = None
    detail: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class RunLeftovers:
    """One run's resources and why the run counts as over."""

    run_id: str
    over: bool
    reason: str
    lease_until: datetime | None
    created: datetime | None
    resources: tuple[Resource, ...]

    def of_kind(self, kind: str) -> list[Resource]:
        """The run's resources of ``kind``."""
        return [resource for resource in self.resources if resource.kind == kind]


def _ago(now: datetime, then: datetime) -> str:
    minutes = (now - then).total_seconds() / 60
    return f"{minutes:.1f} min ago" if minutes >= 0 else f"in {-minutes:.1f} min"


def judge(run_id: str, resources: Iterable[Resource], now: datetime, older_than: timedelta) -> RunLeftovers:
    """Whether the run of ``resources`` is over at ``now``, and why (one phrase).

    The run's lease is the latest one any of its resources holds (the renewed one);
    without any, its newest creation time counts. A run with neither (only a cluster
    or security group left, which AWS gives no creation time) is over: nothing of it
    says it is alive.
    """
    ordered = tuple(sorted(resources, key=lambda r: (REMOVAL_ORDER.index(r.kind), r.ident)))
    leases = [until for until in (lease_until(r.tags) for r in ordered) if until is not None]
    created_times = [r.created for r in ordered if r.created is not None]
    lease = max(leases) if leases else None
    created = max(created_times) if created_times else None
    if lease is not None:
        over = now >= lease + older_than
        reason = f"lease {'expired' if now >= lease else 'expires'} {format_time(lease)} ({_ago(now, lease)})"
    elif created is not None:
        over = now >= created + older_than
        reason = f"no lease; newest resource created {format_time(created)} ({_ago(now, created)})"
    else:
        over = True
        reason = "no lease and no creation time"
    return RunLeftovers(run_id, over, reason, lease, created, ordered)


def group_by_run(resources: Iterable[Resource], now: datetime, older_than: timedelta) -> list[RunLeftovers]:
    """Every run of ``resources`` judged (:func:`judge`), sorted by run id."""
    runs: dict[str, list[Resource]] = {}
    for resource in resources:
        runs.setdefault(resource.run_id, []).append(resource)
    return [judge(run_id, runs[run_id], now, older_than) for run_id in sorted(runs)]


def _time(moment: datetime | None) -> str | None:
    return format_time(moment) if moment is not None else None


def to_json(runs: Iterable[RunLeftovers]) -> list[dict[str, Any]]:
    """The documented JSON shape of ``flowrig aws leftovers --output json`` (README)."""
    return [
        {
            "run_id": run.run_id,
            "reason": run.reason,
            "lease_until": _time(run.lease_until),
            "created": _time(run.created),
            "resources": [
                {"kind": r.kind, "id": r.ident, "created": _time(r.created), "detail": dict(sorted(r.detail.items()))}
                for r in run.resources
            ],
        }
        for run in runs
    ]


def render_text(runs: list[RunLeftovers]) -> str:
    """Human listing: one block per run, resources in removal order."""
    if not runs:
        return "no leftovers of finished ecs/fargate/ec2 runs"
    lines: list[str] = []
    for run in runs:
        lines.append(f"run {run.run_id}: over, {run.reason}")
        for r in run.resources:
            extra = ", ".join(f"{key} {value}" for key, value in sorted(r.detail.items()))
            lines.append(f"  {r.kind} {r.ident}" + (f" ({extra})" if extra else ""))
    return "\n".join(lines)
