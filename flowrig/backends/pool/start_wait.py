"""Waiting for a :class:`~flowrig.backends.pool.cluster.PoolCluster`'s first workers.

The start goes on once the minimum of workers joined and, with worker groups, once every
group has a worker: a group's tasks run on its workers only, so a run whose GPU group
never came up would wait for ever. It fails at once, with the first reason, when too few
workers are left that can join (or a group has none left), and after its deadline with
what was still pending.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

from flowrig.backends.pool.groups import count_by_group
from flowrig.backends.pool.launcher import StartTimeout
from flowrig.errors import InfrastructureError

if TYPE_CHECKING:
    from flowrig.backends.pool.cluster import PoolCluster

logger = logging.getLogger("flowrig.pool")


def reasons(lines: list[str]) -> str:
    """Distinct reasons with how often each came, most frequent first."""
    counts: dict[str, int] = {}
    for line in lines:
        counts[line] = counts.get(line, 0) + 1
    return "; ".join(f"{n} x {line}" if n > 1 else line for line, n in sorted(counts.items(), key=lambda i: -i[1]))


def _groups_without_workers(cluster: "PoolCluster", names: set[str]) -> tuple[list[str], list[str]]:
    """The groups none of whose workers joined yet, and of those, the ones with no worker
    left that could still join."""
    if not cluster.book.grouped:
        return [], []
    joined = count_by_group(w.group for name, w in list(cluster.workers.items()) if name in names)
    alive = count_by_group(w.group for w in list(cluster.workers.values()))
    waiting = [g for g in cluster.book.groups() if cluster.book.wanted(g) and not joined.get(g)]
    return waiting, [g for g in waiting if not alive.get(g)]


def wait_for_workers(cluster: "PoolCluster", minimum: int, deadline: float) -> int:
    """Block until ``minimum`` workers (and a worker of every group) joined; how many did.

    Raises
    ------
    InfrastructureError
        When too few workers are left that can join, or a group has none left.
    StartTimeout
        When ``deadline`` (``time.monotonic()``) passes.
    FlowrigError
        The launcher's own error when it refused to start workers.
    """
    kind = cluster.launcher.kind
    while True:
        if cluster.start_error is not None:
            raise cluster.start_error
        workers = cluster.scheduler_info.get("workers", {})
        joined = len(workers)
        waiting, hopeless = _groups_without_workers(cluster, {info.get("name") for info in workers.values()})
        failures = cluster.replacements.failures
        desired = cluster.book.total
        # Nothing counts before the wanted workers were asked for: the scale runs
        # on the cluster's loop, and a scheduler of someone else's may have workers.
        asked = cluster.asked >= min(desired, max(minimum, len(cluster.book.sizes)))
        if asked and joined >= minimum and not waiting:
            if failures:
                logger.warning(
                    "the cluster goes on with %d of %d workers joined (%d asked for, %d started, "
                    "at least %d needed); not started or stopped: %s",
                    joined, desired, cluster.asked, cluster.started, minimum, reasons(failures),
                )
            return joined
        # Workers of the pool's that are alive can still join; a scheduler of someone
        # else's may hold more than that.
        if asked and failures and max(joined, len(cluster.workers)) < minimum:
            raise InfrastructureError(
                f"only {max(joined, len(cluster.workers))} of {cluster.asked} worker {kind}s "
                f"asked for can join, at least {minimum} needed: {failures[0]}"
            )
        if asked and failures and hopeless:
            raise InfrastructureError(
                f"no worker {kind} of group {hopeless[0]} can join, and its tasks run on its workers only: "
                f"{failures[0]}"
            )
        if time.monotonic() > deadline:
            states = sorted({w.state.status.upper() for w in cluster.workers.values() if not w.joined})
            pending = f"worker {kind} {'/'.join(states)}" if states else "workers not joined"
            if waiting:
                pending += f" (no worker of group {', '.join(waiting)} joined)"
            raise StartTimeout(pending + (f"; {failures[0]}" if failures else ""))
        time.sleep(0.25)
