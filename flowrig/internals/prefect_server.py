"""Prefect's server, driven from inside: the app, and the template database.

Fenced here: ``prefect.server.database.provide_database_interface`` and
``prefect.server.models.block_registration.run_block_auto_registration`` are the
server's own start-up steps, not a documented API; ``create_app(ephemeral=, final=)``
is the app factory ``prefect server start`` uses; the server reads
``server.api.auth_string`` once, when the app is built, and exempts exactly
``GET /api/health`` and ``GET /api/ready`` from it. ``create_app`` includes the routers
of the module-level ``API_ROUTERS`` in that order, and FastAPI builds an included
router's routes on the first request that is matched past it (so a request to the
second-to-last router, ``/admin``, builds all of them: 0.2 s on the run's path).
tests/test_internals.py checks each on the locked versions.
"""

from __future__ import annotations

from typing import Any


def build_template_database() -> None:
    """Create and migrate the database named by Prefect's settings, then register the
    block types: what the server's own start-up does when asked to migrate."""
    import asyncio

    async def build() -> None:
        from prefect.server.database import provide_database_interface
        from prefect.server.models.block_registration import run_block_auto_registration

        db = provide_database_interface()
        await db.create_db()
        session = await db.session()
        async with session:
            await run_block_auto_registration(session=session)

    asyncio.run(build())


def import_server() -> None:
    """Import the server's modules (a start-up phase of its own, to time and pause)."""
    import prefect.server.api.server  # noqa: F401


#: Modules under ``prefect.server.api`` whose routers a run's runner and task engines
#: call (the result storage default, flows, flow and task runs with their states, logs),
#: in the order they are first called.
RUN_ROUTERS = ("admin", "flows", "flow_runs", "task_runs", "flow_run_states", "task_run_states", "logs")


def runner_routers_first(routers: tuple[Any, ...]) -> tuple[Any, ...]:
    """``routers`` with the :data:`RUN_ROUTERS` first, the others after in their order.

    Their prefixes are disjoint, so the order changes which routes are built first,
    not which route answers a request.
    """
    from prefect.server import api

    hot = tuple(getattr(api, name).router for name in RUN_ROUTERS)
    return hot + tuple(router for router in routers if router not in hot)


def create_app() -> Any:
    """The Prefect API's ASGI app for a throwaway database (``ephemeral``: no UI, no
    services beyond the settings' ones; ``final``: no further app is made from it),
    with the routers a run calls first (:func:`runner_routers_first`): each first
    request then builds only the routers up to its own."""
    from prefect.server.api import server

    server.API_ROUTERS = runner_routers_first(server.API_ROUTERS)
    return server.create_app(ephemeral=True, final=True)
