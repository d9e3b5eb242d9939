"""Prefect's task-runner contract, kept by flowrig's runner.

Each behaviour that prefect-dask's and Prefect's own task-runner tests check is checked
here against :class:`~flowrig.internals.task_runner.FlowrigTaskRunner`, on real mutual-TLS
clusters, with a real Prefect server (``prefect server start``, which records task runs
and events):

- ``processes``: the local backend's own cluster (a scheduler process, worker processes
  forked from the fork server), as every local run gets it;
- ``threads``: a ``distributed.LocalCluster(processes=False)``, whose workers share
  this process (what a notebook often has).

The runner connects to each by its address, as every flowrig run does. The runner that
makes its own cluster (``cluster_class``), as prefect-dask's default does, is checked
once at the end.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
import uuid

import pytest
from prefect import flow, tags, task
from prefect.context import TagsContext
from prefect.futures import as_completed

pytestmark = pytest.mark.timeout(300)


@dataclasses.dataclass(frozen=True)
class Box:
    value: int


# --- tasks (at module level: process workers import them by reference) ---------------------


@task
def letter(name: str) -> str:
    return name


@task
def suffixed(value: str, suffix: str = "c") -> str:
    return value + suffix


@task
async def async_letter(name: str) -> str:
    await asyncio.sleep(0)
    return name


@task
async def async_suffixed(value: str) -> str:
    return value + "c"


@task
def now() -> float:
    time.sleep(0.05)
    return time.time()


@task
def raises(kind: str) -> None:
    raise {"runtime": RuntimeError, "value": ValueError}[kind](f"{kind} failure in a task")


@task
async def async_raises() -> None:
    raise RuntimeError("async failure in a task")


@task
def current_tags(a=None, b=None) -> set:
    return set(TagsContext.get().current_tags)


@task
async def async_current_tags(a=None, b=None) -> set:
    return set(TagsContext.get().current_tags)


@task
def sleep_for(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


@task
def pair(a, b) -> tuple:
    return a, b


@task
def numbers(n: int) -> list:
    return list(range(n))


@task
def boxes(n: int) -> list:
    return [Box(i) for i in range(n)]


@task
def unbox(box: Box) -> Box:
    return box


@task
def length_and_sum(data: list) -> tuple:
    return len(data), sum(data)


@task
def leaf(x: int) -> int:
    return x + 1


@task
def parent(x: int) -> int:
    futures = [leaf.submit(10 * x + i) for i in range(3)]
    return sum(f.result() for f in futures)


@task
def countdown(n: int) -> int:
    if n == 0:
        return 0
    return countdown.submit(n - 1).result()


@task
def where() -> str:
    from distributed import get_worker

    return get_worker().address


@task(timeout_seconds=1)
def too_slow() -> int:
    time.sleep(4)
    return 1


@task(timeout_seconds=0.5)
async def async_too_slow() -> int:
    await asyncio.sleep(4)
    return 1


@task
def interrupted() -> None:
    raise KeyboardInterrupt()


@task
def array_sum(n: int) -> int:
    """A dask.array graph on the run's own cluster, from inside a task."""
    import dask.array as da
    from prefect_dask import get_dask_client

    with get_dask_client() as client:
        return int(client.compute(da.arange(n, chunks=7).sum()).result())


@task
async def async_array_sum(n: int) -> int:
    import dask.array as da
    from prefect_dask import get_async_dask_client

    async with get_async_dask_client() as client:
        return int(await client.compute(da.arange(n, chunks=7).sum()))


@task
def lazy_array(n: int):
    import dask.array as da

    return da.arange(n, chunks=4)


@task
def computed(array) -> int:
    return int(array.sum().compute())


# --- fixtures ----------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def prefect_api(prefect_server):
    """Every flow and task of this module talks to the real Prefect server."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings(updates={PREFECT_API_URL: prefect_server}):
        yield prefect_server


@pytest.fixture(scope="module")
def processes_cluster(tls):
    """The local backend's cluster: what a local run's flow runs on."""
    from distributed import Client

    from flowrig.backends.base import ClusterSpec
    from flowrig.backends.local import LocalBackend
    from flowrig.project.sizing import ClusterSize

    spec = ClusterSpec(run_id=uuid.uuid4().hex[:10], size=ClusterSize(n_workers=2), tls=tls, worker_threads=2)
    started = LocalBackend().start(spec)
    try:
        # A client for the module's whole life: between tests no runner is connected,
        # and a flowrig scheduler without one stops itself (flowrig.roles.lifetime).
        with Client(started.scheduler_address, security=tls.to_security(), set_as_default=False):
            yield started.scheduler_address
    finally:
        started.close()


@pytest.fixture
def threads_cluster(tls):
    """Per test (it starts in a fraction of a second): a task that computes a dask
    collection on it makes its worker's own client, which distributed sets as this
    process's default until the worker closes."""
    from distributed import LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=2, processes=False, protocol="tls://", host="127.0.0.1",
                      security=tls.to_security(), dashboard_address=None) as cluster:
        yield cluster.scheduler_address


