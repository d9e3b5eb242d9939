"""Every common way a flow waits on many tasks, through flowrig's task runner on a real
TLS LocalCluster (worker processes), at n = 80: the same results and the same failures
as Prefect's own task runner or prefect-dask, with finished states fetched in batches
instead of one round trip per future.

Each flow runs in this process (the runner's), against the run's embedded API, so that
the runner's fetches from the cluster can be counted (``Client._gather``, which both
``Future.result()`` and ``Client.gather`` go through).
"""

from __future__ import annotations

import contextlib
import types
import uuid

import pytest

from tests.e2e.local.test_task_runner import _api_free

N = 80


def _tasks() -> types.SimpleNamespace:
    """Tasks made here (not at module level), so that they travel to the worker
    processes by value."""
    import os
    import time

    from prefect import task

    @task
    def double(x: int) -> int:
        return 2 * x

    @task
    def inc(x: int) -> int:
        return x + 1

    @task
    def total(values: list[int]) -> int:
        return sum(values)

    @task
    def boom_at(x: int, at: int) -> int:
        if x == at:
            raise ValueError(f"boom {x}")
        return 2 * x

    @task
    def slow(x: int, seconds: float) -> int:
        time.sleep(seconds)
        return x

    @task
    def die(x: int) -> int:
        if x == 0:
            os._exit(1)  # the worker process dies: Dask reports a KilledWorker
        return x

    return types.SimpleNamespace(**{f.name: f for f in (double, inc, total, boom_at, slow, die)})


@contextlib.contextmanager
def two_worker_cluster(tls):
    """Two worker processes of two threads over mutual TLS, and the run's API; a task
    whose worker dies is not retried elsewhere (``allowed-failures`` 0), as a
    deterministic KilledWorker. Gives ``(cluster, security)``."""
    import dask
    from distributed import LocalCluster

    security = tls.to_security()
    with dask.config.set({"distributed.scheduler.allowed-failures": 0}):
        local = LocalCluster(n_workers=2, threads_per_worker=2, processes=True, protocol="tls://",
                             security=security, host="127.0.0.1", dashboard_address=None)
    with local, _api_free():
        yield local, security


@pytest.fixture(scope="module")
def cluster(tls):
    with two_worker_cluster(tls) as made:
        yield made


@pytest.fixture
def runner(cluster):
    from flowrig.internals.task_runner import FlowrigTaskRunner

    local, security = cluster
    return lambda: FlowrigTaskRunner(address=local.scheduler_address, client_kwargs={"security": security},
                                     events="drop")


@pytest.fixture
def gathers(monkeypatch):
    """The runner's fetches from the cluster: one entry (the number of keys) each."""
    import distributed

    calls: list[int] = []
    original = distributed.Client._gather

    async def counting(self, futures, *args, **kwargs):
        calls.append(len(futures))
        return await original(self, futures, *args, **kwargs)

    monkeypatch.setattr(distributed.Client, "_gather", counting)
    return calls


def _all_finished(futures) -> None:
    """Wait until the cluster has run every future, fetching nothing."""
    import distributed

    wrapped = [f.wrapped_future for f in futures]
    for _ in distributed.as_completed(wrapped, with_results=False, loop=wrapped[0].client.loop):
        pass


def _pattern_flow(t: types.SimpleNamespace):
    from prefect import flow
    from prefect.futures import as_completed, wait

    @flow
    def patterns(n: int, pattern: str) -> int:
        xs = range(n)
        if pattern == "map-result":
            return sum(t.double.map(xs).result())
        if pattern == "map-downstream":
            return t.total(t.double.map(xs))
        if pattern == "map-submit-downstream":
            return t.total.submit(t.double.map(xs)).result()
        if pattern == "result-loop":
            return sum([f.result() for f in t.double.map(xs)])
        if pattern == "wait":
            futures = t.double.map(xs)
            wait(futures)
            return sum(f.result() for f in futures)
        if pattern == "as-completed":
            return sum(f.result() for f in as_completed(t.double.map(xs)))
        if pattern == "submit-loop":
            futures = [t.double.submit(x) for x in xs]
            return sum(f.result() for f in futures)
        if pattern == "map-chain":
            return sum(t.inc.map(t.double.map(xs)).result())
        raise ValueError(pattern)

    return patterns


PATTERNS = ("map-result", "map-downstream", "map-submit-downstream", "result-loop", "wait", "as-completed",
            "submit-loop", "map-chain")


