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

REPO = Path(__file__).resolve().parents[3]

#: Modules whose use is a reliance on another project's internals: only
#: flowrig.internals may import them.
PRIVATE_MODULES = (
    "distributed.node",
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


def test_on_an_event_loops_thread_drain_all_only_returns_a_coroutine_and_drain_reporting_still_waits():
    """A Dask worker runs ``Client.run``'s function on its event loop's thread, where
    Prefect's ``drain_all`` returns a coroutine instead of waiting; left unawaited it
    drains nothing and warns ("coroutine ... was never awaited") on the run's console."""
    import asyncio
    import gc
    import warnings

    from prefect.logging.handlers import APILogWorker

    async def on_the_loop() -> list:
        returned = APILogWorker.drain_all(timeout=1)
        assert inspect.iscoroutine(returned)
        returned.close()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            prefect_engine.drain_reporting(timeout=1)
            gc.collect()
        return [str(w.message) for w in caught if "never awaited" in str(w.message)]

    assert asyncio.run(on_the_loop()) == []


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


def test_a_deep_tmpdir_still_gives_the_fork_server_a_socket_and_leaves_no_folder(tmp_path):
    """A TMPDIR deep enough that multiprocessing's socket path passes Linux's 107 bytes
    (``AF_UNIX path too long`` for the standard fork server too): the run completes, and
    the short folder used instead is gone once it ends."""
    import os
    import uuid

    from tests.run_support import FLOWRIG, SEED, marked_env

    deep = tmp_path / ("d" * 60) / ("e" * 40)
    deep.mkdir(parents=True)
    before = set(Path("/tmp").glob("flowrig-fs-*"))
    done = subprocess.run([*FLOWRIG, "run", str(SEED), "--param", "x=[1,2,3]", "--output", "json"], capture_output=True, text=True,
                          env={**marked_env(uuid.uuid4().hex), "TMPDIR": str(deep)}, timeout=240)
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout.strip().splitlines()[-1])["state"] == "Completed"
    assert set(Path("/tmp").glob("flowrig-fs-*")) <= before
    assert len(os.fsencode(str(deep))) > 107 - len("/pymp-xxxxxxxx/listener-xxxxxxxx")


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


def _local_cluster(tls, run_id: str, **options):
    from flowrig.backends.base import ClusterSpec
    from flowrig.backends.local import LocalBackend
    from flowrig.project.sizing import ClusterSize

    return LocalBackend().start(ClusterSpec(run_id=run_id, size=ClusterSize(1), tls=tls, options=options))


def _wait_for_exits(nanny, within: float = 60):
    import time

    deadline = time.monotonic() + within
    while not nanny.__dict__.get("flowrig_worker_exits"):
        assert time.monotonic() < deadline, "the nanny recorded no exit of its worker process"
        time.sleep(0.1)
    return forkserver.worker_exits(nanny)


def test_a_nanny_is_told_the_exit_code_of_its_worker_process_and_restarts_it(tls):
    """Nanny._on_worker_exit(exitcode) is called when the worker process dies; the
    nanny then starts it again (how a lost local worker's reason is known)."""
    import os
    import signal

    from distributed import Client

    assert list(inspect.signature(forkserver.nanny_class()._on_worker_exit).parameters) == ["self", "exitcode"]
    started = _local_cluster(tls, "fence2")
    try:
        with Client(started.scheduler_address, security=tls.to_security()) as client:
            [pid] = client.run(os.getpid).values()
            os.kill(pid, signal.SIGKILL)
            [nanny] = started.cluster.workers.values()
            exits = _wait_for_exits(nanny)
            assert exits == [forkserver.WorkerExit(-signal.SIGKILL)]
            client.wait_for_workers(1, timeout=60)
            assert list(client.run(os.getpid).values()) != [pid]
        assert forkserver.worker_exits(nanny) == []  # each exit is handed out once
    finally:
        started.close()
    # A worker asked to stop (the cluster's close) is no exit to report.
    assert forkserver.worker_exits(nanny) == []


