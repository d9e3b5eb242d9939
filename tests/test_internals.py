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


# --- the task runner ---------------------------------------------------------------------


def test_task_runner_duplicates_with_its_progress_and_pickles_without_it():
    import cloudpickle
    from prefect_dask import DaskTaskRunner

    from flowrig.internals.task_runner import FlowrigTaskRunner
    from flowrig.run.progress import TaskProgress

    progress = TaskProgress()
    runner = FlowrigTaskRunner(address="tls://127.0.0.1:1", progress=progress)
    # Prefect's flow engine runs a flow on runner.duplicate(): the copy is of our class,
    # made from DaskTaskRunner's constructor arguments, and keeps the run's progress.
    assert "self.address" in inspect.getsource(DaskTaskRunner.duplicate)
    twin = runner.duplicate()
    assert type(twin) is FlowrigTaskRunner and twin.progress is progress and twin.address == runner.address
    # The flow (and its runner) travel with every task: without the run's own state.
    shipped = cloudpickle.loads(cloudpickle.dumps(runner))
    assert shipped.progress is None and shipped.address == runner.address


def test_task_runner_client_is_made_on_first_use():
    from prefect_dask import DaskTaskRunner

    from flowrig.internals.task_runner import FlowrigTaskRunner

    source = inspect.getsource(DaskTaskRunner.client.fget)
    assert "if not self._client" in source
    runner = FlowrigTaskRunner(address="tls://127.0.0.1:1")
    assert runner._client is None  # nothing connected until a task is submitted
