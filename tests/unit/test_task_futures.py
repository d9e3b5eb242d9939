"""A fetch group's choice of what to fetch together, with Dask futures stood in for:
which members ride along with a wait, what is left to prefect-dask's own path, and that
the group neither keeps a dropped future alive nor rescans what it settled."""

from __future__ import annotations

import gc
import uuid

import pytest

from flowrig.internals.task_futures import FetchGroup, FlowrigFuture, SubmitGroups


class Client:
    def __init__(self, fail: bool = False) -> None:
        self.gathers: list[list[str]] = []
        self.fail = fail

    def gather(self, futures: dict, errors: str = "raise") -> dict:
        assert errors == "skip" and isinstance(futures, dict)
        self.gathers.append(list(futures))
        if self.fail:
            raise OSError("connection lost")
        from prefect.states import Completed

        return {key: (Completed(data=key) if key != "not-a-state" else 42) for key in futures}


class Wrapped:
    def __init__(self, client: Client, key: str, status: str = "finished") -> None:
        self.client, self.key, self.status = client, key, status


def _members(client: Client, statuses: list[str], group: FetchGroup | None = None):
    group = group if group is not None else FetchGroup()
    futures = [FlowrigFuture(Wrapped(client, f"k{i}", s), uuid.uuid4(), group) for i, s in enumerate(statuses)]
    return group, futures


def test_a_wait_fetches_its_finished_peers_in_the_same_gather():
    client = Client()
    group, futures = _members(client, ["finished", "pending", "finished", "error", "finished"])
    assert futures[2].result() == "k2"
    assert client.gathers == [["k2", "k0", "k4"]]
    assert [f._final_state is not None for f in futures] == [True, False, True, False, True]
    # Settled ones cost nothing more.
    assert futures[0].result() == "k0" and futures[4].state.result() == "k4"
    assert len(client.gathers) == 1


@pytest.mark.parametrize("status", ["error", "cancelled", "lost"])
def test_a_future_with_no_state_to_fetch_is_left_to_prefect_dask(status):
    client = Client()
    group, futures = _members(client, [status, "finished"])
    group.fetch(futures[0])
    assert client.gathers == [] and futures[0]._final_state is None and futures[1]._final_state is None


def test_a_failed_fetch_or_a_result_that_is_no_state_settles_nothing():
    client = Client(fail=True)
    group, futures = _members(client, ["finished", "finished"])
    group.fetch(futures[0])
    assert len(client.gathers) == 1 and all(f._final_state is None for f in futures)

    client = Client()
    group = FetchGroup()
    odd = FlowrigFuture(Wrapped(client, "not-a-state"), uuid.uuid4(), group)
    group.fetch(odd)
    assert odd._final_state is None


def test_a_wait_with_a_timeout_fetches_nothing_together():
    client = Client()
    group, futures = _members(client, ["finished", "finished"])
    calls = []
    futures[0]._wrapped_future.result = lambda timeout=None: calls.append(timeout)
    futures[0].wait(timeout=5)
    assert client.gathers == [] and calls == [5]


def test_the_scan_stops_after_a_run_of_unfinished_members_and_a_batch_is_bounded():
    client = Client()
    statuses = ["finished"] + ["pending"] * FetchGroup.LOOKAHEAD + ["finished"]
    group, futures = _members(client, statuses)
    group.fetch(futures[0])
    assert client.gathers == [["k0"]]

    client = Client()
    group, futures = _members(client, ["finished"] * (FetchGroup.BATCH + 10))
    group.fetch(futures[-1])
    assert len(client.gathers[0]) == FetchGroup.BATCH


def test_the_group_holds_its_members_weakly_and_forgets_what_it_settled():
    client = Client()
    group, futures = _members(client, ["pending"] + ["finished"] * 3000)
    dropped = futures.pop(5)
    del dropped
    gc.collect()
    assert group._members[5]() is None
    # Three fetches settle everything behind the pending head; the settled are then
    # dropped from the group instead of being scanned again by every later fetch.
    for _ in range(3):
        group.fetch(next(f for f in futures[1:] if f._final_state is None))
    assert all(f._final_state is not None for f in futures[1:])
    assert len(group._members) <= 1 + FetchGroup.BATCH and group._members[0]() is futures[0]


def test_submissions_roll_over_to_a_new_group():
    groups = SubmitGroups()
    first = groups.current()
    client = Client()
    _members(client, ["pending"] * SubmitGroups.SIZE, first)
    assert groups.current() is not first and len(first) == SubmitGroups.SIZE


class Clock:
    """Time for a group's futures: each task ends at its own moment, a wait lasts until
    then, and a sleep moves time on."""

    def __init__(self) -> None:
        self.now = 0.0

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


class Timed(Wrapped):
    def __init__(self, client: Client, key: str, clock: Clock, ends_at: float, status: str = "finished") -> None:
        super().__init__(client, key)
        self.clock, self.ends_at, self.end_status = clock, ends_at, status

    @property
    def status(self) -> str:
        return self.end_status if self.clock.now >= self.ends_at else "pending"

    @status.setter
    def status(self, value: str) -> None:
        pass

    def exception(self) -> None:
        self.clock.now = max(self.clock.now, self.ends_at)


def _timed_members(monkeypatch, ends: list[tuple[float, str]]):
    import flowrig.internals.task_futures as task_futures

    clock, client, group = Clock(), Client(), FetchGroup()
    monkeypatch.setattr(task_futures, "time", clock)
    futures = [FlowrigFuture(Timed(client, f"k{i}", clock, at, status), uuid.uuid4(), group)
               for i, (at, status) in enumerate(ends)]
    return clock, client, futures


def test_a_walk_over_futures_as_they_end_gathers_at_most_once_per_interval(monkeypatch):
    # 200 tasks ending 5 ms apart, waited on in turn (Prefect resolving a direct call's
    # list does this): one gather per task would be 200 round trips.
    clock, client, futures = _timed_members(monkeypatch, [(0.005 * (i + 1), "finished") for i in range(200)])
    assert [f.result() for f in futures] == [f"k{i}" for i in range(200)]
    assert len(client.gathers) <= 1.0 / FetchGroup.GATHER_INTERVAL + 2, len(client.gathers)
    # ... and each gather brings what ended while it was held back.
    assert sum(map(len, client.gathers)) == 200


def test_a_finished_future_or_a_failed_task_is_not_held_back(monkeypatch):
    clock, client, futures = _timed_members(monkeypatch, [(0.0, "finished"), (0.0, "finished"), (0.01, "error")])
    futures[0].wait()
    futures[1].wait()  # settled already: nothing to do
    assert clock.now == 0.0 and client.gathers == [["k0", "k1"]]
    # An errored task leaves its future to prefect-dask's path at once: no sleep.
    futures[2]._group.fetch(futures[2])
    assert clock.now == 0.01 and len(client.gathers) == 1
