"""The common ways a flow waits on many tasks, for ``bench_scale.py --patterns`` and
``bench_versions.py``: one flow whose ``pattern`` parameter picks the pattern, and its
plain-Dask twin doing the same thing with the same calls a Dask user would write.

| pattern | flowrig flow | plain Dask twin |
|---|---|---|
| ``map-result`` | ``sum(double.map(xs).result())`` | ``sum(gather(map(double, xs)))`` |
| ``map-downstream`` | ``total(double.map(xs))`` (a direct call) | ``submit(sum, map(double, xs))`` |
| ``map-submit-downstream`` | ``total.submit(double.map(xs)).result()`` | the same as above |
| ``result-loop`` | ``sum([f.result() for f in double.map(xs)])`` | ``[f.result() for f in map(...)]`` |
| ``wait`` | ``prefect.futures.wait(fs)``, then the results | ``distributed.wait(fs)``, then gather |
| ``as-completed`` | ``prefect.futures.as_completed(fs)``, ``.result()`` each | ``distributed.as_completed`` |
| ``submit-loop`` | ``[double.submit(x) for x in xs]``, ``.result()`` each | ``submit`` in a loop, ``.result()`` each |
| ``map-chain`` | ``sum(inc.map(double.map(xs)).result())`` | ``gather(map(inc, map(double, xs)))`` |

The flow's ``ballast`` parameter is a list that it only carries (``list-param`` in
``bench_versions.py``). Every pattern's result is ``expected(pattern, n)``, which both sides are checked against.
"""

from __future__ import annotations

import textwrap

PATTERNS = ("map-result", "map-downstream", "map-submit-downstream", "result-loop", "wait", "as-completed",
            "submit-loop", "map-chain")

FLOW = textwrap.dedent(
    """
    from prefect import flow, task
    from prefect.futures import as_completed, wait

    @task
    def double(x: int) -> int:
        return 2 * x

    @task
    def inc(x: int) -> int:
        return x + 1

    @task
    def total(values: list[int]) -> int:
        return sum(values)

    @flow
    def patterns(n: int = 10, pattern: str = "map-result", ballast: list[int] | None = None) -> int:
        # ``ballast``: a list parameter that only travels (with the flow run's context).
        xs = range(n)
        if pattern == "map-result":
            return sum(double.map(xs).result())
        if pattern == "map-downstream":
            return total(double.map(xs))
        if pattern == "map-submit-downstream":
            return total.submit(double.map(xs)).result()
        if pattern == "result-loop":
            return sum([f.result() for f in double.map(xs)])
        if pattern == "wait":
            futures = double.map(xs)
            wait(futures)
            return sum(f.result() for f in futures)
        if pattern == "as-completed":
            return sum(f.result() for f in as_completed(double.map(xs)))
        if pattern == "submit-loop":
            futures = [double.submit(x) for x in xs]
            return sum(f.result() for f in futures)
        if pattern == "map-chain":
            return sum(inc.map(double.map(xs)).result())
        raise ValueError(f"unknown pattern {pattern!r}")
    """
)

PLAIN = textwrap.dedent(
    """
    import sys
    import distributed
    from distributed import Client
    from plain_tls import security, tls_cluster

    def double(x):
        return 2 * x

    def inc(x):
        return x + 1

    def run(client, pattern, xs):
        if pattern == "map-result":
            return sum(client.gather(client.map(double, xs)))
        if pattern in ("map-downstream", "map-submit-downstream"):
            return client.submit(sum, client.map(double, xs)).result()
        if pattern == "result-loop":
            return sum([f.result() for f in client.map(double, xs)])
        if pattern == "wait":
            futures = client.map(double, xs)
            distributed.wait(futures)
            return sum(client.gather(futures))
        if pattern == "as-completed":
            return sum(f.result() for f in distributed.as_completed(client.map(double, xs)))
        if pattern == "submit-loop":
            futures = [client.submit(double, x, pure=False) for x in xs]
            return sum(f.result() for f in futures)
        if pattern == "map-chain":
            return sum(client.gather(client.map(inc, client.map(double, xs))))
        raise ValueError(pattern)

    if __name__ == "__main__":
        certs, n, pattern = sys.argv[1], int(sys.argv[2]), sys.argv[3]
        with tls_cluster(certs, %(workers)d) as cluster:
            with Client(cluster, security=security(certs)) as client:
                print(run(client, pattern, range(n)))
    """
)


def plain_script(workers: int) -> str:
    return PLAIN % {"workers": workers}


def expected(pattern: str, n: int) -> int:
    """What both sides of ``pattern`` return for ``n`` items."""
    return n * n if pattern == "map-chain" else n * (n - 1)


def target(n: int) -> float | None:
    """The issue's ratio target at ``n`` (none below 1000)."""
    return 2.0 if n >= 5000 else 2.2 if n >= 1000 else None
