"""A scheduler's lifetime: it stops itself once no client has been connected for a while.

A scheduler flowrig starts serves one run, whose runner holds a Dask client for the
whole flow run (prefect-dask's task runner). When the runner is lost (``kill -9``, an
OOM kill, its machine gone), nothing else stops that scheduler. distributed's own
``--idle-timeout`` is no answer: it counts only tasks in processing, so it also ends
the cluster of a runner that is busy with its own code between two submissions.

:class:`NoClientTimeout` closes the scheduler once no client has been connected for
``no_client_timeout`` seconds, or for ``first_client_timeout`` seconds from its start
while none has connected yet (the runner connects only once its cluster has started
and its API answers). It first has the workers' nannies stop them (a nanny ends its
worker process within 5 s, even one in the middle of a task), then closes; a worker
that cannot reach its scheduler at all exits after its ``--death-timeout``. A worker's own client (``get_client()``
in a task) does not count: a task cannot keep its cluster alive without its runner.

Every scheduler the image starts runs it as a preload (:func:`flowrig.roles.command_for`)::

    --preload flowrig.roles.lifetime [--no-client-timeout S] [--first-client-timeout S]

and the local backend adds it to its scheduler process. Its setup takes options, so
distributed lets no other preload with options run beside it. Only the scheduler
imports this module (it imports distributed).
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import click
from distributed.diagnostics.plugin import SchedulerPlugin

from flowrig.internals import drain_status, group_demand
from flowrig.internals.dask_clients import is_runner_client

logger = logging.getLogger("flowrig.lifetime")

#: Seconds a scheduler stays up after its last client went. Longer than a client's
#: own reconnection window (``distributed.comm.timeouts.connect``, 30 s), so a
#: network blip does not end a run.
NO_CLIENT_TIMEOUT = 60.0
#: Seconds a scheduler waits for its first client: a cluster's start (workers
#: pulling images, Fargate provisioning) comes first.
FIRST_CLIENT_TIMEOUT = 600.0
#: Seconds the nannies have to stop their workers before the scheduler closes (a
#: nanny gives its worker process 5 s, then ends it).
NANNY_STOP_TIMEOUT = 15.0
#: The scheduler closes with this reason (it shows in its log).
REASON = "flowrig-no-client-timeout"


class NoClientTimeout(SchedulerPlugin):
    """Close the scheduler once no runner client has been connected for a while.

    Parameters
    ----------
    no_client_timeout
        Seconds without any client, once one had connected.
    first_client_timeout
        Seconds from the scheduler's start until the first client connects.
    """

    name = "flowrig-no-client-timeout"

    def __init__(
        self, no_client_timeout: float = NO_CLIENT_TIMEOUT, first_client_timeout: float = FIRST_CLIENT_TIMEOUT
    ) -> None:
        if no_client_timeout <= 0 or first_client_timeout <= 0:
            raise ValueError("the no-client timeouts must be greater than zero")
        self.no_client_timeout = float(no_client_timeout)
        self.first_client_timeout = float(first_client_timeout)
        self.connected: set[str] = set()
        self.had_client = False
        self.alone_since = time.monotonic()
        self._watch: asyncio.Task | None = None
        self._closing: asyncio.Task | None = None
        #: Set by the cluster's teardown (:data:`drain_status.CLOSING_OP`): no worker
        #: drains from then on, even while the runner is still connected.
        self.closing = False

    # --- SchedulerPlugin ----------------------------------------------------------------
    async def start(self, scheduler: Any) -> None:
        self.alone_since = time.monotonic()
        for client in scheduler.clients:
            self.add_client(scheduler, client)
        self._watch = asyncio.ensure_future(self._run(scheduler))
        self._serve_drains(scheduler)

    def _serve_drains(self, scheduler: Any) -> None:
        """The handlers a draining worker (:mod:`flowrig.roles.drain`) and a cluster's
        teardown call: a worker drains only while the run's runner is connected."""

        async def flowrig_drain_status(name: str) -> dict[str, Any]:
            return await drain_status.status(scheduler, name, runner=bool(self.connected) and not self.closing)

        def flowrig_closing() -> None:
            self.closing = True

        def flowrig_drained(name: str, facts: dict[str, Any]) -> None:
            drain_status.log_drain(scheduler, name, facts)

        async def flowrig_drain_flush(name: str, timeout: float) -> bool:
            return await drain_status.flush(scheduler, name, float(timeout))

        drain_status.add_handler(scheduler, drain_status.STATUS_OP, flowrig_drain_status)
        drain_status.add_handler(scheduler, drain_status.CLOSING_OP, flowrig_closing)
        drain_status.add_handler(scheduler, drain_status.DRAINED_OP, flowrig_drained)
        drain_status.add_handler(scheduler, drain_status.FLUSH_OP, flowrig_drain_flush)
        # What each adaptive worker group's tasks ask for (:mod:`flowrig.backends.group_scaling`).
        drain_status.add_handler(scheduler, group_demand.DEMAND_OP, lambda: group_demand.demand(scheduler))

    def add_client(self, scheduler: Any, client: str) -> None:
        if is_runner_client(client):
            self.connected.add(client)
            self.had_client = True

    def remove_client(self, scheduler: Any, client: str) -> None:
        # Only the last runner client leaving starts the clock (distributed reports a
        # removal more than once, and a worker's own client does not count).
        if client in self.connected:
            self.connected.discard(client)
            if not self.connected:
                self.alone_since = time.monotonic()

    async def close(self) -> None:
        if self._watch is not None:
            self._watch.cancel()

    # --- the rule ----------------------------------------------------------------------
    @property
    def limit(self) -> float:
        """Seconds the scheduler may stay without a client right now."""
        return self.no_client_timeout if self.had_client else self.first_client_timeout

    def expired(self, now: float | None = None) -> bool:
        """Whether the scheduler has been without a client for longer than :attr:`limit`."""
        now = time.monotonic() if now is None else now
        return not self.connected and now - self.alone_since > self.limit

    async def _run(self, scheduler: Any) -> None:
        interval = min(1.0, self.no_client_timeout / 4)
        while True:
            await asyncio.sleep(interval)
            if self.expired():
                logger.warning(
                    "scheduler closing: no client connected for %g s (its runner is gone)", self.limit
                )
                # A task of its own: closing the scheduler closes this plugin's watch.
                self._closing = asyncio.ensure_future(self._stop(scheduler))
                return

    async def _stop(self, scheduler: Any) -> None:
        """Stop the workers through their nannies, then the scheduler.

        A closing scheduler asks each worker to close, and a worker closes only once
        its running tasks return, which for a long task of a lost run is much too
        late. A nanny stops its worker process within seconds, task or not.
        """
        nannies = [address for address, ws in scheduler.workers.items() if ws.nanny]
        if nannies:
            try:
                await asyncio.wait_for(
                    scheduler.broadcast(
                        msg={"op": "terminate", "reason": REASON}, workers=nannies, nanny=True, on_error="ignore"
                    ),
                    NANNY_STOP_TIMEOUT,
                )
            except Exception as exc:  # the scheduler closes them in any case
                logger.debug("stopping the workers through their nannies: %s", exc)
        await scheduler.close(reason=REASON)


@click.command()
@click.option("--no-client-timeout", type=float, default=NO_CLIENT_TIMEOUT, show_default=True,
              help="Seconds the scheduler stays up after its last client went.")
@click.option("--first-client-timeout", type=float, default=FIRST_CLIENT_TIMEOUT, show_default=True,
              help="Seconds the scheduler waits for its first client.")
def dask_setup(scheduler: Any, no_client_timeout: float, first_client_timeout: float) -> None:
    """The preload's entry: add :class:`NoClientTimeout` to the scheduler."""
    scheduler.add_plugin(NoClientTimeout(no_client_timeout, first_client_timeout))
