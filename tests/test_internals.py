"""The fence: each private or undocumented behaviour flowrig relies on, checked on the
locked versions (:mod:`flowrig.internals`).

Every test here fails, never skips, when an upgrade of Prefect, prefect-dask,
distributed or Python stops behaving as flowrig assumes; CONTRIBUTING.md says to run
this file first after such an upgrade. The image's Python (Debian's 3.11.2) is checked
by running the same probes in the seed image.
"""

from __future__ import annotations

import ast
import inspect
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from flowrig.internals import forkserver, prefect_engine, prefect_server
from flowrig.internals.prefect_settings import ShippedSettingsContext, run_settings

REPO = Path(__file__).resolve().parents[1]

#: Modules whose use is a reliance on another project's internals: only
#: flowrig.internals may import them.
PRIVATE_MODULES = (
    "prefect.context",
    "prefect.flow_engine",
    "prefect.server",
    "prefect.logging.handlers",
    "prefect.events.worker",
    "prefect._internal",
    "multiprocessing.forkserver",
    "distributed.utils.get_mp_context",
)


def imported_names(path: Path) -> set[str]:
    """Every module (and ``module.name``) a source file imports, at any depth."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def test_only_the_fence_imports_other_projects_internals():
    offenders = []
    for path in sorted((REPO / "flowrig").rglob("*.py")):
        if "internals" in path.relative_to(REPO / "flowrig").parts:
            continue
        for name in imported_names(path):
            if any(name == private or name.startswith(private + ".") for private in PRIVATE_MODULES):
                offenders.append(f"{path.relative_to(REPO)}: {name}")
    assert offenders == []


def test_the_import_scan_sees_a_private_import():
    # The scan above must be able to fail: it finds the fence's own imports.
    found = imported_names(REPO / "flowrig" / "internals" / "forkserver.py")
    assert "multiprocessing.forkserver" in found or "multiprocessing" in found
    assert any(name.startswith("distributed.utils") for name in found)


# --- settings shipped as objects ---------------------------------------------------------


def test_settings_context_serialises_as_its_objects_and_hydrates_to_them():
    from prefect.context import hydrated_context, serialize_context
    from prefect.settings import PREFECT_LOGGING_LEVEL, get_current_settings

    # An API URL of its own: hydrating without one would start a temporary Prefect server.
    with run_settings({"PREFECT_LOGGING_LEVEL": "ERROR", "PREFECT_API_URL": "http://127.0.0.1:9/api"}) as settings:
        shipped = serialize_context()
    # What prefect-dask ships with every task is the settings object itself...
    assert shipped["settings_context"]["settings"] is settings
    # ... and a worker's hydrated context takes it as it is.
    with hydrated_context(shipped):
        assert get_current_settings() is settings
        assert PREFECT_LOGGING_LEVEL.value() == "ERROR"


def test_prefect_dask_ships_the_serialised_context_with_each_task():
    from prefect.context import SettingsContext
    from prefect_dask import client as dask_client

    # The client prefect-dask submits tasks with passes what serialize_context returns
    # to the task engine on the worker: that is where the shipped objects travel.
    source = inspect.getsource(dask_client.PrefectDaskClient.submit)
    assert "serialize_context(" in source and 'run_task_kwargs["context"] = context' in source
    assert issubclass(ShippedSettingsContext, SettingsContext)


# --- the engine's entries and reporting queues ---------------------------------------------


def test_engine_entries_have_the_signatures_flowrig_calls():
    from prefect.events.worker import EventsWorker
    from prefect.flow_engine import run_flow
    from prefect.logging.handlers import APILogWorker

    assert {"flow", "flow_run", "parameters", "return_type"} <= set(inspect.signature(run_flow).parameters)
    for worker in (APILogWorker, EventsWorker):
        assert "timeout" in inspect.signature(worker.drain_all).parameters
    prefect_engine.import_flow_engine()
    assert all(name in sys.modules for name in prefect_engine.PREFECT_ENGINE_MODULES)
    prefect_engine.drain_reporting(timeout=1)  # nothing queued: returns at once


# --- the server ------------------------------------------------------------------------


def test_server_app_and_database_steps_exist_as_assumed():
    from prefect.server.database import provide_database_interface
    from prefect.server.models.block_registration import run_block_auto_registration

    assert inspect.iscoroutinefunction(run_block_auto_registration)
    assert "session" in inspect.signature(run_block_auto_registration).parameters
    assert callable(provide_database_interface)
    app = prefect_server.create_app()
    assert callable(app) and any(getattr(r, "path", "") == "/api" for r in app.routes)


def _included_routers(app) -> list:
    api = next(route.app for route in app.routes if getattr(route, "path", "") == "/api")
    return [route for route in api.router.routes if hasattr(route, "original_router")]


def test_the_routers_a_run_calls_come_first_and_no_request_changes_hands():
    from prefect.server.api import server

    routers = prefect_server.runner_routers_first(server.API_ROUTERS)
    assert sorted(map(id, routers)) == sorted(map(id, server.API_ROUTERS))  # all kept, once
    hot = routers[: len(prefect_server.RUN_ROUTERS)]
    assert [r.prefix for r in hot] == [f"/{name}" for name in prefect_server.RUN_ROUTERS]
    # Only the routers moved ahead change places. None of their routes lies under another
    # router's prefix and no other router's route under theirs, so the new order cannot
    # change which route answers a request.
    for router in routers:
        for other in routers:
            if other is router or (router not in hot and other not in hot) or not other.prefix:
                continue
            for route in router.routes:
                assert route.path != other.prefix and not route.path.startswith(other.prefix + "/"), (
                    route.path, other.prefix,
                )


def test_a_first_request_builds_only_the_routers_up_to_its_own():
    import asyncio

    import httpx

    app = prefect_server.create_app()
    included = _included_routers(app)
    assert [r.original_router.prefix for r in included[:2]] == ["/admin", "/flows"]

    async def ask() -> int:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://api") as client:
            return (await client.get("/api/admin/version")).status_code

    assert asyncio.run(ask()) == 200
    built = [r._effective_candidates_version is not None for r in included]
    # FastAPI builds an included router's routes when a request is matched past it:
    # the admin router, first, is the only one built.
    assert built[0] and not any(built[1:]), built


def _api_routers_in_source() -> list[str]:
    """The modules of ``API_ROUTERS`` as ``server.py`` spells them (``api.ui.flows.router``
    -> ``ui.flows``), read from its source: importing it would import them all."""
    import importlib.util

    source = Path(importlib.util.find_spec("prefect.server.api.server").origin).read_text()
    for node in ast.parse(source).body:
        targets = [node.target] if isinstance(node, ast.AnnAssign) else getattr(node, "targets", [])
        if any(getattr(t, "id", None) == "API_ROUTERS" for t in targets):
            return [ast.unparse(e).removeprefix("api.").removesuffix(".router") for e in node.value.elts]
    raise AssertionError("server.py no longer assigns API_ROUTERS")


def test_deferred_routers_are_the_api_routers_a_run_does_not_call():
    names = _api_routers_in_source()
    assert len(names) == len(set(names))
    deferred, hot = set(prefect_server.DEFERRED_ROUTERS), set(prefect_server.RUN_ROUTERS)
    assert not deferred & hot
    # Everything else is imported at start: the root router (health and readiness), and
    # workers, which flow_runs imports (a stand-in for it would be replaced at once).
    assert set(names) - deferred - hot == {"root", "workers"}
    assert deferred | hot <= set(names)


def test_routes_imported_at_start_are_served_without_loading_and_deferred_ones_load():
    """Every route of a router imported at start lies under :data:`SERVED_AT_START`, and
    no deferred router's route does (a request to it loads the deferred routers first)."""
    import importlib

    for name in (*prefect_server.RUN_ROUTERS, "root", "workers"):
        for route in importlib.import_module(f"prefect.server.api.{name}").router.routes:
            assert prefect_server.served_at_start("/api" + route.path), (name, route.path)
    for path in ("/api/health", "/api/version", "/api/ready"):
        assert prefect_server.served_at_start(path)
    for name in prefect_server.DEFERRED_ROUTERS:
        for route in importlib.import_module(f"prefect.server.api.{name}").router.routes:
            assert not prefect_server.served_at_start("/api" + route.path), (name, route.path)
    assert not prefect_server.served_at_start("/somewhere/api/flows/")