def test_a_nanny_logs_its_memory_restart_through_log_event_before_it_ends_the_worker(tls):
    """The memory monitor calls Nanny.log_event(MEMORY_RESTART_TOPIC, {"worker", "rss"})
    and then terminates the worker process; the scheduler keeps the event, and its
    ``events`` RPC (what Client.get_events calls) hands it out."""
    from distributed import Client

    from flowrig.internals.dask_events import memory_restart_events, memory_restarts

    started = _local_cluster(tls, "fence3", memory_limit="300MB")
    try:
        with Client(started.scheduler_address, security=tls.to_security()) as client:
            [address] = client.scheduler_info()["workers"]
            client.submit(lambda: len(bytearray(600_000_000)), pure=False)
            [nanny] = started.cluster.workers.values()
            exits = _wait_for_exits(nanny)
            seen = started.cluster.sync(memory_restarts, started.cluster.scheduler_comm)
            events = started.cluster.sync(memory_restart_events, started.cluster.scheduler_comm)
    finally:
        started.close()
    memory = exits[0].memory
    assert memory is not None and memory["rss"] > 0.9 * 300e6 and memory["limit"] == 300_000_000, exits
    assert memory["worker"] == address and seen[address] == memory["rss"], (seen, memory)
    # Each restart apart, by its time and the pid of the process its nanny ended.
    (when, message), *_ = events
    assert isinstance(when, float) and message["worker"] == address and isinstance(message["pid"], int), events


def test_events_emitted_are_sent_before_the_events_service_is_drained(prefect_server):
    """EventsWorker.instance().wait_until_empty() returns once what was emitted is sent;
    the drain after it finds nothing queued (and says nothing on the console)."""
    import logging

    from prefect.events import emit_event
    from prefect.settings import PREFECT_API_URL, temporary_settings

    records = []
    handler = logging.Handler()
    handler.emit = records.append
    logging.getLogger("EventsWorker").addHandler(handler)
    try:
        with temporary_settings(updates={PREFECT_API_URL: prefect_server}):
            for i in range(20):
                emit_event(event="flowrig.fence", resource={"prefect.resource.id": f"flowrig.fence.{i}"})
            prefect_engine.send_events(timeout=30)
    finally:
        logging.getLogger("EventsWorker").removeHandler(handler)
    assert [r.getMessage() for r in records if "Still processing" in r.getMessage()] == []


def test_the_tags_a_flow_call_would_get_are_the_tags_context():
    from prefect import tags

    with tags("nightly", "team-a"):
        assert prefect_engine.current_tags() == {"nightly", "team-a"}
    assert prefect_engine.current_tags() == set()


# --- the task runner (flowrig.internals.task_runner, task_worker) ------------------------


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

    from flowrig.internals.task_worker import _shared_client_context

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


# --- task events at the server's pace (flowrig.internals.event_pacing) ---------------------


def test_a_server_subscription_holds_the_window_a_run_may_keep_unrecorded():
    """2. A consumer's in-memory queue on Prefect's server takes at least the events of
    ``RUN_WINDOW`` task runs (three each) with room for other runs; below that a run
    would lose task runs again."""
    from prefect.server.utilities.messaging.memory import Subscription, Topic

    from flowrig.internals import event_pacing

    queue = Subscription(Topic("flowrig-test"))._queue.maxsize
    assert queue == event_pacing.SERVER_QUEUE, queue
    assert 3 * event_pacing.RUN_WINDOW <= 0.6 * queue


def _task_run_event(state: str = "COMPLETED"):
    import uuid

    from prefect.events import Event

    return Event(event=f"prefect.task-run.{state.title()}",
                 resource={"prefect.resource.id": f"prefect.task-run.{uuid.uuid4()}"},
                 payload={"intended": {"from": "RUNNING", "to": state}})


def test_the_forwarding_events_client_hands_emitted_events_to_any_queue(request):
    """1. With ``ProcessPoolForwardingEventsClient`` as the process's events client,
    ``emit_event`` hands each event, as ``("event", event)``, to the given queue's
    ``put`` from Prefect's events service."""
    import queue

    from prefect.events import emit_event
    from prefect.events.worker import EventsWorker, ProcessPoolForwardingEventsClient
    from prefect.settings import PREFECT_API_URL, temporary_settings

    api = request.getfixturevalue("prefect_server")  # the module of that name is imported here
    handed: queue.Queue = queue.Queue()
    with temporary_settings({PREFECT_API_URL: api}):
        EventsWorker.set_client_override(ProcessPoolForwardingEventsClient, event_queue=handed)
        try:
            sent = emit_event(event="flowrig.test", resource={"prefect.resource.id": "flowrig.test"})
            assert sent is not None
            kind, event = handed.get(timeout=30)
        finally:
            EventsWorker.set_client_override(None)
    assert (kind, event.id) == ("event", sent.id)


