"""Events a Dask scheduler keeps, read through a cluster's own scheduler RPC.

A nanny whose worker process goes over its memory limit logs an event on the scheduler
before it ends that process (``Nanny.log_event``), wherever the nanny runs: in this
process (the local backend), in a container, on a cloud task. The scheduler keeps the
last events of each topic; reading them tells why a worker that left was lost.

Fenced here (tests/e2e/local/test_internals.py checks both on a real cluster):

- the scheduler's ``events`` RPC handler, which ``Client.get_events`` calls, answering
  ``(timestamp, message)`` pairs of one topic;
- the memory monitor's event: topic :data:`MEMORY_RESTART_TOPIC`, message
  ``{"worker": <address>, "pid": ..., "rss": <bytes>}``.

The docker backend's host names such workers to the person running the flow
(:mod:`flowrig.backends.docker.memory`), and :mod:`flowrig.backends.watch` tells why a
worker was lost.
"""

from __future__ import annotations

from typing import Any

#: The topic of the event a nanny's memory monitor logs before it ends its worker.
MEMORY_RESTART_TOPIC = "worker-restart-memory"


async def memory_restart_events(scheduler_comm: Any) -> tuple[tuple[float, dict[str, Any]], ...]:
    """Every memory restart the scheduler (``scheduler_comm``, a cluster's ``rpc``)
    remembers, as ``(time, message)`` pairs; a message has ``worker`` (its address),
    ``pid`` and ``rss`` (bytes). A nanny that restarts its worker again at the same
    address logs another pair: its time and pid tell them apart."""
    events = await scheduler_comm.events(topic=MEMORY_RESTART_TOPIC)
    return tuple((float(when), dict(message)) for when, message in events or () if isinstance(message, dict))


async def memory_restarts(scheduler_comm: Any) -> dict[str, int]:
    """``worker address -> resident bytes`` of each worker its nanny ended for memory,
    as the scheduler (``scheduler_comm``, a cluster's ``rpc``) remembers them."""
    found: dict[str, int] = {}
    for _, message in await memory_restart_events(scheduler_comm):
        if isinstance(message.get("worker"), str):
            found[message["worker"]] = int(message.get("rss") or 0)
    return found
