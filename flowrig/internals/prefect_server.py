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
``server.py`` builds ``API_ROUTERS`` at import time from attributes of the lazy
``prefect.server.api`` package (its ``__getattr__`` imports a submodule on first access),
so a stand-in set in the package's namespace for that import is what ``API_ROUTERS``
holds; FastAPI (0.137+) matches an included router's routes by reference, so routes
included into a stand-in later are served (:func:`import_server`). ``create_app`` and
the ``create_api_app`` it calls each hash the same, unchanged settings object for
their caches (``Settings.hash_key``, 30 ms each): :func:`create_app` hashes it once.
tests/e2e/local/test_internals.py checks each on the locked versions.
"""

from __future__ import annotations

import contextlib
import importlib
import sys
import threading
import types
from typing import Any, Iterator


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


#: Modules under ``prefect.server.api`` whose routers a run's runner and task engines
#: call (the result storage default, flows, flow and task runs with their states, logs),
#: in the order they are first called.
RUN_ROUTERS = ("admin", "flows", "flow_runs", "task_runs", "flow_run_states", "task_run_states", "logs")


#: Router modules under ``prefect.server.api`` (in ``API_ROUTERS``) a run never calls:
#: importing them and building their routes is about 0.35 s of the API's start-up, so
#: they are imported on the first request the others do not serve (:func:`import_server`).
#: Not ``workers``: ``flow_runs`` imports it.
DEFERRED_ROUTERS = (
    "observed_states", "deployments", "saved_searches", "concurrency_limits", "concurrency_limits_v2",
    "block_types", "block_documents", "task_workers", "work_queues", "artifacts",
    "block_schemas", "block_capabilities", "collections", "variables", "csrf_token", "events",
    "automations", "templates", "ui.flows", "ui.flow_runs", "ui.schemas", "ui.task_runs",
)

#: First segments under ``/api`` that routers imported at start serve: the
#: :data:`RUN_ROUTERS`, the API app's own ``/health`` and ``/version``, the root
#: router's routes and the work pools of ``workers``. A request to any other path
#: imports the deferred routers first.
SERVED_AT_START = frozenset(RUN_ROUTERS) | {"health", "version", "hello", "ready", "pid", "work_pools"}

#: Stand-in router of each deferred module (by name) until it is imported.
_stand_ins: dict[str, Any] = {}
_load_lock = threading.Lock()


def _set_stand_ins() -> list[tuple[types.ModuleType, str, Any]]:
    """A stand-in with an empty router for each deferred module not imported yet, in
    the namespace of its package; returns what was set, to take out again."""
    from fastapi import APIRouter

    set_here = []
    for dotted in DEFERRED_ROUTERS:
        if f"prefect.server.api.{dotted}" in sys.modules:
            continue  # imported anyway: nothing to save
        stand_in = types.SimpleNamespace(router=APIRouter())
        _stand_ins[dotted] = stand_in.router
        package_name, _, name = f"prefect.server.api.{dotted}".rpartition(".")
        if package_name == "prefect.server.api":
            package = sys.modules[package_name]
        else:  # prefect.server.api.ui, itself stood in for: its attributes are the modules
            parent = sys.modules["prefect.server.api"]
            package = parent.__dict__.get("ui")
            if not isinstance(package, types.SimpleNamespace):
                package = types.SimpleNamespace()
                parent.__dict__["ui"] = package
                set_here.append((parent, "ui", package))
        setattr(package, name, stand_in)
        if isinstance(package, types.ModuleType):
            set_here.append((package, name, stand_in))
    return set_here


def import_server() -> None:
    """Import the server's modules (a start-up phase of its own, to time and pause),
    with stand-ins for the :data:`DEFERRED_ROUTERS`: their routes come with
    :func:`load_deferred_routers`."""
    if "prefect.server.api.server" in sys.modules:
        return
    import prefect.server.api  # noqa: F401  (the package only: its modules are lazy)

    set_here = _set_stand_ins()
    try:
        from prefect.server.api import server
    finally:
        # Later imports of these modules (by name or attribute) get the real ones.
        for package, name, stand_in in set_here:
            if package.__dict__.get(name) is stand_in:
                del package.__dict__[name]
    # A module imported by another one during the import replaced its stand-in: the
    # app has its real router, and there is nothing to load for it.
    for dotted, stand_in in list(_stand_ins.items()):
        if not any(router is stand_in for router in server.API_ROUTERS):
            del _stand_ins[dotted]


def load_deferred_routers() -> None:
    """Import the deferred router modules and include each one's routes into its
    stand-in (already part of the app); later calls return at once."""
    if not _stand_ins:
        return
    with _load_lock:
        for dotted, stand_in in list(_stand_ins.items()):
            module = importlib.import_module(f"prefect.server.api.{dotted}")
            stand_in.include_router(module.router)
            del _stand_ins[dotted]


def served_at_start(path: str) -> bool:
    """Whether a request to ``path`` is served by the routers imported at start."""
    head, _, rest = path.partition("/api/")
    return head == "" and rest.partition("/")[0] in SERVED_AT_START


class LoadDeferredRouters:
    """ASGI middleware: before a request that the routers imported at start do not
    serve, import the deferred ones (once; the first such request waits for it)."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if _stand_ins and scope["type"] in ("http", "websocket") and not served_at_start(scope["path"]):
            load_deferred_routers()
        await self.app(scope, receive, send)


def runner_routers_first(routers: tuple[Any, ...]) -> tuple[Any, ...]:
    """``routers`` with the :data:`RUN_ROUTERS` first, the others after in their order.

    Their prefixes are disjoint, so the order changes which routes are built first,
    not which route answers a request.
    """
    from prefect.server import api

    hot = tuple(getattr(api, name).router for name in RUN_ROUTERS)
    return hot + tuple(router for router in routers if router not in hot)


@contextlib.contextmanager
def settings_hashed_once() -> Iterator[None]:
    """Within the block, ``Settings.hash_key`` of one settings object is computed once.

    Settings are not changed while an app is built, so a second hash of the same
    object is the first one again.
    """
    from prefect.settings import Settings

    original = Settings.hash_key
    hashed: dict[int, tuple[Any, str]] = {}

    def hash_key(self: Any) -> str:
        # The object is kept with its hash, so its id cannot be reused meanwhile.
        if id(self) not in hashed:
            hashed[id(self)] = (self, original(self))
        return hashed[id(self)][1]

    Settings.hash_key = hash_key  # type: ignore[method-assign]
    try:
        yield
    finally:
        Settings.hash_key = original  # type: ignore[method-assign]


def create_app() -> Any:
    """The Prefect API's ASGI app for a throwaway database (``ephemeral``: no UI, no
    services beyond the settings' ones; ``final``: no further app is made from it),
    with the routers a run calls first (:func:`runner_routers_first`): each first
    request then builds only the routers up to its own. The :data:`DEFERRED_ROUTERS`
    are imported by the first request that needs them (:class:`LoadDeferredRouters`)."""

    import_server()
    from prefect.server.api import server

    server.API_ROUTERS = runner_routers_first(server.API_ROUTERS)
    with settings_hashed_once():
        app = server.create_app(ephemeral=True, final=True)
    app.add_middleware(LoadDeferredRouters)
    return app
