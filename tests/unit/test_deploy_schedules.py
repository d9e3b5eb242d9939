"""Schedules from the command line (flowrig.deploy.schedules): Prefect's own objects,
and one canonical form whichever side they come from, so that a second deploy with the
same inputs finds them equal."""

from __future__ import annotations

import datetime as dt

import pytest

from flowrig.deploy import schedules
from flowrig.errors import BadInput


@pytest.mark.parametrize("text, seconds", [("90", 90), ("90s", 90), ("15m", 900), ("2h", 7200), ("1d", 86400),
                                           ("1.5h", 5400), (" 10 m ", 600)])
def test_intervals(text, seconds):
    assert schedules.parse_interval(text) == dt.timedelta(seconds=seconds)


@pytest.mark.parametrize("text", ["", "abc", "0", "0s", "-5", "5w", "1h30m"])
def test_bad_intervals(text):
    with pytest.raises(BadInput) as info:
        schedules.parse_interval(text)
    assert "--interval" in str(info.value)


def test_the_same_inputs_give_the_same_schedules():
    args = (["0 6 * * *"], ["1h"], ["FREQ=WEEKLY;BYDAY=MO"], "Europe/Berlin")
    first = [schedules.canonical(s) for s in schedules.build_schedules(*args)]
    second = [schedules.canonical(s) for s in schedules.build_schedules(*args)]
    assert first == second
    interval = first[1]
    # Midnight of 2020-01-01 in the schedule's time zone, not "now".
    assert interval["anchor_date"] == "2019-12-31T23:00:00+00:00" and interval["timezone"] == "Europe/Berlin"


def test_a_rule_reads_the_same_with_the_start_a_server_gives_it():
    from prefect.client.schemas.schedules import RRuleSchedule

    ours = schedules.canonical(schedules.build_schedules(rrule=["FREQ=DAILY;BYHOUR=6"])[0])
    stored = schedules.canonical(RRuleSchedule(rrule="DTSTART:20200101T000000\nRRULE:FREQ=DAILY;BYHOUR=6"))
    assert ours == stored
    other = schedules.canonical(RRuleSchedule(rrule="DTSTART:20240101T000000\nRRULE:FREQ=DAILY;BYHOUR=6"))
    assert other != ours
    assert schedules.canonical(schedules.from_canonical(ours)) == ours


@pytest.mark.parametrize("kwargs, words", [
    ({"cron": ["61 * * * *"]}, "--cron '61 * * * *'"),
    ({"rrule": ["FREQ=NOPE"]}, "--rrule 'FREQ=NOPE'"),
    ({"cron": ["* * * * *"], "timezone": "Mars/Olympus"}, "--timezone 'Mars/Olympus' is not an IANA time zone"),
    ({"interval": ["1h"], "anchor_date": "yesterday"}, "--anchor-date 'yesterday' is not an ISO date"),
])
def test_bad_schedules_are_one_line(kwargs, words):
    with pytest.raises(BadInput) as info:
        schedules.build_schedules(**kwargs)
    assert words in str(info.value) and "\n" not in str(info.value)
