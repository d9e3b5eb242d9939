"""The one rule for lost workers (:class:`flowrig.backends.lost_workers.Replacements`),
whichever detector noticed them: its warning line, its count, and its budget."""

from __future__ import annotations

import logging

import pytest

from flowrig.backends.lost_workers import Replacements


def test_a_lost_worker_is_one_warning_line_and_counts_as_replaced(caplog):
    rule = Replacements(lambda: 2)
    with caplog.at_level(logging.WARNING, logger="flowrig.keeper"):
        rule.lost(["0"], "left the cluster and did not come back")
        rule.lost([3, 1], "stopped (SpotInterruption)")
        rule.lost([], "nothing")
    assert [r.getMessage() for r in caplog.records] == [
        "worker 0 left the cluster and did not come back: starting it again",
        "workers 1, 3 stopped (SpotInterruption): starting them again",
    ]
    assert rule.replaced == 3 and rule.failures == []


@pytest.mark.parametrize(("size", "allowed"), [(0, 3), (1, 3), (3, 3), (5, 5)])
def test_failed_starts_stop_replacement_at_the_size_and_at_least_three(size, allowed):
    rule = Replacements(lambda: size)
    # Lost workers (they had joined) do not spend the budget.
    rule.lost(["a", "b", "c", "d", "e", "f"], "stopped (SpotInterruption)")
    for n in range(allowed):
        assert rule.may_replace(), n
        rule.failed(f"worker task t-{n} stopped: CannotPullContainerError")
    assert not rule.may_replace()
    assert rule.failures[0] == "worker task t-0 stopped: CannotPullContainerError"
    assert rule.replaced == 6


def test_the_budget_follows_the_size_as_it_changes():
    size = [1]
    rule = Replacements(lambda: size[0])
    for _ in range(3):
        rule.failed("worker task stopped: OutOfMemoryError")
    assert not rule.may_replace()
    size[0] = 4  # scaled up: one more try
    assert rule.may_replace()
