"""A big map's task runs, several to a Dask task (chunks), on a real TLS LocalCluster of
worker processes: each task run keeps its own id, state and result; a chunk item reaches
a downstream task wherever it sits in its arguments; task runs that submit tasks do not
starve the pool; and a task run that takes its worker down takes only itself.

The cluster (2 workers, 2 threads each, ``allowed-failures`` 0) is
test_task_runner_patterns.py's: a map of 80 runs in chunks of 2 there.
"""

from __future__ import annotations

import pytest

from tests.e2e.local.test_task_runner_patterns import N, _all_finished, _tasks, two_worker_cluster


@pytest.fixture(scope="module")
def cluster(tls):
    with two_worker_cluster(tls) as made:
        yield made


def _chunked_runner(cluster, chunk):
    from flowrig.internals.task_runner import FlowrigTaskRunner

    local, security = cluster
    return FlowrigTaskRunner(address=local.scheduler_address, client_kwargs={"security": security},
                             events="drop", chunk=chunk)


@pytest.mark.parametrize("chunk", [None, 1])
def test_a_big_map_shares_dask_tasks_and_each_task_run_stays_its_own(cluster, chunk):
    from prefect import flow

    t = _tasks()

    @flow
    def mapped() -> dict:
        futures = t.double.map(range(N))
        states = [f.wait() or f.state for f in futures]
        return {
            "values": [s.result() for s in states],
            "states": {s.type.value for s in states},
            "task runs": len({f.task_run_id for f in futures}),
            "dask tasks": len({f.wrapped_future.key for f in futures}),
        }

    outcome = mapped.with_options(task_runner=_chunked_runner(cluster, chunk))()
    assert outcome["values"] == [2 * x for x in range(N)]
    assert outcome["states"] == {"COMPLETED"} and outcome["task runs"] == N
    # 4 threads, 8 Dask tasks each at least: 80 task runs go 2 to a Dask task.
    assert outcome["dask tasks"] == (N if chunk == 1 else N // 2)


def test_a_chunk_item_reaches_downstream_tasks_wherever_it_sits(cluster):
    """In a list, a dict, a tuple, beside a plain value, in ``wait_for``, and as the
    upstream of another map (each item of ``inc.map`` picks its own)."""
    from prefect import flow, task

    t = _tasks()

    @task
    def shape(value: dict) -> dict:
        return value

    @flow
    def downstream() -> dict:
        futures = t.double.map(range(N))
        assert len({f.wrapped_future.key for f in futures}) < N  # chunked
        return {
            "list": t.total.submit([futures[1], futures[N - 1]]).result(),
            "nested": shape.submit({"pair": (futures[2], 7), "deep": {"x": [futures[3]]}}).result(),
            "alone": t.inc.submit(futures[7]).result(),
            "waited": t.inc.submit(5, wait_for=[futures[40], futures[41]]).result(),
            "chain": t.inc.map(futures).result(),
            "all": t.total(futures),
        }

    outcome = downstream.with_options(task_runner=_chunked_runner(cluster, None))()
    assert outcome == {
        "list": 2 + 2 * (N - 1),
        "nested": {"pair": (4, 7), "deep": {"x": [6]}},
        "alone": 15,
        "waited": 6,
        "chain": [2 * x + 1 for x in range(N)],
        "all": N * (N - 1),
    }


def test_task_runs_of_a_chunk_that_submit_tasks_finish(cluster):
    """Each task run of a chunk waits on a task of its own: it leaves the worker's
    thread pool to wait, and the next task run of its chunk waits for a thread again,
    so that neither the tasks waited on nor the pool's limit are starved."""
    from prefect import flow, task

    t = _tasks()

    @task
    def parent(x: int) -> int:
        return t.double.submit(x).result() + 1

    @flow
    def umbrella() -> dict:
        futures = parent.map(range(N))
        return {"values": futures.result(), "dask tasks": len({f.wrapped_future.key for f in futures})}

    outcome = umbrella.with_options(task_runner=_chunked_runner(cluster, None))()
    assert outcome == {"values": [2 * x + 1 for x in range(N)], "dask tasks": N // 2}


def test_a_task_run_that_kills_its_worker_takes_only_itself(cluster, tmp_path):
    """Dask gives up on the chunk whose task run killed its worker (and on the chunks
    beside it on that worker): each such chunk is split, its task runs run again one
    Dask task each, and every one completes, the task run that killed its worker
    included (it kills it only once). Unsplit, all of them would raise KilledWorker."""
    from prefect import flow, task

    marker = tmp_path / "died-once"

    @task
    def die_once(x: int) -> int:
        import os

        if x == 0 and not os.path.exists(marker):
            open(marker, "w").close()
            os._exit(1)
        return x

    @flow
    def dying() -> dict:
        futures = die_once.map(range(N))
        _all_finished(futures)
        first = len({f.wrapped_future.key for f in futures})
        values = [f.result() for f in futures]
        return {"values": values, "first dask tasks": first, "split": sum(f._index is None for f in futures)}

    outcome = dying.with_options(task_runner=_chunked_runner(cluster, None))()
    assert marker.exists() and outcome["first dask tasks"] == N // 2
    assert outcome["values"] == list(range(N))
    # The dead chunk's two task runs at least got Dask tasks of their own.
    assert outcome["split"] >= 2


def test_chunk_items_unpickle_and_swap_in_nested_structures():
    """The worker's side of a chunk item, without a cluster: what it swaps in, and the
    parameters it leaves as the very objects they were."""
    import cloudpickle

    from flowrig.internals.task_worker import ChunkItem, _with_upstream

    item = cloudpickle.loads(cloudpickle.dumps(ChunkItem("c", 1)))
    chunks = {"c": ["s0", "s1", "s2"]}
    untouched = {"big": list(range(5))}
    parameters = {"x": item, "xs": [ChunkItem("c", 0), ChunkItem("c", 2)], "d": {"k": (ChunkItem("c", 2), 3)},
                  "plain": untouched}
    swapped, waits = _with_upstream(parameters, [ChunkItem("c", 0)], (chunks, ("x", "xs", "d"), True))
    assert swapped == {"x": "s1", "xs": ["s0", "s2"], "d": {"k": ("s2", 3)}, "plain": untouched}
    assert swapped["plain"] is untouched and waits == ["s0"]
    assert parameters["x"] is item  # the shipped dict is not changed in place
    assert _with_upstream(parameters, None, None) == (parameters, None)
