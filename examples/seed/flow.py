"""The seed example: double every item of ``x`` on the cluster, then add them up.

The sizing hook keeps Prefect 1's ``on_execute(parameters, provider_kwargs)``
signature: it asks for one worker per five items, clamped to 1-10 the right way round.
"""

from __future__ import annotations

import math
from typing import Any

from prefect import flow, task


@task
def times_two(x: int) -> int:
    return x * 2


@task
def get_sum(x: list[int]) -> int:
    return sum(x)


@flow(name="dask-cloud-provider-test")
def dask_cloud_provider_test(x: list[int]) -> int:
    doubled = times_two.map(x)
    return get_sum.submit(doubled).result()


def on_execute(parameters: dict[str, Any], provider_kwargs: dict[str, Any]) -> None:
    natural = math.ceil(len(parameters.get("x", [])) / 5)
    provider_kwargs["n_workers"] = max(1, min(10, natural))
