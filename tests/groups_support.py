"""A flow project with two worker groups, shared by the local and docker runs of
tests/e2e/*/test_worker_groups.py: its tasks say which worker ran them."""

from __future__ import annotations

#: Tasks tagged for the group ``gpu`` (by its name), for ``cpu`` (by its tags ``io``
#: and ``big``, the latter from a ``with tags()`` block), and untagged ones; each
#: returns its task run's name and its worker's name. A task with tags of both groups
#: is refused at submission, and the flow returns that message.
GROUPS_FLOW = """
    from distributed import get_worker
    from prefect import flow, tags, task
    from prefect.runtime import task_run


    def where():
        return [task_run.name, str(get_worker().name)]


    @task(tags=["gpu"])
    def train(x: int):
        return where()


    @task(tags=["io"])
    def fetch(x: int):
        return where()


    @task
    def anywhere(x: int):
        return where()


    @task(tags=["gpu", "io"])
    def confused():
        return where()


    @flow
    def main(n: int = 4):
        futures = [train.submit(i) for i in range(n)] + list(fetch.map(range(n)))
        with tags("big"):
            futures += [anywhere.submit(i) for i in range(n)]
        futures += list(anywhere.map(range(n)))
        try:
            confused.submit()
            refused = None
        except Exception as exc:
            refused = f"{type(exc).__name__}: {exc}"
        return {"ran": [f.result() for f in futures], "refused": refused}
"""


def groups_toml(backend: str) -> str:
    """The project's file: group ``gpu`` of one two-thread worker offering ``GPU``,
    group ``cpu`` of two workers taking the tags ``io`` and ``big``."""
    return f"""
    flow = "flow.py:main"

    [cluster]
    backend = "{backend}"
    max_workers = 3

    [[cluster.worker_groups]]
    name = "gpu"
    worker_threads = 2
    resources = {{ GPU = 1 }}

    [[cluster.worker_groups]]
    name = "cpu"
    n_workers = 2
    tags = ["io", "big"]
    """


def check_routing(result: dict, n: int = 4) -> None:
    """Every tagged task ran on its group's workers; the untagged ones somewhere; the
    task with both groups' tags was refused in one line naming them."""
    by_task: dict[str, set[str]] = {}
    for task_run_name, worker in result["ran"]:
        by_task.setdefault(task_run_name.rsplit("-", 1)[0], set()).add(worker)
    assert len(result["ran"]) == 4 * n
    assert by_task["train"] == {"gpu-1"}, by_task
    assert by_task["fetch"] <= {"cpu-1", "cpu-2"}, by_task
    cpu_runs = [w for name, w in result["ran"][2 * n:3 * n]]
    assert set(cpu_runs) <= {"cpu-1", "cpu-2"}, result["ran"]
    assert by_task["anywhere"] <= {"gpu-1", "cpu-1", "cpu-2"}, by_task
    assert result["refused"] == (
        "BadInput: task 'confused' has tags of worker groups 'cpu' and 'gpu': give it the tags of one group only"
    )