#: A fresh process: the app with its deferred routers, what is imported when, and the
#: routes it serves once they are loaded.
DEFERRED_PROBE = textwrap.dedent(
    """
    import asyncio, json, sys
    import httpx
    from flowrig.internals import prefect_server

    deferred = [f"prefect.server.api.{name}" for name in prefect_server.DEFERRED_ROUTERS]
    prefect_server.import_server()
    from prefect.server.api import server
    result = {
        "imported_at_start": [m for m in deferred if m in sys.modules],
        "stand_ins": len(prefect_server._stand_ins),
        "stand_ins_in_api_routers": all(
            any(router is s for router in server.API_ROUTERS) for s in prefect_server._stand_ins.values()),
    }
    app = prefect_server.create_app()

    async def ask(method, path, **kwargs):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://api") as client:
            return (await client.request(method, path, **kwargs)).status_code

    result["admin"] = asyncio.run(ask("GET", "/api/admin/version"))
    result["imported_after_admin"] = [m for m in deferred if m in sys.modules]
    result["templates"] = asyncio.run(ask("POST", "/api/templates/validate", json=""))
    result["missing_after_templates"] = [m for m in deferred if m not in sys.modules]
    result["paths"] = sorted((p, sorted(v)) for p, v in app.openapi()["paths"].items())
    print(json.dumps(result))
    """
)

