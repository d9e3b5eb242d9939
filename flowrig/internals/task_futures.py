"""The futures flowrig's task runner hands out: prefect-dask's, whose finished states
arrive in batches whatever way the flow waits on them.

prefect-dask's ``PrefectDaskFuture.wait()`` and ``.result()`` each fetch one State from
the cluster, a round trip through the scheduler per future: ``[f.result() for f in
futures]``, ``prefect.futures.wait(futures)``, ``as_completed`` and a direct call
``total(futures)`` (Prefect resolves each future with ``wait()`` and reads ``.state``)
all pay it once per task. Here every future belongs to a :class:`FetchGroup` (one per
``map``; one per 4096 ``submit`` calls), and waiting on one future with no timeout
fetches it together with every other member the client already knows to be finished, in
one ``Client.gather``. Each fetched State becomes the member's ``_final_state``, which
is what prefect-dask sets once a future has been waited on, so later waits cost nothing.

Anything else takes prefect-dask's own path untouched, so that errors and timeouts
behave exactly as there: a wait with a timeout, a future whose Dask task errored (a
``KilledWorker``, say) or was cancelled, a result that is not a State, and any failure
of the batched fetch itself.

Fenced by tests/e2e/local/test_internals_patterns.py: ``PrefectDaskFuture.wait``/
``.result`` and ``_final_state``; ``prefect.futures.wait`` and ``resolve_to_final_result``
calling ``wait()`` then reading ``.state``; ``PrefectFutureList.result()``/``.wait()``
asking each future with no timeout; ``Client.gather`` of a dict with
``errors="skip"``; ``Future.exception()`` waiting for any end without fetching data.
"""

from __future__ import annotations

import threading
import time
import weakref
from typing import Any, Callable

from prefect.states import State

from flowrig.internals.lost_task_runs import LostAwareFuture


class FetchGroup:
    """Futures whose finished states are fetched together; holds them weakly, so that a
    future the flow drops is released on the cluster as before."""

    #: Most results one gather brings.
    BATCH = 1024
    #: Members are scanned in submission order (the order Dask mostly runs them in) for
    #: finished ones; the scan stops after this many unfinished in a row, so that a wait
    #: on each of n futures in turn costs O(n) in all, not O(n^2).
    LOOKAHEAD = 256
    #: Seconds between two gathers of a group: a walk over a map's futures in turn
    #: (every way of waiting on a map is one: a list's ``.result()``/``.wait()``,
    #: ``wait``, ``as_completed``, a loop of ``.result()``, a direct call) would
    #: otherwise gather as often as tasks end (a round trip through the scheduler, and
    #: a send of every worker, per handful of tasks), and its runner took CPU from the
    #: workers, where one gather can bring what ended meanwhile (measured at n = 5000 on
    #: 3 workers: a direct call of a task on a mapped list 16% faster, a loop of
    #: ``.result()`` 10%).
    GATHER_INTERVAL = 0.05

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._members: list[weakref.ref[FlowrigFuture]] = []
        #: Members before this index are all settled (final, or gone).
        self._start = 0
        self._added = 0
        self._last_gather = -float("inf")

    def __len__(self) -> int:
        """Members ever added."""
        return self._added

    def add(self, future: "FlowrigFuture") -> None:
        with self._lock:
            self._members.append(weakref.ref(future))
            self._added += 1

    def _batch(self, target: "FlowrigFuture") -> list["FlowrigFuture"]:
        """``target`` and the members the client knows as finished and not yet fetched."""
        batch = [target]
        with self._lock:
            members, i = self._members, self._start
            while i < len(members) and ((f := members[i]()) is None or f._final_state):
                i += 1
            self._start = i
            misses = settled = 0
            while i < len(members) and len(batch) < self.BATCH and misses < self.LOOKAHEAD:
                f = members[i]()
                i += 1
                if f is None or f._final_state:
                    settled += 1
                elif f is not target:
                    if f._wrapped_future.status == "finished":
                        batch.append(f)
                        misses = 0
                    else:
                        misses += 1
            if settled > self.BATCH and settled > (len(members) - self._start) // 2:
                # Settled members behind an unsettled one (a slow task early in the
                # list) would be scanned again by every fetch: drop them, once.
                self._members = [r for r in members[self._start:] if (f := r()) is not None and not f._final_state]
                self._start = 0
        return batch

    def fetch(self, target: "FlowrigFuture") -> None:
        """Wait for ``target`` (moving no data), then fetch its state with its finished
        peers' in one gather. Leaves ``target`` unsettled where prefect-dask's path must
        answer: it errored, was cancelled, or the fetch failed."""
        wrapped = target._wrapped_future
        try:
            if wrapped.status == "pending":
                # Waits for the task's end, whatever it is, and moves no data (one
                # call, without as_completed's polling of a condition).
                wrapped.exception()
            if wrapped.status != "finished":
                return
            # A walk over the group's futures in turn (a list's ``.result()``, Prefect
            # resolving a direct call's list, a loop of ``.result()``, ``as_completed``)
            # would otherwise gather once per handful of tasks as they end, whether it
            # waited for this one or found it ended just after the last gather: at most
            # one gather per interval, which brings what ended meanwhile.
            delay = self._last_gather + self.GATHER_INTERVAL - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            batch = self._batch(target)
            self._last_gather = time.monotonic()
            values = wrapped.client.gather({f._wrapped_future.key: f._wrapped_future for f in batch},
                                           errors="skip")
        except Exception:
            return
        for future in batch:
            value = future._pick(values.get(future._wrapped_future.key))
            if isinstance(value, State):
                future._final_state = value