@pytest.mark.parametrize("pattern", PATTERNS)
def test_each_pattern_gives_what_prefect_gives(runner, pattern):
    t = _tasks()
    patterns = _pattern_flow(t)
    expected = N * N if pattern == "map-chain" else N * (N - 1)
    assert patterns.with_options(task_runner=runner())(N, pattern) == expected
    # Prefect's own task runner, on a few items, agrees on what the flow computes.
    assert patterns(10, pattern) == (100 if pattern == "map-chain" else 90)


@pytest.mark.parametrize("how", ["result-loop", "wait", "as-completed", "direct-call", "submit-loop"])
def test_waiting_on_finished_futures_fetches_them_in_one_gather(runner, gathers, how):
    """prefect-dask fetches each future's state in a round trip of its own (80 here)."""
    from prefect import flow
    from prefect.futures import as_completed, wait

    t = _tasks()

    @flow
    def waits() -> int:
        futures = [t.double.submit(x) for x in range(N)] if how == "submit-loop" else t.double.map(range(N))
        _all_finished(futures)
        gathers.clear()
        if how == "wait":
            wait(futures)
            values = [f.result() for f in futures]
        elif how == "as-completed":
            values = [f.result() for f in as_completed(futures)]
        elif how == "direct-call":
            values = [t.total(futures)]
        else:
            values = [f.result() for f in futures]
        # A map's task runs share Dask tasks (chunks): one gather brings every one.
        return sum(values), len({f.wrapped_future.key for f in futures})

    total, keys = waits.with_options(task_runner=runner())()
    assert total == N * (N - 1)
    assert gathers == [keys], gathers


@pytest.mark.parametrize("how", ["result", "wait"])
def test_waiting_on_a_running_map_gathers_at_most_once_per_interval(runner, gathers, how, monkeypatch):
    """A flow that waits on a whole map while its quick tasks still run fetches what
    ended meanwhile together: at most one gather per ``GATHER_INTERVAL`` (plus the first
    and the last), not one per handful of tasks as they end. (The interval is made long
    here, so that the bound holds only by the pacing, however loaded the machine.)"""
    import time

    from prefect import flow

    from flowrig.internals.task_futures import FetchGroup

    monkeypatch.setattr(FetchGroup, "GATHER_INTERVAL", 0.5, raising=False)
    t = _tasks()
    n = 400

    @flow
    def waits() -> dict:
        futures = t.slow.map(range(n), seconds=0.004)
        gathers.clear()
        start = time.monotonic()
        if how == "wait":
            futures.wait()
            values = [f.result() for f in futures]
        else:
            values = futures.result()
        return {"sum": sum(values), "seconds": time.monotonic() - start, "gathers": list(gathers),
                "keys": len({f.wrapped_future.key for f in futures})}

    outcome = waits.with_options(task_runner=runner())()
    assert outcome["sum"] == n * (n - 1) // 2
    bound = outcome["seconds"] / FetchGroup.GATHER_INTERVAL + 3
    assert len(outcome["gathers"]) <= bound, outcome
    # Every Dask task (a chunk of the map's task runs) was fetched.
    assert sum(outcome["gathers"]) >= outcome["keys"], outcome


