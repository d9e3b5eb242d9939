"""What flowrig.internals.task_futures assumes of the locked Prefect, prefect-dask and
distributed: each test fails when those versions stop behaving so."""

from __future__ import annotations

import time
import uuid

import pytest


class _Recorder:
    """A stand-in for a Dask future: records what is asked of it."""

    key = "recorded"

    def __init__(self, result=None, error: Exception | None = None) -> None:
        self.calls: list[tuple] = []
        self._result, self._error = result, error

    def result(self, timeout=None):
        self.calls.append(("result", timeout))
        if self._error is not None:
            raise self._error
        return self._result


class _Untouchable:
    key = "never"

    def __getattr__(self, name):
        raise AssertionError(f"the wrapped future was touched ({name})")


def test_prefect_dask_futures_settle_on_final_state_and_wait_through_the_dask_future():
    """``wait()`` fetches through ``_wrapped_future.result(timeout=)``, keeps a State as
    ``_final_state`` and swallows errors; ``result()`` and ``.state`` of a future whose
    ``_final_state`` is set touch nothing else (which is what a batched fetch sets)."""
    from prefect.states import Completed
    from prefect_dask.task_runners import PrefectDaskFuture

    state = Completed(data=7)
    recorded = _Recorder(result=state)
    future = PrefectDaskFuture(wrapped_future=recorded, task_run_id=uuid.uuid4())
    future.wait()
    assert recorded.calls == [("result", None)] and future._final_state is state
    # It fetches again on every wait, settled or not: why flowrig's futures wait first.
    future.wait()
    assert len(recorded.calls) == 2

    failing = PrefectDaskFuture(wrapped_future=_Recorder(error=RuntimeError("lost")), task_run_id=uuid.uuid4())
    failing.wait()
    assert failing._final_state is None
    with pytest.raises(RuntimeError, match="lost"):
        failing.result()

    settled = PrefectDaskFuture(wrapped_future=_Untouchable(), task_run_id=uuid.uuid4())
    settled._final_state = state
    assert settled.result() == 7 and settled.state is state


def test_prefect_waits_by_calling_wait_then_reading_state():
    """``prefect.futures.wait`` with no timeout calls ``wait()`` on each unsettled future
    and skips settled ones; ``resolve_to_final_result`` (a direct call's arguments) calls
    ``wait()`` then reads ``.state``; ``as_completed`` yields settled futures untouched."""
    from prefect.futures import PrefectFuture, as_completed, wait
    from prefect.states import Completed
    from prefect.utilities.engine import resolve_to_final_result

    log: list[tuple[str, object]] = []

    class Recording(PrefectFuture):
        def __init__(self, value: int) -> None:
            super().__init__(uuid.uuid4())
            self.value = value

        def wait(self, timeout=None):
            log.append(("wait", timeout))
            self._final_state = Completed(data=self.value)

        def result(self, timeout=None, raise_on_failure=True):
            raise AssertionError("not called")

        def add_done_callback(self, fn):
            raise AssertionError("a settled future needs no callback")

        @property
        def state(self):
            log.append(("state", None))
            return self._final_state

    settled = Recording(1)
    settled._final_state = Completed(data=1)
    unsettled = Recording(2)
    done, not_done = wait([settled, unsettled])
    assert log == [("wait", None)] and done == {settled, unsettled} and not not_done

    log.clear()
    assert resolve_to_final_result(Recording(3), {}) == 3
    assert log == [("wait", None), ("state", None)]

    assert list(as_completed([settled])) == [settled]


def test_a_future_lists_result_asks_each_future_for_its_result_without_a_timeout():
    """``PrefectFutureList.result()`` and ``.wait()`` with no timeout ask each future for
    its ``result()``/``wait()`` with no timeout, each once, in whatever order:
    what a map's futures are waited on through, so that each such call is served by
    its group's batched fetch (a timeout would take prefect-dask's path, one round trip
    per future)."""
    import threading

    from prefect.futures import PrefectFuture, PrefectFutureList
    from prefect.states import Completed

    log: list[tuple[str, int, object]] = []

    class Recording(PrefectFuture):
        def __init__(self, value: int) -> None:
            super().__init__(uuid.uuid4())
            self.value = value
            self._callbacks: list = []

        def wait(self, timeout=None):
            log.append(("wait", self.value, timeout))
            self._final_state = Completed(data=self.value)

        def result(self, timeout=None, raise_on_failure=True):
            log.append(("result", self.value, timeout))
            self._final_state = Completed(data=self.value)
            return self.value

        def add_done_callback(self, fn):
            self._callbacks.append(fn)

        def end(self) -> None:
            for fn in self._callbacks:
                fn(self)

    futures = PrefectFutureList(Recording(i) for i in range(4))
    # They end in reverse order, from another thread, once the list waits on them.
    threading.Timer(0.2, lambda: [f.end() for f in reversed(futures)]).start()
    assert futures.result() == [0, 1, 2, 3]
    assert sorted(log) == [("result", i, None) for i in range(4)], log

    log.clear()
    PrefectFutureList(Recording(i) for i in range(2)).wait()
    assert sorted(log) == [("wait", 0, None), ("wait", 1, None)]  # in no set order


@pytest.fixture(scope="module")
def client():
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=1, threads_per_worker=2, processes=False, dashboard_address=None) as cluster:
        with Client(cluster) as connected:
            yield connected


def _fail(seconds: float) -> None:
    time.sleep(seconds)
    raise ValueError("no")


def test_gather_of_a_dict_skips_errors_as_none(client):
    """``Client.gather({key: future}, errors="skip")`` gives None for an errored key
    (a list would drop it, shifting the rest); the statuses the fetch reads are these."""
    import distributed

    ok = client.submit(lambda: 1, pure=False)
    bad = client.submit(_fail, 0, pure=False)
    held = client.submit(time.sleep, 3, pure=False)
    distributed.wait([ok, bad])
    assert (ok.status, bad.status, held.status) == ("finished", "error", "pending")
    assert client.gather({ok.key: ok, bad.key: bad}, errors="skip") == {ok.key: 1, bad.key: None}
    assert client.gather([bad, ok], errors="skip") == [1]

    held.cancel()
    assert held.status == "cancelled"


def test_future_exception_waits_for_any_end_without_fetching_data(client, monkeypatch):
    """What a fetch waits with: ``Future.exception()`` returns once the task ends,
    finished (None), errored (its error) or cancelled (None), and gathers nothing."""
    import threading

    import distributed

    gathered = []
    original = distributed.Client._gather

    async def counting(self, futures, *args, **kwargs):
        gathered.append(futures)
        return await original(self, futures, *args, **kwargs)

    monkeypatch.setattr(distributed.Client, "_gather", counting)
    ok = client.submit(time.sleep, 0.3, pure=False)
    bad = client.submit(_fail, 0.3, pure=False)
    assert ok.status == "pending" and ok.exception() is None and ok.status == "finished"
    assert isinstance(bad.exception(), ValueError) and bad.status == "error"
    stuck = client.submit(time.sleep, 2, pure=False)
    threading.Timer(0.2, stuck.cancel).start()
    assert stuck.exception() is None and stuck.status == "cancelled"
    assert gathered == []
