"""What a run used: how long each of its roles lived, on what shape, and what that costs.

A backend logs each role it starts (the scheduler, every worker, the runner where it is
a container of its own) in a :class:`LifeLog`: when it started, when it ended, and its
:class:`Placement` (the market it ran in, its vCPUs, memory and GPUs, and the key of its
price). :func:`summarize` turns the lives into a :class:`Usage`, per role: how many,
seconds, vCPU-, GB- and GPU-seconds, the share of seconds on Spot and an estimated cost
from a price table (:mod:`flowrig.backends.prices`). Lives are wall-clock times
(``time.time()``), taken from the engine or cloud where it tells them (a container's
``State.StartedAt``/``FinishedAt``), else from this process's own clock.

Rendering (:meth:`Usage.to_dict`, :func:`usage_line`) is pure; nothing here talks to a
backend.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Callable, Iterable, Mapping

from flowrig.backends.placement import LOCAL, ON_DEMAND, SPOT, Placement, is_amount

if TYPE_CHECKING:
    from flowrig.backends.prices import PriceTable

__all__ = [
    "LOCAL", "ON_DEMAND", "ROLE_ORDER", "SPOT", "LifeLog", "Placement", "RoleLife", "RoleUsage", "Usage", "cost_words",
    "role_key", "summarize", "usage_line",
]

#: Roles in the order a report names them.
ROLE_ORDER = ("runner", "scheduler", "worker")
#: Longest name a life read from another process may carry.
_TEXT_MAX = 200


@dataclass(frozen=True)
class RoleLife:
    """One role's life: from its start to its end (``None`` while it runs).

    Parameters
    ----------
    role
        ``runner``, ``scheduler`` or ``worker``.
    name
        The role's name (a container's, a worker's).
    started, ended
        Wall-clock times (``time.time()``).
    placement
        Its shape and price key.
    group
        The worker group; ``""`` for the one group a cluster has without groups.
    """

    role: str
    name: str
    started: float
    ended: float | None
    placement: Placement = field(default_factory=Placement)
    group: str = ""

    def seconds(self, now: float) -> float:
        """How long it lived (until ``now`` while it still runs); never negative."""
        end = self.ended if self.ended is not None else now
        return max(0.0, end - self.started)

    def to_dict(self) -> dict[str, Any]:
        return {"role": self.role, "name": self.name, "started": self.started, "ended": self.ended,
                "placement": self.placement.to_dict(), "group": self.group}

    @classmethod
    def from_dict(cls, data: Any) -> "RoleLife":
        """A life from :meth:`to_dict` (another process's); ``ValueError`` when it is not one."""
        if not isinstance(data, Mapping):
            raise ValueError("a role's life must be a table")
        role, name, group = data.get("role"), data.get("name"), data.get("group", "")
        if not all(isinstance(t, str) and len(t) <= _TEXT_MAX for t in (role, name, group)):
            raise ValueError("a role's life needs a role and a name")
        started, ended = data.get("started"), data.get("ended")
        if not is_amount(started) or not (ended is None or is_amount(ended)):
            raise ValueError("a role's life needs its start (and end) as times")
        return cls(role=role, name=name, started=float(started), ended=None if ended is None else float(ended),
                   placement=Placement.from_dict(data.get("placement", {})), group=group)


class LifeLog:
    """The lives of a cluster's roles, logged as they start and end; thread-safe.

    A name may live more than once (a worker started again under its old name): each
    start opens a life, and an end closes the latest open life of that name.
    """

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._lives: list[RoleLife] = []
        self._lock = threading.Lock()

    def started(self, name: str, role: str, placement: Placement, group: str = "", at: float | None = None) -> None:
        """``name`` started now (or ``at``)."""
        life = RoleLife(role, name, self._clock() if at is None else at, None, placement, group)
        with self._lock:
            self._lives.append(life)

    def ended(self, name: str, at: float | None = None, started: float | None = None) -> None:
        """``name``'s open life ended now (or ``at``); ``started`` corrects its start
        when a better clock (the engine's) tells it. Nothing when none is open."""
        end = self._clock() if at is None else at
        with self._lock:
            for index in range(len(self._lives) - 1, -1, -1):
                life = self._lives[index]
                if life.name == name and life.ended is None:
                    begin = life.started if started is None else started
                    self._lives[index] = replace(life, started=begin, ended=max(end, begin))
                    return

    def discard(self, name: str) -> None:
        """``name``'s open life was none: the role never ran (a Spot VM the cloud found
        no room for after it took the request, whose worker was asked again on-demand).
        It is no life, so what the run used holds only the worker that ran, in the
        market it ran in. Nothing when none is open."""
        with self._lock:
            for index in range(len(self._lives) - 1, -1, -1):
                life = self._lives[index]
                if life.name == name and life.ended is None:
                    del self._lives[index]
                    return

    def add(self, life: RoleLife) -> None:
        """A whole life known elsewhere (another process's)."""
        with self._lock:
            self._lives.append(life)

    def open_names(self) -> list[str]:
        """Names whose life has not ended."""
        with self._lock:
            return [life.name for life in self._lives if life.ended is None]

    def lives(self) -> list[RoleLife]:
        """Every life so far, in the order they started (open ones still open)."""
        with self._lock:
            return sorted(self._lives, key=lambda life: life.started)


@dataclass(frozen=True)
class RoleUsage:
    """What the lives of one role (or one worker group) used."""

    count: int
    seconds: float
    vcpu_seconds: float
    gb_seconds: float
    gpu_seconds: float
    #: Share of this role's seconds on Spot (0 to 1).
    spot_share: float
    #: In the table's currency; ``None`` when some life has no price.
    estimated_cost: float | None
    #: Why there is no cost (``local``, or the price key the table lacks).
    no_price: str | None = None
    #: The shape every life had, when they all had the same one.
    placement: Placement | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "count": self.count,
            "seconds": round(self.seconds, 3),
            "vcpu_seconds": round(self.vcpu_seconds, 3),
            "gb_seconds": round(self.gb_seconds, 3),
            "gpu_seconds": round(self.gpu_seconds, 3),
            "spot_share": round(self.spot_share, 4),
            "estimated_cost": None if self.estimated_cost is None else round(self.estimated_cost, 6),
            "no_price": self.no_price,
            "placement": self.placement.to_dict() if self.placement is not None else None,
        }


