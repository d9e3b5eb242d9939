"""Prefect's server, driven from inside: the app, and the template database.

Fenced here: ``prefect.server.database.provide_database_interface`` and
``prefect.server.models.block_registration.run_block_auto_registration`` are the
server's own start-up steps, not a documented API; ``create_app(ephemeral=, final=)``
is the app factory ``prefect server start`` uses; the server reads
``server.api.auth_string`` once, when the app is built, and exempts exactly
``GET /api/health`` and ``GET /api/ready`` from it. tests/test_internals.py checks each
on the locked versions.
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


def create_app() -> Any:
    """The Prefect API's ASGI app for a throwaway database (``ephemeral``: no UI, no
    services beyond the settings' ones; ``final``: no further app is made from it)."""
    from prefect.server.api.server import create_app as prefect_create_app

    return prefect_create_app(ephemeral=True, final=True)
