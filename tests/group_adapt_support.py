"""A flow project with two adaptive worker groups, shared by the runs of
tests/e2e/*/test_group_adapt.py: the first group ``base`` (1-2 workers) grows for untagged
tasks that wait; ``burst`` (0-3) starts with no worker, grows for its tagged tasks; both
shrink once their tasks are done. The tasks say which worker ran them."""

from __future__ import annotations

#: ``anywhere`` tasks are untagged and ``work`` tasks tagged for ``burst``, 2 s each;
#: ``census`` (tagged for ``base``) lists the cluster's workers before them and, until
#: both groups have shrunk, after them.
ADAPT_FLOW = """
    import time

    from distributed import get_client, get_worker
    from prefect import flow, task
    from prefect.runtime import task_run


    @task(tags=["burst"])
    def work(i: int):
        time.sleep(2)
        worker = get_worker()
        return [task_run.name, str(worker.name), worker.memory_manager.memory_limit]


    @task
    def anywhere(i: int):
        time.sleep(2)
        return [task_run.name, str(get_worker().name)]


    @task(tags=["base"])
    def census():
        return sorted(str(w["name"]) for w in get_client().scheduler_info()["workers"].values())


    @flow
    def main(n: int = 6):
        before = census.submit().result()
        plain = [f.result() for f in [anywhere.submit(i) for i in range(n)]]
        ran = [f.result() for f in [work.submit(i) for i in range(n)]]
        after, deadline = [], time.monotonic() + 40
        while time.monotonic() < deadline:
            after = census.submit().result()
            if len(after) == 1:
                break
            time.sleep(0.5)
        return {"before": before, "plain": plain, "ran": ran, "after": after}
"""


def adapt_toml(backend: str, memory: str = "1GiB") -> str:
    """Group ``base``: 1 to 2 workers; group ``burst``: 0 to 3 workers of ``memory``."""
    return f"""
    flow = "flow.py:main"

    [cluster]
    backend = "{backend}"
    max_workers = 5

    [[cluster.worker_groups]]
    name = "base"
    adapt = {{ minimum = 1, maximum = 2 }}

    [[cluster.worker_groups]]
    name = "burst"
    memory = "{memory}"
    adapt = {{ minimum = 0, maximum = 3 }}
    """


def check_adapted(result: dict, memory_bytes: int, n: int = 6) -> None:
    """The first group grew for the untagged tasks (which ran on its workers: the other
    group had none); the other group had no worker before its tasks, ran each of them
    on its own workers (more than one: it grew), each of its memory; after them both
    were back at their minimum."""
    assert result["before"] == ["base-1"], result
    plain = {worker for _, worker in result["plain"]}
    assert len(result["plain"]) == n and plain == {"base-1", "base-2"}, result
    workers = {worker for _, worker, _ in result["ran"]}
    assert len(result["ran"]) == n and all(name.rsplit("-", 1)[0] == "work" for name, _, _ in result["ran"]), result
    assert all(worker.startswith("burst-") for worker in workers) and 2 <= len(workers) <= 3, result
    assert {limit for _, _, limit in result["ran"]} == {memory_bytes}, result
    assert len(result["after"]) == 1 and result["after"][0].startswith("base-"), result