@pytest.fixture(params=["processes", "threads"])
def kind(request):
    return request.param


@pytest.fixture
def runner(kind, request, tls):
    from flowrig.internals.task_runner import FlowrigTaskRunner

    address = request.getfixturevalue(f"{kind}_cluster")
    return FlowrigTaskRunner(address=address, client_kwargs={"security": tls.to_security()}, events="send")


def dask_defaults() -> tuple:
    """This process's default Dask client and the dask config a client sets as default."""
    import dask
    from distributed.client import _get_global_client

    return _get_global_client(), dask.config.get("scheduler", None), dask.config.get("shuffle", None)


@pytest.fixture(autouse=True)
def defaults_left_alone():
    """No test of this module leaves a default Dask client or its config behind (checked
    after the test's own fixtures are gone)."""
    before = dask_defaults()
    yield
    assert dask_defaults() == before


# --- the runner itself ---------------------------------------------------------------------


def test_a_duplicate_is_equal_and_another_object(runner):
    twin = runner.duplicate()
    assert twin == runner and twin is not runner
    assert twin != type(runner)(address=runner.address, client_kwargs=runner.client_kwargs, events="drop")


def test_submitting_before_the_runner_started_is_an_error(runner):
    with pytest.raises(RuntimeError, match="must be started"):
        runner.submit(letter, {"name": "a"})


def test_submit_and_map_outside_a_flow_give_prefect_futures(runner):
    import distributed
    from prefect.futures import PrefectFuture

    with runner:
        future = runner.submit(async_letter, parameters={"name": "a"}, wait_for=[])
        future.wait()
        assert isinstance(future, PrefectFuture) and isinstance(future.task_run_id, uuid.UUID)
        assert isinstance(future.wrapped_future, distributed.Future)
        assert future.state.is_completed() and future.state.result() == "a"
        mapped = runner.map(pair, {"a": [1, 2, 3], "b": [4, 5, 6]})
        assert [f.result() for f in mapped] == [(1, 4), (2, 5), (3, 6)]
        assert len({f.task_run_id for f in mapped}) == 3


# --- flows: results, states, failures --------------------------------------------------------


def test_futures_states_and_results_of_a_flow(runner):
    submitted = []

    @flow(task_runner=runner)
    def letters():
        a = letter.submit("a")
        b = letter.submit("b")
        c = suffixed.submit(b)  # a future as a parameter
        submitted.extend([a, b, c])
        return a, b, c

    # Futures a flow returns come back as their final states.
    a, b, c = letters()
    assert (a.result(), b.result(), c.result()) == ("a", "b", "bc")
    assert all(state.is_completed() for state in (a, b, c))
    assert all(future.state.is_completed() for future in submitted)
    assert [future.result() for future in submitted] == ["a", "b", "bc"]
    # The dask key names the task (the dashboard shows task names).
    assert [future.wrapped_future.key.split("-")[0] for future in submitted] == ["letter", "letter", "suffixed"]


def test_a_failure_fails_the_flow_and_leaves_downstream_tasks_not_ready(runner):
    @flow(task_runner=runner)
    def failing():
        a = raises.submit("runtime")
        b = raises.submit("value")
        c = suffixed.submit(b)
        d = suffixed.submit(c)
        return a, b, c, d

    state = failing(return_state=True)
    assert state.is_failed()
    a, b, c, d = state.result(raise_on_failure=False)
    with pytest.raises(RuntimeError, match="runtime failure in a task"):
        a.result()
    with pytest.raises(ValueError, match="value failure in a task"):
        b.result()
    for downstream, upstream in ((c, b), (d, c)):
        assert downstream.is_pending() and downstream.name == "NotReady"
        assert f"Upstream task run '{upstream.state_details.task_run_id}' did not reach a 'COMPLETED' state" in (
            downstream.message
        )


def test_a_tasks_exception_is_raised_by_its_future(runner):
    with runner:
        with pytest.raises(ValueError, match="value failure in a task"):
            runner.submit(raises, {"kind": "value"}).result()
        with pytest.raises(RuntimeError, match="async failure in a task"):
            runner.submit(async_raises, {}).result()


