"""How many task runs of a map one Dask task runs, from the map's size and the threads
the cluster has or may have (``FlowrigTaskRunner._chunk_size``)."""

from __future__ import annotations

import pytest

from flowrig.internals.task_runner import FlowrigTaskRunner


class _Client:
    """Answers ``nthreads()`` as a scheduler would: threads by worker address."""

    def __init__(self, threads: dict[str, int]) -> None:
        self.threads = threads

    def nthreads(self) -> dict[str, int]:
        return dict(self.threads)


def _runner(joined: dict[str, int], **kwargs) -> FlowrigTaskRunner:
    runner = FlowrigTaskRunner(address="tls://127.0.0.1:1", **kwargs)
    runner._client = _Client(joined)
    return runner


@pytest.mark.parametrize(
    ("n", "joined", "kwargs", "size"),
    [
        (5000, {"a": 1, "b": 1, "c": 1}, {"senders": 3}, 16),  # 208 per thread: the cap
        (200, {"a": 1, "b": 1, "c": 1}, {"senders": 3}, 8),  # 8 Dask tasks per thread
        (47, {"a": 1, "b": 1, "c": 1}, {"senders": 3}, 1),  # 47 // 24: not 2 to a Dask task
        (10, {"a": 1}, {}, 1),  # too small to chunk
        (1000, {"a": 1}, {"chunk": 1}, 1),  # turned off
        (1000, {"a": 1}, {"chunk": 4}, 4),
        # An adaptive cluster of up to 10 workers of 4 threads, none joined yet: sized
        # for its 40 threads (1000 // 320), not for the one it has.
        (1000, {}, {"senders": 10, "worker_threads": 4}, 3),
        (1000, {}, {"senders": 10}, 12),
        # More threads joined than the run's size says (another client's workers).
        (1000, {f"w{i}": 2 for i in range(30)}, {"senders": 3}, 2),
    ],
)
def test_chunk_size(n, joined, kwargs, size):
    assert _runner(joined, **kwargs)._chunk_size(n) == size


def test_a_scheduler_that_does_not_answer_leaves_the_map_unchunked():
    class Silent:
        def nthreads(self):
            raise OSError("timed out")

    runner = FlowrigTaskRunner(address="tls://127.0.0.1:1")
    runner._client = Silent()
    assert runner._chunk_size(5000) == 1
