"""Telling a worker's own Dask client from the runner's, on the scheduler.

A task that calls ``distributed.get_client()`` (prefect-dask's ``get_dask_client``
does) makes its worker open a client of its own, which the worker keeps until it
exits. The scheduler's lifetime rule (:mod:`flowrig.roles.lifetime`) must not count
it as the run's runner, or a task could keep its own cluster alive after the runner
was lost.

Fenced here: ``Worker._get_client`` names that client ``"worker"``, and a client's id
is ``Client-<name>-<uuid>``; tests/e2e/local/test_internals.py checks both on a real cluster.
"""

from __future__ import annotations

#: How the id of a worker's own client starts.
WORKER_CLIENT_PREFIX = "Client-worker-"
#: The scheduler's pseudo-client that holds ``fire_and_forget`` futures.
FIRE_AND_FORGET = "fire-and-forget"


def is_runner_client(client_id: str) -> bool:
    """Whether ``client_id`` (a key of ``Scheduler.clients``) is a client from outside
    the cluster, such as the runner's, rather than a worker's own or the scheduler's."""
    return client_id != FIRE_AND_FORGET and not client_id.startswith(WORKER_CLIENT_PREFIX)