def test_a_failing_task_in_the_middle_of_a_batch(runner, gathers):
    """Its future alone is Failed and raises the task's error; every other member of the
    batch it was fetched with is Completed; the batch was one fetch."""
    from prefect import flow
    from prefect.futures import as_completed, wait

    t = _tasks()

    @flow
    def failing() -> dict:
        futures = t.boom_at.map(range(N), at=N // 2)
        _all_finished(futures)
        gathers.clear()
        done, not_done = wait(futures)
        fetched = len(gathers)
        states = [f.state for f in futures]
        try:
            [f.result() for f in futures]
            raised = None
        except ValueError as exc:
            raised = str(exc)
        return {
            "fetched": fetched,
            "done": len(done), "not_done": len(not_done),
            "failed": [i for i, s in enumerate(states) if s.is_failed()],
            "completed": sum(s.is_completed() for s in states),
            "raised": raised,
            "kept": futures[N // 2].result(raise_on_failure=False).__class__.__name__,
            "yielded": len(list(as_completed(futures))),
        }

    outcome = failing.with_options(task_runner=runner())()
    assert outcome == {"fetched": 1, "done": N, "not_done": 0, "failed": [N // 2], "completed": N - 1,
                       "raised": f"boom {N // 2}", "kept": "ValueError", "yielded": N}


@pytest.mark.parametrize("how", ["result-loop", "direct-call", "submit-downstream"])
def test_a_failed_upstream_ends_the_flow_as_with_prefects_own_runner(runner, how):
    """The flow's final state and its message are Prefect's own (the thread-pool runner)."""
    from prefect import flow

    t = _tasks()

    @flow
    def failing(n: int) -> int:
        futures = t.boom_at.map(range(n), at=n // 2)
        if how == "direct-call":
            return t.total(futures)
        if how == "submit-downstream":
            return t.total.submit(futures).result()
        return sum(f.result() for f in futures)

    def summary(state, n: int) -> tuple:
        result = state.result(raise_on_failure=False)
        return (state.type, (state.message or "").replace(str(n // 2), "X"),
                type(result).__name__, str(result).replace(str(n // 2), "X"))

    ours = summary(failing.with_options(task_runner=runner())(N, return_state=True), N)
    theirs = summary(failing(10, return_state=True), 10)
    assert ours == theirs
    # A direct call of a task whose upstream failed does not run it (NotReady), and
    # the flow completes with nothing; the other two fail with the task's error.
    assert ours[0].value == ("COMPLETED" if how == "direct-call" else "FAILED"), ours


def test_timeouts_behave_as_prefect_dasks(runner):
    """A wait or result with a timeout takes prefect-dask's path: the same TimeoutError,
    the same done/not_done split."""
    from prefect import flow
    from prefect.futures import wait

    t = _tasks()

    @flow
    def timing() -> dict:
        quick = t.double.map(range(10))
        _all_finished(quick)
        slow = t.slow.map(range(3), seconds=3)
        done, not_done = wait([*quick, *slow], timeout=0.5)
        try:
            slow[0].result(timeout=0.01)
            message = None
        except TimeoutError as exc:
            message = str(exc)
        slow[1].wait(timeout=0.01)
        return {
            "done": len(done), "not_done": sorted(f.task_run_id for f in not_done) == sorted(f.task_run_id for f in slow),
            "message": message, "unsettled": slow[1]._final_state is None,
            "later": [f.result() for f in slow],
        }

    outcome = timing.with_options(task_runner=runner())()
    assert outcome["done"] == 10 and outcome["not_done"] is True and outcome["unsettled"] is True
    assert outcome["message"].endswith("did not complete within 0.01 seconds")
    assert outcome["later"] == [0, 1, 2]


def test_a_killed_worker_and_a_cancelled_future_surface_as_with_prefect_dask(runner):
    """Neither has a State to fetch: ``result()`` raises Dask's error, ``wait()`` returns
    quietly and leaves it unsettled, and their finished peers are fetched all the same."""
    from concurrent.futures import CancelledError

    from distributed import KilledWorker
    from prefect import flow

    t = _tasks()

    @flow
    def dying() -> dict:
        # The worker dies alone (a task running beside it on that worker would be
        # killed with it), then its peers run in the same group of submissions.
        killed = t.die.submit(0)
        _all_finished([killed])
        peers = [t.double.submit(x) for x in range(1, 20)]
        cancelled = t.slow.submit(1, 2)
        cancelled.wrapped_future.cancel()
        _all_finished(peers)
        outcome = {}
        for name, future in (("killed", killed), ("cancelled", cancelled)):
            future.wait()
            outcome[f"{name} unsettled"] = future._final_state is None
            try:
                future.result()
            except Exception as exc:  # noqa: BLE001 - the type is what is checked
                outcome[name] = type(exc)
        outcome["peers"] = [f.result() for f in peers]
        return outcome

    outcome = dying.with_options(task_runner=runner())()
    assert outcome["killed"] is KilledWorker and outcome["killed unsettled"] is True
    assert issubclass(outcome["cancelled"], CancelledError) and outcome["cancelled unsettled"] is True
    assert outcome["peers"] == [2 * x for x in range(1, 20)]


def test_a_future_pickles_without_its_group(runner):
    """A future carried inside a task's arguments (where the runner does not look) still
    travels, as prefect-dask's does."""
    import cloudpickle

    from flowrig.internals.task_futures import FetchGroup, FlowrigFuture

    class Wrapped:
        key = "k"

    group = FetchGroup()
    future = FlowrigFuture(Wrapped(), uuid.uuid4(), group)
    copy = cloudpickle.loads(cloudpickle.dumps(future))
    assert copy._group is None and copy.task_run_id == future.task_run_id and len(group) == 1