def test_an_async_flow_with_async_tasks(runner):
    @flow(task_runner=runner)
    async def letters():
        a = async_letter.submit("a")
        b = async_letter.submit("b")
        c = async_suffixed.submit(b)
        mapped = async_suffixed.map(["x", "y"])
        return a.result(), c.result(), mapped.result()

    assert asyncio.run(letters()) == ("a", "bc", ["xc", "yc"])


@pytest.mark.parametrize("slow", [too_slow, async_too_slow], ids=["sync", "async"])
def test_a_task_timeout_fails_it_and_only_what_depends_on_it(runner, slow):
    @flow(task_runner=runner)
    def timed():
        a = slow.submit()
        b = suffixed.submit(a)
        c = letter.submit("independent")
        return a, b, c

    state = timed(return_state=True)
    assert state.is_failed()
    a, b, c = state.result(raise_on_failure=False)
    assert a.is_failed() and b.is_pending() and c.is_completed()


def test_an_interrupted_task_is_crashed_and_its_worker_lives_on(runner):
    """A task raising KeyboardInterrupt is Crashed; its worker (on a thread-pool cluster,
    every worker of this process) goes on running tasks."""
    with runner:
        future = runner.submit(interrupted, {})
        future.wait(timeout=60)
        assert future.state.is_crashed()
        assert runner.submit(letter, {"name": "after"}).result(timeout=60) == "after"


# --- ordering and dependencies ---------------------------------------------------------------


def test_wait_for_orders_a_task_after_one_and_after_disparate_upstreams(runner):
    @flow(task_runner=runner)
    def ordered():
        a = now.submit()
        b = now.submit()
        after_a = now.submit(wait_for=[a])
        after_both = now.submit(wait_for=[a, b])
        return a.result(), b.result(), after_a.result(), after_both.result()

    a, b, after_a, after_both = ordered()
    assert after_a > a
    assert after_both > a and after_both > b


def test_wait_for_a_failed_upstream_leaves_the_task_not_ready(runner):
    @flow(task_runner=runner)
    def blocked():
        upstream = raises.submit("runtime")
        downstream = letter.submit("never", wait_for=[upstream])
        upstream.wait()
        downstream.wait()
        return upstream.state, downstream.state

    upstream, downstream = blocked()
    assert upstream.is_failed()
    assert downstream.is_pending() and downstream.name == "NotReady"


def test_as_completed_yields_in_order_of_finishing_when_slots_allow(runner):
    # 2 workers x 2 threads: all three run at once.
    seconds = [0.5, 2.0, 4.0]
    with runner:
        futures = [runner.submit(sleep_for, {"seconds": s}) for s in reversed(seconds)]
        assert [f.result() for f in as_completed(futures)] == seconds


def test_submit_does_not_wait_for_upstream_futures(runner):
    @flow(task_runner=runner)
    def eager():
        started = time.monotonic()
        a = sleep_for.submit(1.0)
        b = sleep_for.submit(1.0, wait_for=[a])
        submitted = time.monotonic() - started
        return submitted, a.result(), b.result()

    submitted, a, b = eager()
    assert submitted < 1.0 and (a, b) == (1.0, 1.0)


# --- what reaches a task ---------------------------------------------------------------------


@pytest.mark.parametrize("tagged", [current_tags, async_current_tags], ids=["sync", "async"])
def test_tags_reach_submitted_and_mapped_tasks(runner, tagged):
    with tags("tag1", "tag2"):
        with runner:
            assert runner.submit(tagged, {}).result() == {"tag1", "tag2"}
            assert [f.result() for f in runner.map(tagged, {"a": [1, 2, 3], "b": [4, 5, 6]})] == [
                {"tag1", "tag2"}
            ] * 3


def test_a_map_over_a_future_resolved_to_a_list(runner):
    @flow(task_runner=runner)
    def mapped():
        listed = numbers.submit(3)
        return pair.map(listed, listed).result()

    assert mapped() == [(0, 0), (1, 1), (2, 2)]


def test_dataclasses_and_large_parameters_travel_to_tasks(runner):
    @flow(task_runner=runner)
    def travelling(n: int = 3):
        items = boxes(n)  # called in the flow: a plain list of dataclasses
        one = unbox.submit(items[0])
        many = unbox.map(items)
        big = length_and_sum.submit(list(range(10_000)), wait_for=[one])
        return [f.result() for f in [*many, one]], big.result()

    items, big = travelling()
    assert items == [Box(0), Box(1), Box(2), Box(0)]
    assert big == (10_000, sum(range(10_000)))


