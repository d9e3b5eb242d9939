"""What a cloud backend supplies to a :class:`~flowrig.backends.pool.cluster.PoolCluster`:
a :class:`Launcher`, and the records it answers with.

A launcher knows how to start the scheduler and a batch of workers, how to observe all
of them in one call, and how to stop them; it knows nothing of deadlines, polling or
replacement, which the pool owns.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar, Sequence

from flowrig.errors import InfrastructureError

if TYPE_CHECKING:
    from flowrig.backends.usage import Placement


@dataclass(frozen=True)
class Observed:
    """What a launcher saw of one role.

    Parameters
    ----------
    status
        ``pending`` (asked for, not running yet), ``running`` or ``stopped``.
    reason
        Why it stopped, one line (stop code, stopped reason, the container's reason).
    moved
        It stopped before it ever ran, for want of capacity in its market, and the launcher
        asks its replacement in another (``spot = "fallback"``; said in the launcher's own
        line): the pool replaces it at once, and counts no failure.
    """

    status: str
    reason: str = ""
    moved: bool = False


@dataclass(frozen=True)
class Endpoint:
    """Where a started scheduler listens.

    Parameters
    ----------
    contact_address
        ``tls://`` address the workers use.
    client_address
        ``tls://`` address this process uses (the same unless it is published elsewhere).
    dashboard_link
        URL of the dashboard, when it is reachable from here.
    """

    contact_address: str
    client_address: str | None = None
    dashboard_link: str | None = None


@dataclass(frozen=True)
class WorkerStart:
    """What came of asking a launcher for workers.

    Parameters
    ----------
    started
        ``name -> handle`` of each worker started.
    refused
        One reason per worker the API did not start (capacity, limits).
    """

    started: dict[str, str]
    refused: list[str] = field(default_factory=list)


class StartTimeout(InfrastructureError):
    """The start deadline passed; the message says what was still pending."""


class Launcher(abc.ABC):
    """How one backend starts, observes and stops a run's roles.

    Every method blocks (it calls a cloud API or an engine) and runs in a thread off the
    cluster's event loop. Handles are the launcher's own ids (a task ARN, a container id).
    """

    #: What a role is called in messages ("task", "container", "instance").
    kind: ClassVar[str] = "task"

    @abc.abstractmethod
    def start_scheduler(self) -> str:
        """Ask for the scheduler; its handle."""

    @abc.abstractmethod
    def scheduler_endpoint(self, handle: str) -> Endpoint:
        """Where the running scheduler ``handle`` listens."""

    @abc.abstractmethod
    def start_workers(
        self, scheduler_address: str, count: int, replacing: Sequence[str] = (), group: str = ""
    ) -> WorkerStart:
        """Ask for ``count`` workers connecting to ``scheduler_address``, in as few calls as
        the API allows; raises only when the API refused the call itself.

        ``replacing`` holds the handles of lost workers the first of them replace, so a
        launcher may start each in its lost worker's market (:mod:`flowrig.backends.markets`).
        ``group`` names the worker group (``[[cluster.worker_groups]]``) they belong to:
        they get its shape, market and Dask resources, and its name in theirs. The pool
        passes it only for a cluster of groups (``""`` otherwise)."""

    @abc.abstractmethod
    def observe(self, handles: list[str]) -> dict[str, Observed]:
        """The state of each of ``handles``, in as few calls as the API allows."""

    @abc.abstractmethod
    def stop(self, handles: list[str], reason: str) -> None:
        """Stop roles; quiet about roles that are gone already."""

    def placement(self, handle: str, role: str) -> "Placement | None":
        """What role ``handle`` (``scheduler`` or ``worker``) got: its shape, market and
        price key (:mod:`flowrig.backends.usage`); ``None``: not known (no price)."""
        return None

    def close(self) -> None:
        """Release what the launcher itself holds (clients, a network); after :meth:`stop`."""
