"""``DaskCloudProviderEnvironment``, the Prefect 1 style front end: argument mapping,
and real runs of a small flow on a local mutual-TLS cluster in this process.

The flow lives at this module's top level, as it would in a user's script; the module
is import-safe, so worker processes may import it.

Cases that need none of these are in tests/unit/test_compat.py.
"""

from __future__ import annotations

import pytest
from prefect import flow, task

from flowrig import DaskCloudProviderEnvironment, RunOutcome
from flowrig.errors import BadInput


@task
def square(x: int) -> int:
    return x * x


@task
def where() -> str:
    from distributed import get_worker

    return get_worker().address


@flow(name="compat-squares")
def squares(x: list[int]) -> dict:
    values = square.map(x)
    return {"sum": sum(v.result() for v in values), "worker": where.submit().result()}


def cluster_snapshot() -> dict[str, tuple[int, bool]]:
    """Per running local cluster: workers it holds now, and whether it adapts."""
    from distributed.deploy.spec import SpecCluster

    return {
        c.scheduler_address: (len(c.workers), c._adaptive is not None)
        for c in list(SpecCluster._instances)
        if c.status.name == "running"
    }


# --- arguments, no cluster -----------------------------------------------------------------


def test_provider_class_names_and_classes():
    from distributed import LocalCluster

    assert DaskCloudProviderEnvironment("local").backend == "local"
    assert DaskCloudProviderEnvironment(LocalCluster).backend == "local"
    assert DaskCloudProviderEnvironment("pkg.mod:Cluster").backend == "pkg.mod:Cluster"


# --- real runs ------------------------------------------------------------------------------


def test_failing_on_execute_is_bad_input_before_any_cluster():
    calls = []

    def on_execute(parameters, provider_kwargs):
        raise RuntimeError(f"cannot size {parameters['x']}")

    env = DaskCloudProviderEnvironment(
        "local",
        on_execute=on_execute,
        on_start=lambda: calls.append("start"),
        on_exit=lambda: calls.append("exit"),
    )
    before = cluster_snapshot()
    with pytest.raises(BadInput) as info:
        env.run(squares, parameters={"x": [1]})
    assert str(info.value) == "sizing hook on_execute failed: RuntimeError: cannot size [1]"
    assert calls == ["exit"]  # never started, still told it is over
    assert cluster_snapshot() == before


def test_fixed_size_run_end_to_end():
    calls = []
    seen_size = {}

    def on_execute(parameters, provider_kwargs):
        provider_kwargs["n_workers"] = len(parameters["x"])  # 3, clamped to max_workers=1

    def on_start():
        calls.append("start")
        seen_size.update(cluster_snapshot())

    env = DaskCloudProviderEnvironment(
        "local",
        n_workers=1,
        max_workers=1,
        on_execute=on_execute,
        on_start=on_start,
        on_exit=lambda: calls.append("exit"),
    )
    outcome = env.run(squares, parameters={"x": [1, 2, "3"]})
    assert isinstance(outcome, RunOutcome)
    assert outcome.state == "Completed" and outcome.ok, outcome.message
    assert outcome.result["sum"] == 14  # "3" was cast to 3 by the flow's signature
    assert outcome.result["worker"].startswith("tls://127.0.0.1:")
    assert outcome.scheduler_address.startswith("tls://127.0.0.1:")
    assert (outcome.backend, outcome.n_workers) == ("local", 1)
    assert calls == ["start", "exit"]
    assert seen_size[outcome.scheduler_address] == (1, False)
    assert outcome.scheduler_address not in cluster_snapshot()  # torn down
    for step in ("prepare", "cluster_start", "flow", "teardown", "total"):
        assert outcome.timings[step] >= 0


def test_adaptive_run_starts_at_zero_workers():
    from distributed import LocalCluster

    seen_size = {}
    env = DaskCloudProviderEnvironment(
        LocalCluster,
        adaptive_min_workers=0,
        adaptive_max_workers=2,
        on_start=lambda: seen_size.update(cluster_snapshot()),
    )
    outcome = env.run(squares, parameters={"x": [4]})
    assert outcome.state == "Completed", outcome.message
    assert outcome.result["sum"] == 16
    assert outcome.result["worker"].startswith("tls://")
    assert (outcome.backend, outcome.n_workers) == ("local", 0)
    assert seen_size[outcome.scheduler_address] == (0, True)
    assert outcome.scheduler_address not in cluster_snapshot()