REFERENCE_PROBE = textwrap.dedent(
    """
    import json
    from prefect.server.api import server
    app = server.create_app(ephemeral=True, final=True)
    print(json.dumps(sorted((p, sorted(v)) for p, v in app.openapi()["paths"].items())))
    """
)


def test_deferred_routers_are_stood_in_at_start_and_served_in_full_once_needed():
    result = _probe_result([sys.executable, "-c", DEFERRED_PROBE])
    # The import stood in for every deferred router: none was imported...
    assert result["imported_at_start"] == [] and result["stand_ins"] == len(prefect_server.DEFERRED_ROUTERS)
    assert result["stand_ins_in_api_routers"] is True
    # ... nor by a request the routers imported at start serve...
    assert result["admin"] == 200 and result["imported_after_admin"] == []
    # ... and a request to a deferred route (this one has no prefix) imports them all
    # and is answered by its real route.
    assert result["templates"] == 204 and result["missing_after_templates"] == []
    # Then the app serves exactly the routes of Prefect's own app.
    reference = _probe_result([sys.executable, "-c", REFERENCE_PROBE])
    assert result["paths"] == reference and len(reference) > 100


HASH_PROBE = textwrap.dedent(
    """
    import json
    from prefect.settings import Settings
    from flowrig.internals import prefect_server

    prefect_server.import_server()
    original, calls = Settings.hash_key, []

    def recording(self):
        calls.append((id(self), original(self)))
        return calls[-1][1]

    Settings.hash_key = recording
    with prefect_server.settings_hashed_once():
        Settings.hash_key  # the block's own
        inner = Settings.hash_key
    restored = Settings.hash_key is recording
    Settings.hash_key = original
    prefect_server.create_app()
    Settings.hash_key = recording
    from prefect.server.api import server
    server.create_app(ephemeral=True, final=True, ignore_cache=True)
    print(json.dumps({"restored": restored, "replaced": inner is not recording,
                      "objects": len({i for i, _ in calls}), "hashes": len({h for _, h in calls}),
                      "calls": len(calls), "unchanged": Settings.hash_key is recording}))
    """
)


def test_an_app_hashes_one_unchanged_settings_object_more_than_once():
    """``create_app`` (and its ``create_api_app``) hash the same settings object twice,
    to the same value: :func:`settings_hashed_once` saves the second hash."""
    result = _probe_result([sys.executable, "-c", HASH_PROBE])
    assert result["replaced"] is True and result["restored"] is True and result["unchanged"] is True
    assert result == {**result, "objects": 1, "hashes": 1} and result["calls"] >= 2, result
# --- the fork server -----------------------------------------------------------------------

#: Run by this machine's interpreter and by the image's: the fast path is taken there.
FORKSERVER_PROBE = textwrap.dedent(
    """
    import json, sys
    from flowrig.internals import forkserver
    import distributed.nanny
    print(json.dumps({
        "python": sys.version.split()[0],
        "supported": forkserver.supported(),
        "nanny_instantiate": callable(getattr(distributed.nanny.Nanny, "instantiate", None)),
    }))
    """
)