def test_a_dask_collection_passes_between_tasks(runner):
    @flow(task_runner=runner)
    def collection():
        return computed.submit(lazy_array.submit(20)).result()

    assert collection() == sum(range(20))


# --- tasks that submit tasks ------------------------------------------------------------------


def test_tasks_that_submit_tasks_finish_even_when_they_fill_every_thread(runner):
    """Six parents on four threads, each waiting on three tasks of its own: the parents
    leave their thread pool while they wait, so their tasks get threads."""

    @flow(task_runner=runner)
    def umbrella(n: int = 6):
        return parent.map(range(n)).result()

    assert umbrella() == [sum(10 * x + i + 1 for i in range(3)) for x in range(6)]
    # A second run on the same clusters and in the same process works just the same.
    assert umbrella(2) == [6, 36]


def test_a_chain_of_nested_submissions_deeper_than_the_threads(runner):
    @flow(task_runner=runner)
    def chain():
        return countdown.submit(6).result()

    assert chain() == 0


# --- clusters, clients and the default client ---------------------------------------------------


def test_the_runner_uses_its_address_not_a_default_client_of_another_cluster(runner, tls):
    """A default client of this process (a notebook's, to another cluster) is not taken
    for the run's: tasks run on the runner's address, and the default client is the
    same object before and after."""
    from distributed import Client, LocalCluster

    from flowrig.internals.task_runner import FlowrigTaskRunner

    with LocalCluster(n_workers=1, processes=False, dashboard_address=None) as other:
        with Client(other, set_as_default=True) as users:
            @flow(task_runner=runner)
            def located():
                return where.submit().result(), parent.submit(1).result()

            worker, nested = located()
            assert worker not in other.workers and worker.startswith("tls://")
            assert nested == 36
            from distributed import default_client

            assert default_client() is users
            fresh = FlowrigTaskRunner(address=runner.address, client_kwargs=runner.client_kwargs)
            with fresh:
                assert fresh.client.scheduler.address == runner.address


def test_get_dask_client_inside_a_task_over_the_runs_tls(runner, kind):
    if kind == "threads":
        pytest.skip("credentials come from the worker's settings, which flowrig's workers have")

    @flow(task_runner=runner)
    def on_cluster(n: int = 50):
        return array_sum.submit(n).result(), async_array_sum.submit(n).result()

    assert on_cluster() == (sum(range(50)), sum(range(50)))


def test_a_performance_report_is_written(runner, tmp_path):
    from flowrig.internals.task_runner import FlowrigTaskRunner

    report = tmp_path / "dask-report.html"
    reporting = FlowrigTaskRunner(address=runner.address, client_kwargs=runner.client_kwargs,
                                  performance_report_path=str(report))

    @flow(task_runner=reporting)
    def reported():
        return suffixed.submit(letter.submit("b")).result()

    assert reported() == "bc"
    assert "Dask Performance Report" in report.read_text()


def test_a_runner_that_makes_its_own_cluster(tls):
    """prefect-dask's default: the runner starts a cluster (here over TLS) and closes it;
    nested submissions reach it from its workers, with the workers' credentials."""
    from distributed import LocalCluster

    from flowrig.internals.task_runner import FlowrigTaskRunner

    security = tls.to_security()
    own = FlowrigTaskRunner(
        cluster_class=LocalCluster,
        cluster_kwargs={"n_workers": 1, "threads_per_worker": 2, "processes": True, "protocol": "tls://",
                        "host": "127.0.0.1", "security": security, "dashboard_address": None},
        client_kwargs={"security": security},
    )

    @flow(task_runner=own)
    def umbrella():
        return parent.map(range(3)).result()

    assert umbrella() == [6, 36, 66]


# --- assets -------------------------------------------------------------------------------------


