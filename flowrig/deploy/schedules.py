"""A deployment's schedules from the command line: ``--cron``, ``--interval``, ``--rrule``.

Each becomes Prefect's own schedule object (so Prefect's validation applies: a cron
string croniter accepts, an RFC 5545 rule, an IANA time zone), in the one time zone of
``--timezone``. An interval needs an anchor; Prefect's default is "now", which would
make every deploy a new schedule, so the anchor is fixed (``--anchor-date``, else
midnight of 2020-01-01 in the time zone): the same inputs give the same schedule.
"""

from __future__ import annotations

import datetime as dt
import re
from typing import Any, Iterable

from flowrig.errors import BadInput

#: The anchor of an interval schedule when none is given (in the schedule's time zone).
DEFAULT_ANCHOR = dt.datetime(2020, 1, 1)
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_INTERVAL = re.compile(r"^\s*(?P<value>\d+(?:\.\d+)?)\s*(?P<unit>[smhd]?)\s*$")


def parse_interval(text: str) -> dt.timedelta:
    """``90``, ``90s``, ``15m``, ``2h`` or ``1d`` as a positive duration.

    Raises
    ------
    BadInput
        For anything else, or for zero.
    """
    match = _INTERVAL.match(text)
    if not match:
        raise BadInput(f"--interval {text!r} is not a duration: use seconds (3600) or a number with s, m, h or d (1h)")
    seconds = float(match["value"]) * _UNITS[match["unit"] or "s"]
    if seconds <= 0:
        raise BadInput(f"--interval {text!r} must be longer than zero")
    return dt.timedelta(seconds=seconds)


def _timezone(name: str | None) -> str:
    import zoneinfo

    zone = name or "UTC"
    try:
        zoneinfo.ZoneInfo(zone)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise BadInput(f"--timezone {zone!r} is not an IANA time zone: use e.g. Europe/Berlin or UTC") from None
    return zone


def _anchor(text: str | None, zone: str) -> dt.datetime:
    import zoneinfo

    if text is None:
        anchor = DEFAULT_ANCHOR
    else:
        try:
            anchor = dt.datetime.fromisoformat(text)
        except ValueError:
            raise BadInput(f"--anchor-date {text!r} is not an ISO date and time: use e.g. 2026-01-01T06:00") from None
    return anchor if anchor.tzinfo is not None else anchor.replace(tzinfo=zoneinfo.ZoneInfo(zone))


def _first_problem(exc: Exception) -> str:
    errors = getattr(exc, "errors", None)
    if callable(errors):
        first = errors()[0]
        return str(first.get("ctx", {}).get("error") or first.get("msg"))
    return str(exc)


def build_schedules(
    cron: Iterable[str] = (),
    interval: Iterable[str] = (),
    rrule: Iterable[str] = (),
    timezone: str | None = None,
    anchor_date: str | None = None,
) -> list[Any]:
    """Prefect schedule objects for the given schedules, in the order given per kind.

    Raises
    ------
    BadInput
        Naming the first schedule Prefect refuses and why.
    """
    from prefect.client.schemas.schedules import CronSchedule, IntervalSchedule, RRuleSchedule
    from pydantic import ValidationError

    zone = _timezone(timezone)
    schedules: list[Any] = []
    for text in cron:
        try:
            schedules.append(CronSchedule(cron=text, timezone=zone))
        except ValidationError as exc:
            raise BadInput(f"--cron {text!r}: {_first_problem(exc)}; use five fields, e.g. '0 6 * * *'") from None
    for text in interval:
        schedules.append(IntervalSchedule(interval=parse_interval(text), anchor_date=_anchor(anchor_date, zone),
                                          timezone=zone))
    for text in rrule:
        try:
            schedules.append(RRuleSchedule(rrule=text, timezone=zone))
        except ValidationError as exc:
            raise BadInput(f"--rrule {text!r}: {_first_problem(exc)}; use e.g. 'FREQ=DAILY;BYHOUR=6'") from None
    return schedules


def canonical(schedule: Any) -> dict[str, Any]:
    """One schedule as JSON data that compares equal for equal schedules, whichever
    side (this process or a Prefect server) it comes from."""
    data = schedule.model_dump(mode="json")
    if "rrule" in data:
        data["rrule"] = _canonical_rrule(str(data["rrule"]))
    if "anchor_date" in data:
        anchor = dt.datetime.fromisoformat(str(data["anchor_date"]).replace("Z", "+00:00"))
        data["anchor_date"] = anchor.astimezone(dt.timezone.utc).isoformat()
        data["interval"] = float(data["interval"])
    return data


def _canonical_rrule(text: str) -> str:
    """The rule as dateutil writes it back, with the start a Prefect server gives a rule
    that has none (2020-01-01): the server stores rules that way."""
    from dateutil.rrule import rrulestr

    try:
        return str(rrulestr(text, dtstart=DEFAULT_ANCHOR))
    except (ValueError, TypeError):
        return text


def from_canonical(data: dict[str, Any]) -> Any:
    """The Prefect schedule object of :func:`canonical`'s data."""
    from prefect.client.schemas.schedules import CronSchedule, IntervalSchedule, RRuleSchedule

    if "cron" in data:
        return CronSchedule.model_validate(data)
    if "rrule" in data:
        return RRuleSchedule.model_validate(data)
    return IntervalSchedule.model_validate(data)


def describe(schedule: Any) -> str:
    """A schedule in a few words, for messages."""
    data = canonical(schedule)
    zone = data.get("timezone") or "UTC"
    if "cron" in data:
        return f"cron {data['cron']!r} ({zone})"
    if "rrule" in data:
        return f"rrule {data['rrule']!r} ({zone})"
    return f"every {dt.timedelta(seconds=data['interval'])} from {data['anchor_date']} ({zone})"