def _probe_result(command: list[str]) -> dict:
    done = subprocess.run(command, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_fork_server_fast_path_is_taken_on_this_python():
    result = _probe_result([sys.executable, "-c", FORKSERVER_PROBE])
    assert result == {"python": result["python"], "supported": True, "nanny_instantiate": True}


@pytest.mark.docker
def test_fork_server_fast_path_is_taken_on_the_images_python(seed_image):
    from flowrig.containers import engine

    client = engine.connect()
    output = client.containers.run(
        seed_image, ["python", "-c", FORKSERVER_PROBE], remove=True, network_mode="none"
    )
    result = json.loads(output.decode().strip().splitlines()[-1])
    assert result["supported"] is True and result["nanny_instantiate"] is True, result


def test_an_unknown_fork_server_is_reported_not_silently_skipped(monkeypatch, caplog):
    monkeypatch.setattr(forkserver, "supported", lambda: False)
    with caplog.at_level("INFO", logger="flowrig.local"):
        assert forkserver.start() is False
    assert "standard fork server" in caplog.text


def test_local_workers_fork_from_the_fork_server_and_leave_the_config_alone(tls):
    """A local cluster's worker processes are children of the fork server, and the
    process-wide multiprocessing method is what it was before."""
    import dask
    import psutil

    from flowrig.backends.base import ClusterSpec
    from flowrig.backends.local import LocalBackend
    from flowrig.project.sizing import ClusterSize

    before = dask.config.get("distributed.worker.multiprocessing-method")
    started = LocalBackend().start(ClusterSpec(run_id="fence1", size=ClusterSize(1), tls=tls))
    try:
        from distributed import Client

        with Client(started.scheduler_address, security=tls.to_security()) as client:
            pid = client.run(lambda: __import__("os").getpid())
        [worker_pid] = pid.values()
        parent = psutil.Process(worker_pid).parent()
        assert parent is not None and parent.pid != psutil.Process().pid
        assert "forkserver" in " ".join(parent.cmdline()) or parent.ppid() == psutil.Process().pid
    finally:
        started.close()
    assert dask.config.get("distributed.worker.multiprocessing-method") == before


# --- the task runner (flowrig.internals.task_runner) ------------------------------------


def test_task_runner_duplicates_with_its_state_and_pickles_without_the_runs():
    import cloudpickle
    from prefect_dask import DaskTaskRunner

    from flowrig.internals.task_runner import FlowrigTaskRunner
    from flowrig.run.progress import TaskProgress

    progress = TaskProgress()
    runner = FlowrigTaskRunner(address="tls://127.0.0.1:1", events="drop", progress=progress)
    # 1. Prefect's flow engine runs a flow on runner.duplicate(): rebuilt from
    #    DaskTaskRunner's constructor arguments, then given flowrig's own.
    assert "self.address" in inspect.getsource(DaskTaskRunner.duplicate)
    twin = runner.duplicate()
    assert type(twin) is FlowrigTaskRunner and twin.progress is progress and twin.events == "drop"
    assert twin == runner
    # 9. The flow (and its runner) travel with every task: without the run's state.
    shipped = cloudpickle.loads(cloudpickle.dumps(runner))
    assert shipped.progress is None and shipped.events == "drop" and shipped.address == runner.address


def test_task_runner_private_attributes_of_prefect_dask():
    from prefect_dask import DaskTaskRunner
    from prefect_dask.task_runners import PrefectDaskFuture

    from flowrig.internals.task_runner import FlowrigTaskRunner

    # 1. The client is made on first use; _started and _optimize_futures exist.
    assert "if not self._client" in inspect.getsource(DaskTaskRunner.client.fget)
    runner = FlowrigTaskRunner(address="tls://127.0.0.1:1")
    assert runner._client is None and runner._started is False

    class Wrapped:
        key = "k"

    future = PrefectDaskFuture(wrapped_future=Wrapped(), task_run_id=__import__("uuid").uuid4())
    assert runner._optimize_futures({"a": future, "b": [future], "c": 1}) == {
        "a": future.wrapped_future, "b": [future.wrapped_future], "c": 1,
    }


def test_a_future_whose_final_state_is_set_is_not_waited_on():
    """2. The batched fetch of a map sets PrefectFuture._final_state."""
    import uuid

    from prefect.futures import PrefectFutureList
    from prefect.states import Completed
    from prefect_dask.task_runners import PrefectDaskFuture

    class Untouchable:
        key = "never"

        def __getattr__(self, name):
            raise AssertionError(f"the wrapped future was touched ({name})")

    future = PrefectDaskFuture(wrapped_future=Untouchable(), task_run_id=uuid.uuid4())
    future._final_state = Completed(data=42)
    assert PrefectFutureList([future]).result() == [42]


def test_task_runner_map_submits_once_per_item_with_keywords():
    """3. Prefect's TaskRunner.map expands into one submit(task=, parameters=, wait_for=,
    dependencies=) per item, in order, and only collects what submit returns."""
    from prefect import task, unmapped
    from prefect.task_runners import ThreadPoolTaskRunner

    calls = []

    class Recording(ThreadPoolTaskRunner):
        def submit(self, task, parameters, wait_for=None, dependencies=None):
            calls.append((task, dict(parameters), wait_for, dependencies))
            return len(calls)

    @task
    def pair(x: int, y: list) -> int:
        return x

    with Recording() as runner:
        returned = runner.map(pair, {"x": [1, 2, 3], "y": unmapped([9])})
    assert [c[1]["x"] for c in calls] == [1, 2, 3] and all(c[1]["y"] == [9] for c in calls)
    assert all(c[0] is pair for c in calls)
    assert list(returned) == [1, 2, 3]


def test_context_variables_and_what_serialize_context_ships():
    """4. The deployment context variables exist, and serialize_context ships exactly
    the contexts the task runner rebuilds (a new one would be noticed here)."""
    import prefect.context as context

    assert isinstance(context._deployment_id, __import__("contextvars").ContextVar)
    assert isinstance(context._deployment_parameters, __import__("contextvars").ContextVar)
    source = inspect.getsource(context.serialize_context)
    for key in ("flow_run_context", "task_run_context", "tags_context", "settings_context", "asset_context",
                "deployment_id", "deployment_parameters"):
        assert f'"{key}"' in source, key


def test_a_client_context_around_an_open_client_makes_no_client():
    """5. SyncClientContext's only field is the client: a context around an open client
    is what get_client returns inside it."""
    from prefect.client.orchestration import get_client
    from prefect.context import SyncClientContext

    from flowrig.internals.task_runner import _shared_client_context

    assert set(SyncClientContext.model_fields) == {"client"}
    sentinel = object.__new__(__import__("prefect.client.orchestration").client.orchestration.SyncPrefectClient)
    with _shared_client_context(sentinel):
        assert get_client(sync_client=True) is sentinel


def test_flow_run_context_fields_not_shipped_have_defaults():
    """6. A fresh FlowRunContext per task is built from the shipped fields plus the
    client, task runner and ``detached``: every other field needs a default."""
    from prefect.context import FlowRunContext

    shipped = {"flow_run", "flow", "parameters", "log_prints", "start_time", "input_keyset", "persist_result",
               "result_store", "client", "task_runner", "detached"}
    for name, field in FlowRunContext.model_fields.items():
        if name not in shipped:
            assert not field.is_required(), name
    assert shipped - {"client", "task_runner", "detached", "result_store"} <= set(
        inspect.getsource(FlowRunContext.serialize).replace("'", '"').split('"')
    )


def test_hydrated_context_rebuilds_the_run_context_models_in_a_fresh_process():
    """7. A fresh worker needs hydrated_context(None)'s model_rebuild() before it can
    build a FlowRunContext."""
    code = textwrap.dedent(
        """
        from prefect.context import FlowRunContext, hydrated_context
        with hydrated_context(None):
            pass
        FlowRunContext.model_fields  # the models are complete
        import pydantic
        try:
            FlowRunContext.model_validate({})
        except pydantic.ValidationError:
            print("validates")
        """
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "validates", done.stderr[-2000:]


def test_events_can_be_dropped_for_a_process():
    """8. EventsWorker.set_client_override with NullEventsClient silences emit_event."""
    from prefect.events import emit_event
    from prefect.events.clients import NullEventsClient
    from prefect.events.worker import EventsWorker

    EventsWorker.set_client_override(NullEventsClient)
    try:
        assert emit_event(event="flowrig.test", resource={"prefect.resource.id": "x"}) is None
    finally:
        EventsWorker.set_client_override(None)


# --- the local scheduler process (flowrig.backends.local.scheduler) ------------------------


def test_local_cluster_hands_its_scheduler_spec_to_the_next_init(tls):
    """``LocalCluster.__init__`` passes ``scheduler={"cls": Scheduler, "options": ...}``
    to ``super().__init__``; the swap raises, never falls back, when it stops doing so."""
    from distributed import LocalCluster, Scheduler
    from distributed.deploy.spec import SpecCluster

    from flowrig.backends.local.scheduler import LocalClusterWithSchedulerProcess, SchedulerProcess

    seen = {}

    class Probe(SpecCluster):
        def __init__(self, *args, scheduler=None, **kwargs):
            seen.update(scheduler)
            raise RuntimeError("probe")

    class Probed(LocalCluster, Probe):
        pass

    with pytest.raises(RuntimeError, match="probe"):
        Probed(n_workers=0, processes=True, protocol="tls://", security=tls.to_security(), host="127.0.0.1",
               dashboard_address=None)
    assert seen["cls"] is Scheduler
    assert seen["options"]["security"] is not None and seen["options"]["host"] == "127.0.0.1"
    assert LocalClusterWithSchedulerProcess.__mro__.index(LocalCluster) < [
        c.__name__ for c in LocalClusterWithSchedulerProcess.__mro__].index("SeparateScheduler")
    with LocalClusterWithSchedulerProcess(n_workers=0, processes=True, protocol="tls://", security=tls.to_security(),
                                          host="127.0.0.1", dashboard_address=None) as cluster:
        assert isinstance(cluster.scheduler, SchedulerProcess)


def test_a_workers_own_client_is_told_from_the_runners_by_its_id(tls):
    """``Worker._get_client`` names its client ``"worker"`` and a client's id is
    ``Client-<name>-<uuid>``; the scheduler's ``fire-and-forget`` pseudo-client is
    always among its clients (:mod:`flowrig.internals.dask_clients`)."""
    from distributed import Client, LocalCluster, get_client

    from flowrig.internals.dask_clients import FIRE_AND_FORGET, is_runner_client

    def own_client_id() -> str:
        return get_client().id

    # Worker processes of their own: a worker in this process would hand a task this
    # process's default client.
    with LocalCluster(n_workers=1, processes=True, protocol="tls://", security=tls.to_security(),
                      host="127.0.0.1", dashboard_address=None) as cluster:
        with Client(cluster, security=tls.to_security()) as client:
            worker_client = client.submit(own_client_id, pure=False).result()
            clients = set(client.run_on_scheduler(lambda dask_scheduler: list(dask_scheduler.clients)))
    assert clients == {FIRE_AND_FORGET, client.id, worker_client}
    assert is_runner_client(client.id)
    assert not is_runner_client(worker_client) and not is_runner_client(FIRE_AND_FORGET)


def _hold_memory(megabytes: int, seconds: float) -> int:
    import time

    block = b"x" * (megabytes * 2**20)
    time.sleep(seconds)
    return len(block)


def test_a_nannys_restart_for_memory_is_an_event_the_cluster_reads_from_its_scheduler(tls):
    """A nanny that stops its worker past 95 % of its memory limit logs
    ``worker-restart-memory`` with the worker's address, pid and rss on the scheduler,
    and a cluster reads it over its own scheduler connection
    (:mod:`flowrig.internals.dask_memory`)."""
    import time

    from distributed import Client, LocalCluster

    from flowrig.internals.dask_memory import RESTART_TOPIC, restarts

    with LocalCluster(n_workers=1, processes=True, protocol="tls://", security=tls.to_security(),
                      host="127.0.0.1", dashboard_address=None, memory_limit="300MiB") as cluster:
        with Client(cluster, security=tls.to_security()) as client:
            address = next(iter(client.scheduler_info()["workers"]))
            client.submit(_hold_memory, 400, 30, pure=False)
            deadline = time.monotonic() + 60
            found: tuple = ()
            while not found and time.monotonic() < deadline:
                time.sleep(0.5)
                found = cluster.sync(restarts, cluster.scheduler_comm)
            assert client.get_events(RESTART_TOPIC)
    assert found, "no memory restart within 60 s"
    (_, event), *_ = found
    assert event["worker"] == address and isinstance(event["pid"], int) and event["rss"] > 300 * 0.95 * 2**20