def test_a_run_that_drops_events_gives_them_back_to_a_process_whose_workers_are_threads(
    threads_cluster, tls, prefect_server
):
    """A run on its embedded API drops its task events (``events="drop"``): Prefect's
    events client is the process's, so once that run is gone a later run in the same
    process (a cluster of threads, as in a notebook) has its events sent again."""
    import httpx

    from flowrig.internals import event_pacing
    from flowrig.internals import task_runner as runners

    dropping = runners.FlowrigTaskRunner(address=threads_cluster, client_kwargs={"security": tls.to_security()},
                                         events="drop")

    @task
    def one() -> int:
        return 1

    @flow(task_runner=dropping)
    def quiet() -> int:
        return one.submit().result()

    assert quiet() == 1
    deadline = time.monotonic() + 30
    # Its state on the workers is closed in a thread of their own, just after the flow.
    while event_pacing.OVERRIDE.active() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not event_pacing.OVERRIDE.active()

    sending = runners.FlowrigTaskRunner(address=threads_cluster, client_kwargs={"security": tls.to_security()},
                                        events="send")

    @flow(task_runner=sending)
    def told():
        one.submit().wait()
        from prefect.context import get_run_context

        return get_run_context().flow_run.id

    flow_run_id = told()
    query = {"filter": {"event": {"prefix": ["prefect.task-run."]},
                        "related": {"id": [f"prefect.flow-run.{flow_run_id}"]}}}
    deadline = time.monotonic() + 60
    while True:
        events = httpx.post(f"{prefect_server}/events/filter", json=query, timeout=30).raise_for_status().json()["events"]
        if events or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert {e["event"] for e in events} >= {"prefect.task-run.Completed"}, [e["event"] for e in events]


def test_task_events_go_at_the_pace_the_server_records_them(threads_cluster, tls, prefect_server):
    """A self-hosted server drops events beyond its in-memory queues (10 000 per consumer),
    which a run's workers fill in seconds: each worker keeps at most its share of the run's
    window of task runs unrecorded and waits for the server beyond it, so when the run
    ends at most that window is still to be recorded, and then every task run is."""
    import httpx
    from prefect.context import get_run_context

    from flowrig.internals import event_pacing
    from flowrig.internals.task_runner import FlowrigTaskRunner

    senders = event_pacing.RUN_WINDOW // 3  # a window of 3 task runs per worker process
    runner = FlowrigTaskRunner(address=threads_cluster, client_kwargs={"security": tls.to_security()},
                               events="send", senders=senders)

    @task
    def double(x: int) -> int:
        return 2 * x

    @flow(task_runner=runner)
    def many():
        assert sum(double.map(range(40)).result()) == 2 * sum(range(40))
        return get_run_context().flow_run.id

    event_pacing.STATS["most_in_flight"] = 0
    waits = event_pacing.STATS["waits"]
    flow_run_id = many()
    body = {"flow_runs": {"id": {"any_": [str(flow_run_id)]}},
            "task_runs": {"state": {"type": {"any_": ["COMPLETED"]}}}}

    def recorded() -> int:
        return httpx.post(f"{prefect_server}/task_runs/count", json=body, timeout=30).raise_for_status().json()

    assert recorded() >= 40 - 3
    deadline = time.monotonic() + 60
    while recorded() < 40 and time.monotonic() < deadline:
        time.sleep(0.5)
    assert recorded() == 40
    assert event_pacing.STATS["waits"] > waits
    assert 1 <= event_pacing.STATS["most_in_flight"] <= 3


def test_asset_materializations_are_recorded(runner, prefect_server):
    import httpx
    from prefect.assets import Asset, materialize
    from prefect.context import get_run_context

    suffix = uuid.uuid4().hex[:8]
    upstream = Asset(key=f"s3://data/raw-{suffix}")
    downstream = Asset(key=f"s3://data/processed-{suffix}")

    @materialize(upstream)
    async def extract():
        return {"rows": 50}

    @materialize(downstream)
    async def load(data):
        return {"rows": data["rows"] * 2}

    @flow(task_runner=runner)
    async def pipeline():
        processed = load.submit(extract.submit())
        processed.wait()
        return get_run_context().flow_run.id

    flow_run_id = asyncio.run(pipeline())
    query = {"filter": {"event": {"prefix": ["prefect.asset."]},
                        "related": {"id": [f"prefect.flow-run.{flow_run_id}"]}}}
    deadline = time.monotonic() + 60
    while True:
        found = httpx.post(f"{prefect_server}/events/filter", json=query, timeout=30).raise_for_status().json()
        events = found.get("events", [])
        if len(events) >= 3 or time.monotonic() > deadline:
            break
        time.sleep(1)
    by_kind = sorted((e["event"], e["resource"]["prefect.resource.id"]) for e in events)
    assert by_kind == sorted([
        ("prefect.asset.materialization.succeeded", upstream.key),
        ("prefect.asset.referenced", upstream.key),
        ("prefect.asset.materialization.succeeded", downstream.key),
    ])
    (loaded,) = [e for e in events if e["resource"]["prefect.resource.id"] == downstream.key]
    assert [r["prefect.resource.id"] for r in loaded["related"] if r.get("prefect.resource.role") == "asset"] == [
        upstream.key
    ]
