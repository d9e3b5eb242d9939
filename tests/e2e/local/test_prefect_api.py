"""The run's embedded Prefect API: a migrated database template made once, a real
server that answers its health check, stops cleanly, and dies with its parent."""

from __future__ import annotations

import shutil
import socket
import sqlite3
import subprocess
import sys
import textwrap
import time
import urllib.request
import uuid
from pathlib import Path

import pytest

from flowrig.api import START_TIMEOUT, EmbeddedPrefectAPI, ensure_template, template_path
from flowrig.certs import TLSMaterial
from flowrig.errors import InfrastructureError
from tests.run_support import listening, marked_env, processes_with_marker


def health(api: EmbeddedPrefectAPI) -> tuple[int, str]:
    with urllib.request.urlopen(api.local_url + "/health", timeout=10) as response:
        return response.status, response.read().decode()


def test_urls():
    api = EmbeddedPrefectAPI(bind_host="0.0.0.0", advertised_host="runner", port=4321)
    loopback = EmbeddedPrefectAPI()
    try:
        assert api.url == "http://runner:4321/api"
        assert api.local_url == "http://127.0.0.1:4321/api"
        assert loopback.url == loopback.local_url == f"http://127.0.0.1:{loopback.port}/api"
        # The port is the runner's own from the start: nothing else can bind it.
        with socket.socket() as probe:
            with pytest.raises(OSError):
                probe.bind(("127.0.0.1", loopback.port))
        tls = TLSMaterial.ephemeral(hosts=["runner"])
        served = EmbeddedPrefectAPI.for_run(("0.0.0.0", "runner"), tls)
        assert served.url == f"https://runner:{served.port}/api"  # its leaf names the host
        served.stop()
        plain = EmbeddedPrefectAPI.for_run(("0.0.0.0", "10.1.2.3"), tls)
        assert plain.url.startswith("http://10.1.2.3:")  # no certificate for that address
        plain.stop()
    finally:
        api.stop()
        loopback.stop()


def test_ensure_template_is_idempotent():
    first = ensure_template()
    assert first == template_path() and first.is_file()
    mtime = first.stat().st_mtime_ns
    started = time.perf_counter()
    assert ensure_template() == first
    assert time.perf_counter() - started < 0.5
    assert first.stat().st_mtime_ns == mtime


def test_template_is_made_under_flowrig_home(tmp_path, monkeypatch):
    from importlib.metadata import version

    monkeypatch.setenv("FLOWRIG_HOME", str(tmp_path))
    # The caller's own database settings must not redirect the template.
    monkeypatch.setenv("PREFECT_SERVER_DATABASE_CONNECTION_URL", f"sqlite+aiosqlite:///{tmp_path / 'wrong.db'}")
    path = ensure_template()
    assert path == tmp_path / f"prefect-{version('prefect')}" / "template.db"
    assert path.is_file() and not path.with_suffix(".partial").exists()
    assert not (tmp_path / "wrong.db").exists()
    with sqlite3.connect(path) as db:
        tables = {row[0] for row in db.execute("select name from sqlite_master where type='table'")}
        assert {"alembic_version", "flow", "flow_run", "task_run"} <= tables
        # The migrations recorded their revision.
        assert db.execute("select count(*) from alembic_version").fetchone()[0] == 1
    started = time.perf_counter()
    assert ensure_template() == path
    assert time.perf_counter() - started < 0.5


def test_start_wait_ready_stop(monkeypatch):
    # A configured API or database of the caller must not leak into the run's server.
    monkeypatch.setenv("PREFECT_API_URL", "http://127.0.0.1:9/api")
    monkeypatch.setenv("PREFECT_SERVER_DATABASE_CONNECTION_URL", "sqlite+aiosqlite:////nonexistent/dir/x.db")
    api = EmbeddedPrefectAPI()
    try:
        assert api.start() is api
        api.wait_ready(timeout=START_TIMEOUT)
        assert health(api) == (200, "true")
        workdir = api._workdir
        assert workdir is not None and (workdir / "prefect.db").is_file()
        process = api._process
        assert process is not None and process.poll() is None
    finally:
        api.stop()
    assert process.poll() is not None
    assert not listening(api.local_url)
    assert not workdir.exists()
    api.stop()  # a second stop is harmless
    assert not listening(api.local_url)


def test_stop_before_start_is_harmless():
    api = EmbeddedPrefectAPI()
    api.stop()
    api.stop()


def test_wait_ready_times_out():
    api = EmbeddedPrefectAPI().start()
    try:
        with pytest.raises(InfrastructureError, match="did not answer within 0 s.*PREFECT_API_URL"):
            api.wait_ready(timeout=0)
    finally:
        api.stop()


def test_port_in_use_names_the_cause():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        with pytest.raises(InfrastructureError, match="cannot listen on 127.0.0.1") as info:
            EmbeddedPrefectAPI(port=taken.getsockname()[1])
    assert "Address already in use" in str(info.value)


PARENT = textwrap.dedent(
    """
    import time
    from flowrig.api import EmbeddedPrefectAPI

    api = EmbeddedPrefectAPI().start()
    api.wait_ready()
    print(api.local_url, api._workdir, flush=True)
    time.sleep(600)
    """
)


def test_server_exits_when_its_parent_is_killed():
    marker = uuid.uuid4().hex
    parent = subprocess.Popen(
        [sys.executable, "-c", PARENT],
        env=marked_env(marker),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    workdir = None
    try:
        line = parent.stdout.readline().split()
        assert len(line) == 2, parent.stderr.read() if parent.poll() is not None else line
        url, workdir = line[0], Path(line[1])
        assert listening(url)
        server = [p for p in processes_with_marker(marker) if p.pid != parent.pid]
        assert len(server) == 1 and "flowrig.api.serve" in server[0].cmdline()
        assert server[0].ppid() == parent.pid

        parent.kill()  # SIGKILL: no finally, no atexit, nothing of the parent runs
        parent.wait(timeout=10)
        # A process that is exiting may already be unreadable (so no longer listed)
        # while the kernel still closes its socket: wait for both, within the deadline.
        deadline = time.monotonic() + 5
        while (processes_with_marker(marker) or listening(url)) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert processes_with_marker(marker) == []
        assert not listening(url)
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()
        for proc in processes_with_marker(marker):
            proc.kill()
        parent.stdout.close()
        parent.stderr.close()
        if workdir is not None:
            shutil.rmtree(workdir, ignore_errors=True)
