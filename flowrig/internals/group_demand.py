"""What each worker group's tasks ask of the cluster, from the scheduler's own state.

An adaptive worker group (:mod:`flowrig.backends.group_scaling`) grows with the tasks
restricted to its resource (``flowrig-group-NAME``, :mod:`flowrig.common.routes`) and
shrinks by retiring its idle workers. distributed's ``Scheduler.adaptive_target`` counts
the cluster's tasks as a whole, so the scheduler serves this per-group count as a
handler of its own (:data:`DEMAND_OP`, put in place by :mod:`flowrig.roles.lifetime`).

Fenced here, checked by tests/e2e/local/test_internals_groupadapt.py on a real TLS
cluster of the locked distributed:

- ``Scheduler.workers`` (address -> ``WorkerState``), ``Scheduler.unrunnable`` (the
  tasks no worker can run now: a group's tasks while it has no worker) and
  ``Scheduler.queued`` (unrestricted tasks held back while every thread is busy), both
  iterable over ``TaskState``;
- ``WorkerState.processing`` (the tasks sent to it, running or queued on it),
  ``.resources`` (what it offers, by name), ``.has_what`` (the keys it holds),
  ``.name`` and ``.status`` (a ``Status``, ``.name`` its spelling);
- ``TaskState.resource_restrictions`` (``None`` or the resources it asked for) and
  ``.key`` (the key it was submitted with).

flowrig's own payload tasks (:data:`PAYLOAD_PREFIXES`: the flow run's and each task's
payload, :mod:`flowrig.internals.task_runner`) are data, done in a moment: they are
not demand, or every submission would grow the first group for a second.

May import: the standard library only (it runs in the scheduler, which has
distributed imported).
"""

from __future__ import annotations

from typing import Any

#: The scheduler's handler that answers :func:`demand`.
DEMAND_OP = "flowrig_group_demand"
#: Keys of flowrig's payload tasks (:mod:`flowrig.internals.task_runner`).
PAYLOAD_PREFIXES = ("flowrig-run-", "flowrig-task-")
#: The resource a group's workers offer: this prefix, then the group's name
#: (:data:`flowrig.common.routes.GROUP_RESOURCE_PREFIX`).
_PREFIX = "flowrig-group-"


def _group_of_restrictions(restrictions: Any) -> str | None:
    for name in restrictions or ():
        if str(name).startswith(_PREFIX):
            return str(name)[len(_PREFIX):]
    return None


def _group_of_worker(ws: Any) -> str | None:
    return _group_of_restrictions(getattr(ws, "resources", None))


def _is_work(ts: Any) -> bool:
    return not str(ts.key).startswith(PAYLOAD_PREFIXES)


def demand(scheduler: Any) -> dict[str, Any]:
    """Each group's demand and idle workers, and the unrestricted tasks that wait.

    Returns
    -------
    dict
        ``groups``: by group name, ``tasks`` (tasks restricted to it that wait or are
        processing, plus unrestricted tasks processing on its workers) and ``idle``
        (its running workers with nothing to process: ``[name, holds data]``);
        ``waiting``: unrestricted tasks no worker has taken yet (queued or unrunnable).
    """
    groups: dict[str, dict[str, Any]] = {}

    def entry(group: str) -> dict[str, Any]:
        return groups.setdefault(group, {"tasks": 0, "idle": []})

    waiting = 0
    for ts in filter(_is_work, [*scheduler.unrunnable, *scheduler.queued]):
        group = _group_of_restrictions(ts.resource_restrictions)
        if group is None:
            waiting += 1
        else:
            entry(group)["tasks"] += 1
    for ws in list(scheduler.workers.values()):
        group = _group_of_worker(ws)
        if group is None:
            continue
        here = entry(group)
        here["tasks"] += sum(1 for ts in ws.processing if _is_work(ts))
        if not ws.processing and getattr(ws.status, "name", str(ws.status)) == "running":
            here["idle"].append([str(ws.name), bool(ws.has_what)])
    return {"groups": groups, "waiting": waiting}
