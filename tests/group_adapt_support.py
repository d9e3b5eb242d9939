"""A flow project with an adaptive worker group, shared by the runs of
tests/e2e/*/test_group_adapt.py: the group ``burst`` starts with no worker, grows for its
tagged tasks and shrinks once they are done; its tasks say which worker ran them."""

from __future__ import annotations

#: ``work`` tasks are tagged for ``burst`` and take 2 s each; ``census`` (tagged for the
#: fixed group ``base``) lists the cluster's workers before and, until the group has
#: shrunk, after them.
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


    @task(tags=["base"])
    def census():
        return sorted(str(w["name"]) for w in get_client().scheduler_info()["workers"].values())


    @flow
    def main(n: int = 6):
        before = census.submit().result()
        ran = [f.result() for f in [work.submit(i) for i in range(n)]]
        after, deadline = [], time.monotonic() + 40
        while time.monotonic() < deadline:
            after = census.submit().result()
            if not any(name.startswith("burst-") for name in after):
                break
            time.sleep(0.5)
        return {"before": before, "ran": ran, "after": after}
"""


def adapt_toml(backend: str, memory: str = "1GiB") -> str:
    """Group ``base``: one fixed worker; group ``burst``: 0 to 3 workers of ``memory``."""
    return f"""
    flow = "flow.py:main"

    [cluster]
    backend = "{backend}"
    max_workers = 4

    [[cluster.worker_groups]]
    name = "base"

    [[cluster.worker_groups]]
    name = "burst"
    memory = "{memory}"
    adapt = {{ minimum = 0, maximum = 3 }}
    """


def check_adapted(result: dict, memory_bytes: int, n: int = 6) -> None:
    """The group had no worker before its tasks, ran each of them on its own workers
    (more than one: it grew), each of its memory, and had none again after them."""
    assert result["before"] == ["base-1"], result
    workers = {worker for _, worker, _ in result["ran"]}
    assert len(result["ran"]) == n and all(name.rsplit("-", 1)[0] == "work" for name, _, _ in result["ran"]), result
    assert all(worker.startswith("burst-") for worker in workers) and 2 <= len(workers) <= 3, result
    assert {limit for _, _, limit in result["ran"]} == {memory_bytes}, result
    assert result["after"] == ["base-1"], result
