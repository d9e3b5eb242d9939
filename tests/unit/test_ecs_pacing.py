"""Client-side pacing of ECS calls: a burst at once, then the refill rate, callers
served in the order they came, and the figures below AWS's documented ones."""

from __future__ import annotations

import pytest

from flowrig.backends.aws.ecs import pacing
from flowrig.backends.aws.ecs.pacing import Pacer, Rate


class FakeTime:
    """A clock that only moves when the pacer sleeps."""

    def __init__(self) -> None:
        self.now = 50.0
        self.slept: list[float] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


def test_a_burst_goes_at_once_then_calls_wait_for_the_refill():
    time = FakeTime()
    pacer = Pacer(Rate(burst=100, per_second=20), clock=time.clock, sleep=time.sleep)
    # Ten RunTask calls of ten tasks each use the burst without waiting.
    assert [pacer.wait(10) for _ in range(10)] == [0.0] * 10
    # Then each batch of ten waits for ten tokens: half a second at 20 a second.
    waits = [pacer.wait(10) for _ in range(40)]
    assert waits == pytest.approx([0.5] * 40)
    # 500 tasks: 100 at once, 400 at 20 a second.
    assert time.now - 50.0 == pytest.approx(20.0)


def test_callers_that_came_together_are_served_one_after_another():
    time = FakeTime()
    pacer = Pacer(Rate(burst=2, per_second=4), clock=time.clock, sleep=lambda s: time.slept.append(s))
    # The clock stands still (as for threads that asked at the same moment): each later
    # caller waits a quarter of a second longer than the one before.
    assert [pacer.wait() for _ in range(5)] == pytest.approx([0, 0, 0.25, 0.5, 0.75])


def test_an_idle_pacer_refills_only_up_to_its_burst():
    time = FakeTime()
    pacer = Pacer(Rate(burst=3, per_second=1), clock=time.clock, sleep=time.sleep)
    assert [pacer.wait() for _ in range(3)] == [0, 0, 0]
    time.now += 3600
    assert [pacer.wait() for _ in range(4)] == pytest.approx([0, 0, 0, 1.0])


def test_the_paced_rates_stay_below_aws_documented_ones():
    # https://docs.aws.amazon.com/AmazonECS/latest/developerguide/throttling.html:
    # 100 task launches at once, 20 a second; RunTask 20 calls a second.
    assert pacing.LAUNCHES.burst < 100 and pacing.LAUNCHES.per_second < 20
    assert pacing.RUN_TASK_CALLS.burst < 20 and pacing.RUN_TASK_CALLS.per_second < 20
    assert pacing.STOP_TASK_CALLS.burst < 20 and pacing.STOP_TASK_CALLS.per_second < 20
    with pytest.raises(ValueError):
        Pacer(Rate(burst=0, per_second=1))