@dataclass(frozen=True)
class Usage:
    """What a run used, per role key (``runner``, ``scheduler``, ``worker``,
    ``worker:GROUP``), and the price table that priced it."""

    roles: dict[str, RoleUsage]
    currency: str
    #: ``aws 2026-12-07`` (the shipped table) or the user's file over it.
    price_table: str
    #: Sum over the roles; ``None`` when some role has no price.
    estimated_cost_total: float | None

    def to_dict(self) -> dict[str, Any]:
        total = self.estimated_cost_total
        return {
            "roles": {key: role.to_dict() for key, role in self.roles.items()},
            "currency": self.currency,
            "price_table": self.price_table,
            "estimated_cost_total": None if total is None else round(total, 6),
        }


def role_key(life: RoleLife) -> str:
    """Where a life is counted: its role, and its group when it has one of its own."""
    return f"{life.role}:{life.group}" if life.group and life.group != "default" else life.role


def summarize(lives: Iterable[RoleLife], now: float, prices: "PriceTable | None" = None) -> Usage:
    """Each role's usage from its lives; lives still open count until ``now``.

    Parameters
    ----------
    lives
        What the backend logged.
    now
        Wall-clock time the open lives end at (the run's end).
    prices
        The table that prices them; default: the shipped one.
    """
    from flowrig.backends.prices import shipped_table

    table = prices if prices is not None else shipped_table()
    grouped: dict[str, list[RoleLife]] = {}
    for life in lives:
        grouped.setdefault(role_key(life), []).append(life)
    roles = {key: _role_usage(grouped[key], now, table) for key in sorted(grouped, key=_order)}
    costs = [role.estimated_cost for role in roles.values()]
    total = None if not costs or any(cost is None for cost in costs) else sum(c for c in costs if c is not None)
    return Usage(roles=roles, currency=table.currency, price_table=table.label, estimated_cost_total=total)


def _order(key: str) -> tuple[int, str]:
    role = key.partition(":")[0]
    return (ROLE_ORDER.index(role) if role in ROLE_ORDER else len(ROLE_ORDER), key)


def _role_usage(lives: list[RoleLife], now: float, table: "PriceTable") -> RoleUsage:
    seconds = vcpu = gb = gpu = spot = 0.0
    cost: float | None = 0.0
    no_price: str | None = None
    for life in lives:
        s, shape = life.seconds(now), life.placement
        seconds += s
        vcpu += s * shape.vcpu
        gb += s * shape.memory_gib
        gpu += s * shape.gpus
        spot += s if shape.market == SPOT else 0.0
        priced, why = table.cost(shape, s)
        if priced is None:
            cost, no_price = None, no_price or why
        elif cost is not None:
            cost += priced
    shapes = {life.placement for life in lives}
    return RoleUsage(
        count=len(lives), seconds=seconds, vcpu_seconds=vcpu, gb_seconds=gb, gpu_seconds=gpu,
        spot_share=spot / seconds if seconds > 0 else 0.0, estimated_cost=cost, no_price=no_price,
        placement=next(iter(shapes)) if len(shapes) == 1 else None,
    )


# --- rendering ------------------------------------------------------------------------------


def usage_line(run_id: str | None, usage: Usage) -> str:
    """One line for a person: ``flowrig run ID: used scheduler 1 x 31 s, worker 2 x 29 s;
    58 vCPU-s, 0.05 GB-h, spot 0%; est. $0.0012 (aws prices of 2026-12-07)``."""
    if not usage.roles:
        return f"flowrig run {run_id}: used no cluster roles"
    parts = [f"{key} {role.count} x {_seconds(role.seconds / max(role.count, 1))}"
             for key, role in usage.roles.items()]
    vcpu = sum(role.vcpu_seconds for role in usage.roles.values())
    gb_hours = sum(role.gb_seconds for role in usage.roles.values()) / 3600
    gpu = sum(role.gpu_seconds for role in usage.roles.values())
    workers = [role for key, role in usage.roles.items() if key.startswith("worker")]
    worker_seconds = sum(role.seconds for role in workers)
    spot = sum(role.spot_share * role.seconds for role in workers) / worker_seconds if worker_seconds else 0.0
    figures = f"{vcpu:,.0f} vCPU-s, {gb_hours:.2f} GB-h" + (f", {gpu:,.0f} GPU-s" if gpu else "")
    return (f"flowrig run {run_id}: used {', '.join(parts)}; {figures}, spot {spot:.0%}; "
            f"{cost_words(usage)}")


def cost_words(usage: Usage) -> str:
    """``est. $0.0012 (aws prices of 2026-12-07)``, or why there is no price."""
    total = usage.estimated_cost_total
    if total is not None:
        symbol = "$" if usage.currency == "USD" else f"{usage.currency} "
        return f"est. {symbol}{total:.4f} ({usage.price_table})"
    reasons = sorted({role.no_price for role in usage.roles.values() if role.no_price})
    if reasons == [LOCAL]:
        return "no price: it ran on this machine"
    return f"no price ({'; '.join(reasons)})"


def _seconds(value: float) -> str:
    return f"{value:.0f} s" if value >= 10 else f"{value:.1f} s"
