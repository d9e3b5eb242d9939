"""What the scheduler and every worker container of one docker cluster share
(:class:`RunSettings`), and how the cluster's event loop calls the engine
(:func:`in_thread`)."""

from __future__ import annotations

import asyncio
import functools
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

from flowrig.backends.docker.plans import DRAIN_TIMEOUT
from flowrig.backends.usage import LifeLog


@dataclass(frozen=True)
class RunSettings:
    """What the scheduler and every worker container of one cluster share."""

    client: Any
    run_id: str
    image: str
    network: str
    tls: Any
    own_network: bool
    publish: bool
    worker_threads: int
    environment: Mapping[str, str]
    worker_memory: str | None
    worker_preload: tuple[str, ...]
    scheduler_start_timeout: float
    no_client_timeout: float | None = None
    drain_timeout: float = DRAIN_TIMEOUT
    #: The run's secrets by name: delivered to each worker with its certificates.
    secret_environment: Mapping[str, str] = field(default_factory=dict)
    #: Where each container's life is logged (:mod:`flowrig.backends.docker.lives`).
    lives: LifeLog = field(default_factory=LifeLog)
    #: The engine's CPUs and memory bytes: the shape of a container without limits.
    host: tuple[int, int] = (0, 0)
    #: The workers the cluster starts with (name: options), launched beside the scheduler;
    #: their launches under way by name, until each worker's own start takes its own.
    first_workers: dict[Any, dict[str, Any]] = field(default_factory=dict)
    early: dict[Any, "asyncio.Future[Any]"] = field(default_factory=dict)
    #: When each container of the cluster was started, by container name
    #: (``time.perf_counter()``): the start's timeline (:attr:`DockerCluster.start_marks`).
    started: dict[str, float] = field(default_factory=dict)


async def in_thread(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Call blocking ``fn`` (docker-py) in a thread: the cluster's event loop must not block."""
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(None, functools.partial(fn, *args, **kwargs))