class Chunk:
    """One Dask task that runs several task runs of a map, as the runner keeps it while
    it runs: how to submit those task runs again, one Dask task each.

    When Dask gives up on the chunk (a task run that takes its worker down, its memory
    or the process, would otherwise take the chunk's other task runs with it), the
    first of its futures to see it splits it; its task runs then run, and fail, each on
    its own, as they would unchunked. A chunk that finished forgets how.
    """

    __slots__ = ("_lock", "_resubmit", "_split")

    def __init__(self, wrapped_future: Any, resubmit: Callable[[], list[Any]]) -> None:
        self._lock = threading.Lock()
        self._resubmit: Callable[[], list[Any]] | None = resubmit
        self._split: list[Any] | None = None
        wrapped_future.add_done_callback(self._ended)

    def _ended(self, future: Any) -> None:
        if future.status == "finished":
            self._resubmit = None  # what it holds (the task runs' arguments) goes

    def split(self) -> list[Any] | None:
        """A Dask future per task run, in order (submitted by the first call); ``None``
        for a chunk that finished."""
        with self._lock:
            if self._split is None and self._resubmit is not None:
                resubmit, self._resubmit = self._resubmit, None
                self._split = resubmit()
            return self._split


class FlowrigFuture(LostAwareFuture):
    """A ``PrefectDaskFuture`` (whose task run ends Crashed when Dask gives up on it,
    :mod:`~flowrig.internals.lost_task_runs`) that, waited on with no timeout, fetches
    its state with its group's (:class:`FetchGroup`). One of a :class:`Chunk`'s has
    ``index``, its place in the chunk."""

    def __init__(self, wrapped_future: Any, task_run_id: Any, group: FetchGroup | None = None,
                 index: int | None = None, chunk: Chunk | None = None) -> None:
        super().__init__(wrapped_future=wrapped_future, task_run_id=task_run_id)
        self._group = group
        self._index = index
        self._chunk = chunk
        if group is not None:
            group.add(self)

    def __getstate__(self) -> dict[str, Any]:
        # A future pickled into a task's arguments travels as prefect-dask's would: its
        # group (a lock, weak references) and chunk belong to this process.
        return {**self.__dict__, "_group": None, "_chunk": None}

    def _rebind(self) -> bool:
        chunk = self._chunk
        split = chunk.split() if chunk is not None and self._index is not None else None
        if split is None:
            return False
        self._wrapped_future, self._index, self._chunk = split[self._index], None, None
        return True

    def _fetch(self, timeout: float | None) -> None:
        if timeout is None and not self._final_state and self._group is not None:
            self._group.fetch(self)

    def wait(self, timeout: float | None = None) -> None:
        self._fetch(timeout)
        if not self._final_state:
            super().wait(timeout=timeout)

    def result(self, timeout: float | None = None, raise_on_failure: bool = True) -> Any:
        self._fetch(timeout)
        return super().result(timeout=timeout, raise_on_failure=raise_on_failure)


class SubmitGroups:
    """The rolling group of a runner's ``submit`` calls: a new one every ``SIZE``."""

    SIZE = 4096

    def __init__(self) -> None:
        self._group = FetchGroup()

    def current(self) -> FetchGroup:
        if len(self._group) >= self.SIZE:
            self._group = FetchGroup()
        return self._group