def test_a_pace_sends_to_the_server_and_gives_up_a_server_that_records_nothing(request, monkeypatch):
    """A server that records none of what it was sent is waited for ``STALL_SECONDS``
    once, never for ever; every event is still sent."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from flowrig.internals import event_pacing

    api = request.getfixturevalue("prefect_server")
    monkeypatch.setattr(event_pacing, "STALL_SECONDS", 1.0)
    counted = []

    async def nothing_recorded(ids):
        counted.append(len(ids))
        return 0

    before = dict(event_pacing.STATS)
    with temporary_settings({PREFECT_API_URL: api}):
        pace = event_pacing.ServerPace(window=2)
    monkeypatch.setattr(pace, "_recorded", nothing_recorded)
    try:
        for _ in range(4):
            pace.put(("event", _task_run_event()))
    finally:
        pace.close()
    assert event_pacing.STATS["sent"] - before["sent"] == 4
    assert event_pacing.STATS["gave_up"] - before["gave_up"] == 1
    assert counted, "the pace never asked the server"


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


def test_a_print_under_log_prints_is_logged_from_within_print_as_log(monkeypatch):
    """``patch_print`` puts ``prefect.logging.loggers.print_as_log`` in place of
    ``print``, which logs each print synchronously through the run's logger
    (:mod:`flowrig.internals.prefect_prints`)."""
    import logging

    from prefect.context import FlowRunContext, TaskRunContext
    from prefect.logging import loggers

    from flowrig.internals.prefect_prints import logged_by_print

    class Context:
        log_prints = True
        flow_run = None

    logger = logging.getLogger("flowrig-test-prints")
    logger.propagate = False
    seen: list[tuple[str, bool]] = []

    class Probe(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append((record.getMessage(), logged_by_print()))

    logger.addHandler(Probe())
    logger.setLevel(logging.INFO)
    monkeypatch.setattr(FlowRunContext, "get", classmethod(lambda cls: None))
    monkeypatch.setattr(TaskRunContext, "get", classmethod(lambda cls: Context()))
    monkeypatch.setattr(loggers, "get_run_logger", lambda *args, **kwargs: logger)
    with loggers.patch_print():
        print("printed", 1)
        logger.info("logged")
    print("after")  # print itself again: nothing logged
    assert seen == [("printed 1", True), ("logged", False)]


def test_a_spec_clusters_workers_and_its_loop_are_reachable(tls):
    """``SpecCluster._created`` holds the workers made so far (their ``pid``: the worker
    process's) and ``Cluster._loop_runner.stop(timeout=0)`` lets the cluster's loop end
    without waiting for it (:mod:`flowrig.internals.spec_cluster`)."""
    import time

    import psutil
    from distributed import LocalCluster

    from flowrig.internals.spec_cluster import let_loop_go, workers_made

    with LocalCluster(n_workers=1, processes=True, protocol="tls://", security=tls.to_security(),
                      host="127.0.0.1", dashboard_address=None) as cluster:
        [nanny] = workers_made(cluster)
        assert nanny is cluster.workers[0] and psutil.Process(nanny.pid).is_running()
    cluster = LocalCluster(n_workers=0, processes=False, dashboard_address=None)
    loop = cluster.loop.asyncio_loop
    started = time.monotonic()
    let_loop_go(cluster)
    assert time.monotonic() - started < 0.5
    deadline = time.monotonic() + 10
    while loop.is_running():
        assert time.monotonic() < deadline, "the cluster's loop still runs"
        time.sleep(0.05)
    cluster.shutdown_on_close = False


# --- a task's own client gets the worker's credentials (flowrig.internals.worker_security) ----


def test_a_dask_worker_cli_holds_its_certificate_as_the_worker_roles_only():
    """``dask worker --tls-cert/--tls-key`` (what the image's worker role runs) gives the
    worker's ``Security`` the certificate as ``tls_worker_*`` alone: a client made from it
    must be handed that certificate as its own."""
    from distributed.cli import dask_worker

    source = inspect.getsource(dask_worker)
    assert '("tls_worker_cert", tls_cert)' in source and '("tls_worker_key", tls_key)' in source
    assert "tls_client_cert" not in source


def test_a_client_made_in_a_task_without_security_asks_the_loader_with_its_address(tls):
    """``distributed.client.security-loader`` is called with ``{"address": ...}`` in the
    thread that makes the client, where ``get_worker()`` is the task's worker, whose
    ``security`` is the worker's own; the loader's credentials then connect."""
    import dask
    from distributed import Client, LocalCluster, get_worker

    from flowrig.internals import worker_security

    def in_a_task() -> dict:
        worker = get_worker()
        address = worker.scheduler.address
        with Client(address, timeout="20s") as own:  # no security given
            total = own.submit(sum, [1, 2, 3]).result()
        return {"total": total, "elsewhere": worker_security.load({"address": "tls://203.0.113.9:8786"}),
                "security_is_the_workers": worker.security is not None and bool(worker.security.tls_worker_cert)}

    security = tls.to_security()
    # Only this worker's own tasks read the setting here: the cluster is in this process.
    with dask.config.set({worker_security.LOADER_KEY: worker_security.LOADER}):
        with LocalCluster(n_workers=1, threads_per_worker=2, processes=False, protocol="tls://", host="127.0.0.1",
                          security=security, dashboard_address=None) as cluster:
            with Client(cluster, security=security, set_as_default=False) as client:
                seen = client.submit(in_a_task, pure=False).result(timeout=120)
    assert seen == {"total": 6, "elsewhere": None, "security_is_the_workers": True}
    # Outside a worker the loader leaves distributed's default alone.
    assert worker_security.load({"address": "tls://127.0.0.1:8786"}) is None


def test_client_security_takes_the_certificate_of_whichever_role_has_one(tls):
    from distributed.security import Security

    from flowrig.internals.worker_security import client_security

    pem = tls.to_security()
    as_worker = Security(tls_ca_file=pem.tls_ca_file, tls_worker_cert=pem.tls_worker_cert,
                         tls_worker_key=pem.tls_worker_key, require_encryption=True)
    made = client_security(as_worker)
    assert (made.tls_client_cert, made.tls_client_key) == (pem.tls_worker_cert, pem.tls_worker_key)
    assert made.tls_ca_file == pem.tls_ca_file and made.require_encryption
    assert made.get_connection_args("client")["ssl_context"] is not None


def test_the_runner_connects_itself_through_prefect_dasks_exit_stack():
    """The runner's own ``client`` fills what ``DaskTaskRunner.client`` would: its
    ``_client``, ``_connect_to`` and ``_exit_stack`` (closed by ``__exit__``), and
    ``performance_report_path``."""
    from prefect_dask import DaskTaskRunner

    source = inspect.getsource(DaskTaskRunner.client.fget)
    for name in ("self._connect_to =", "self._exit_stack.enter_context(", "self.performance_report_path",
                 "distributed.get_client()"):
        assert name in source, name
    assert "self._exit_stack.__exit__" in inspect.getsource(DaskTaskRunner.__exit__)


# --- HTTP endpoints over the run's mutual TLS (flowrig.internals.http_tls) -----------------

#: Run in a process of its own: the swap is for the whole process it happens in.
HTTP_TLS_PROBE = r'''
import asyncio, json, ssl, sys, tempfile, urllib.request
from pathlib import Path

import dask
from distributed import Scheduler, Worker

from flowrig.certs import TLSMaterial

tls = TLSMaterial.for_run(None)
security = tls.to_security()
own = security.get_connection_args("client")["ssl_context"]
anyone = ssl.create_default_context()
anyone.check_hostname, anyone.verify_mode = False, ssl.CERT_NONE


def status(url, context=None):
    try:
        with urllib.request.urlopen(url, timeout=10, context=context) as response:
            return response.status
    except Exception as exc:
        return type(exc).__name__


async def nodes(preload):
    from flowrig.internals.http_tls import requires_client_certificates

    found = {}
    async with Scheduler(protocol="tls", host="127.0.0.1", security=security, dashboard_address="127.0.0.1:0",
                         preload=preload) as scheduler:
        async with Worker(scheduler.address, security=security, host="127.0.0.1", preload=preload) as worker:
            for name, node in (("scheduler", scheduler), ("worker", worker)):
                url = f"127.0.0.1:{node.http_server.port}/health"
                found[name] = {
                    "requires": requires_client_certificates(node.http_server),
                    "plain": await asyncio.to_thread(status, "http://" + url),
                }
                if preload:
                    # (A TLS hello to a plain HTTP server only waits for the timeout.)
                    found[name]["anyone"] = await asyncio.to_thread(status, "https://" + url, anyone)
                    found[name]["own"] = await asyncio.to_thread(status, "https://" + url, own)
    return found


result = {"without": asyncio.run(nodes([]))}
result["with"] = asyncio.run(nodes(["flowrig.roles.private_http"]))
# distributed's own dashboard TLS settings (which win over the context passed in) get
# client certificates required too.
directory = Path(tempfile.mkdtemp())
(directory / "tls.crt").write_bytes(tls.cert_pem)
(directory / "tls.key").write_bytes(tls.key_pem)
(directory / "ca.crt").write_bytes(tls.ca_pem)
with dask.config.set({"distributed.scheduler.dashboard.tls.cert": str(directory / "tls.crt"),
                      "distributed.scheduler.dashboard.tls.key": str(directory / "tls.key"),
                      "distributed.scheduler.dashboard.tls.ca-file": str(directory / "ca.crt")}):
    result["configured"] = asyncio.run(nodes(["flowrig.roles.private_http"]))
print(json.dumps(result))
'''


def test_nodes_serve_http_over_mutual_tls_once_the_preload_is_imported():
    """``ServerNode.start_http_server`` is where a scheduler and a worker make their
    HTTP server, after their preloads are imported: with :mod:`flowrig.roles.private_http`
    as a preload, their HTTP endpoints answer only clients with the run's certificate;
    without it (distributed's own behaviour) they answer anyone over plain HTTP."""
    done = subprocess.run([sys.executable, "-c", HTTP_TLS_PROBE], capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    for name in ("scheduler", "worker"):
        assert result["without"][name]["plain"] == 200, result  # the reason for the fence
        for case in ("with", "configured"):
            seen = result[case][name]
            assert seen["requires"] is True, (case, name, seen)
            assert seen["plain"] != 200 and seen["anyone"] != 200, (case, name, seen)
            assert seen["own"] == 200, (case, name, seen)


def test_a_node_without_a_certificate_serves_no_http():
    """The swap fails closed: a node with no TLS certificate does not start its HTTP
    server (so it does not start) rather than serve it to anyone."""
    probe = textwrap.dedent('''
        import asyncio
        from distributed import Scheduler
        from flowrig.internals.http_tls import require_client_certificates
        require_client_certificates()
        async def main():
            async with Scheduler(host="127.0.0.1", dashboard_address="127.0.0.1:0"):
                pass
        try:
            asyncio.run(main())
        except RuntimeError as exc:
            print("refused:", exc)
    ''')
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert "refused: the scheduler has no TLS certificate" in done.stdout, done.stdout + done.stderr[-2000:]


# --- a command line rewritten in place (flowrig.internals.cmdline) -------------------------


CMDLINE_PROBE = r'''
import json, os, sys
from flowrig.internals.cmdline import arguments
from flowrig.project.parameters import hide_param_values

before = arguments()
hidden = hide_param_values()
pid = os.fork()
if pid == 0:
    __import__("time").sleep(30)
    os._exit(0)
child = arguments(pid)
os.kill(pid, 9)
os.waitpid(pid, 0)
print(json.dumps({"before": [a.decode() for a in before], "after": [a.decode() for a in arguments()],
                  "child": [a.decode() for a in child], "argv": sys.argv, "hidden": hidden}))
'''


def test_a_rewritten_command_line_is_what_other_processes_and_forked_children_show():
    """The arguments ``/proc/PID/cmdline`` shows can be rewritten in place through
    ``/proc/self/mem``; a child forked afterwards shows the new ones; ``sys.argv`` keeps
    the old ones (CPython copied them at start-up)."""
    secret = "s3cr3t-" + "x" * 20
    done = subprocess.run(
        [sys.executable, "-c", CMDLINE_PROBE, "run", "proj", "--param", f"token={secret}", "-pother=1", "-v"],
        capture_output=True, text=True, timeout=60,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    seen = json.loads(done.stdout)
    assert seen["hidden"] is True
    assert secret in " ".join(seen["before"])
    for shown in (seen["after"], seen["child"]):
        assert secret not in " ".join(shown)
        # The rest of the old arguments' room is NUL bytes: empty arguments at the end.
        assert [a for a in shown if a][-5:] == ["proj", "--param", "token=*", "-pother=*", "-v"], shown
    assert f"token={secret}" in seen["argv"]
