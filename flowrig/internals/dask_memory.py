"""A worker restarted by its nanny for using too much memory, as the scheduler records it.

distributed's nanny watches its worker process's memory; past
``distributed.worker.memory.terminate`` (95 %) of the worker's memory limit it stops
the process, logs a warning in the worker's own log, and logs an event under the topic
:data:`RESTART_TOPIC` on the scheduler, with the worker's address, its process id and
the memory it used (``rss``). A run whose workers run in containers does not see
their logs; the event is how its host learns why a worker went.

Fenced here: the topic's name and fields (set in
``distributed.worker_memory.NannyMemoryManager.memory_monitor``), and reading a
scheduler's events over a cluster's scheduler connection with the ``events`` handler
(what ``Client.get_events`` calls). tests/test_internals.py checks both.
"""

from __future__ import annotations

from typing import Any

#: The scheduler's event topic of a nanny's restart for memory.
RESTART_TOPIC = "worker-restart-memory"


async def restarts(scheduler_comm: Any) -> tuple[tuple[float, dict[str, Any]], ...]:
    """The memory restarts the scheduler recorded so far, as ``(time, event)`` pairs;
    each event has ``worker`` (its address), ``pid`` and ``rss`` (bytes).

    ``scheduler_comm`` is a cluster's connection to its scheduler
    (``SpecCluster.scheduler_comm``).
    """
    events = await scheduler_comm.events(topic=RESTART_TOPIC)
    return tuple((float(when), dict(event)) for when, event in events if isinstance(event, dict))
