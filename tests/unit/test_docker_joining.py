"""When a docker cluster's start goes on: every worker it starts with, unless one is late
or gone once another has joined."""

from __future__ import annotations

import pytest

from flowrig.backends.docker.joining import ALL_JOINED_GRACE, enough_joined


@pytest.mark.parametrize(
    ("joined", "wanted", "on_the_way", "since_first", "go_on"),
    [
        (0, 3, 3, None, False),  # nobody yet
        (1, 3, 2, 0.5, False),  # the others are starting: wait for them
        (2, 3, 1, ALL_JOINED_GRACE - 1, False),
        (3, 3, 0, 2.0, True),  # all of them
        (1, 3, 0, 0.5, True),  # the rest exited: the cluster starts them again, the flow need not wait
        (2, 3, 1, ALL_JOINED_GRACE, True),  # one is late: the flow starts without it
        (1, 1, 0, 0.0, True),
        (1, 0, 0, 0.0, True),  # an adaptive start of no worker still needs one to run a task
        (0, 0, 0, None, False),
    ],
)
def test_a_start_waits_for_all_its_workers_but_not_for_a_late_or_lost_one(joined, wanted, on_the_way,
                                                                          since_first, go_on):
    assert enough_joined(joined, wanted, on_the_way, since_first) is go_on


@pytest.mark.parametrize(
    ("joined", "on_the_way", "since_first", "go_on"),
    [(1, 0, 1.0, False), (2, 1, ALL_JOINED_GRACE * 10, False), (3, 0, 0.0, True)],
)
def test_worker_groups_wait_for_every_worker(joined, on_the_way, since_first, go_on):
    # A group's tasks run only on its own workers: one missing could hold them for ever.
    assert enough_joined(joined, 3, on_the_way, since_first, all_of_them=True) is go_on
