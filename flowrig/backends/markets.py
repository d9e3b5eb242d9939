"""Which market a worker is asked in: on-demand, Spot, or Spot falling back to on-demand.

A cloud backend's ``spot`` option is ``false`` (on-demand only), ``true`` (Spot only) or
``"fallback"``: Spot first, and a worker the cloud refuses for want of Spot capacity is
asked again on-demand. A worker started again after it was lost prefers the market it
ran in: a Spot worker goes back to Spot first (and falls back again when allowed), a
worker that fell back stays on-demand while on-demand has room. The scheduler is never
on Spot: it holds the run's state, and losing it ends the run.

Pure: the launchers (:mod:`flowrig.backends.aws.ecs.launcher`, :mod:`flowrig.backends.vm.launcher`)
ask the cloud and decide with these rules.
"""

from __future__ import annotations

from typing import Literal, Sequence, Union

from flowrig.backends.placement import ON_DEMAND, SPOT

#: The ``spot`` option's value that asks for Spot and falls back to on-demand.
FALLBACK = "fallback"
#: What a ``spot`` option may hold.
SpotSetting = Union[bool, Literal["fallback"]]

__all__ = ["FALLBACK", "GROUP_MARKETS", "ON_DEMAND", "SPOT", "SpotSetting", "fallback_line", "first_market",
           "group_spot", "markets_to_try", "worker_markets"]


#: A worker group's ``market`` as the ``spot`` setting of its workers.
GROUP_MARKETS: dict[str, SpotSetting] = {"on-demand": False, "spot": True, "fallback": FALLBACK}


def group_spot(market: str | None, spot: SpotSetting) -> SpotSetting:
    """The ``spot`` setting of a worker group's workers: its ``market``, else the run's ``spot``."""
    return spot if market is None else GROUP_MARKETS[market]


def first_market(spot: SpotSetting) -> str:
    """The market a new worker is asked in first."""
    return SPOT if spot else ON_DEMAND


def markets_to_try(spot: SpotSetting, prefer: str | None = None) -> tuple[str, ...]:
    """The markets a worker is asked in, in order, until one has capacity.

    ``prefer`` is the market of the lost worker it replaces; it counts only where
    ``spot`` allows both markets.
    """
    if spot is True:
        return (SPOT,)
    if spot != FALLBACK:
        return (ON_DEMAND,)
    own = prefer if prefer in (SPOT, ON_DEMAND) else SPOT
    return (own, ON_DEMAND if own == SPOT else SPOT)


def worker_markets(spot: SpotSetting, count: int, replacing: Sequence[str | None] = ()) -> list[str]:
    """The first market of each of ``count`` workers: the markets of the lost workers
    they replace (``replacing``, one each, ``None`` where not known) first, then new ones'."""
    return [markets_to_try(spot, replacing[i] if i < len(replacing) else None)[0] for i in range(count)]


def fallback_line(count: int, what: str, asked: str, now: str, reason: str, of: str = "") -> str:
    """The one line a run says when ``count`` workers are asked again in another market.

    ``what`` names a worker (``worker task``, ``worker instance``) and ``of`` its worker
    group (`` of group gpu``, or nothing); ``asked`` and ``now`` name the markets in the
    cloud's words (``Fargate Spot``, ``on-demand Fargate``).
    """
    plural = "s" if count != 1 else ""
    return (f'{asked} had no capacity for {count} {what}{plural}{of} ({reason}): asked for '
            f'{"them" if plural else "it"} on {now} instead, as spot = "fallback" allows')
