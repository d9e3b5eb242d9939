"""The run's embedded Prefect API: the runner's side (start, wait, stop).

With no ``PREFECT_API_URL``, Prefect would start a temporary API in every process that
needs one, Dask worker processes included, each paying for imports and migrations. A
run instead starts exactly one API here and hands its URL to the runner and every
worker. Its SQLite database is a copy of a template migrated once per Prefect version
(at image build time in the image), so a run never migrates.

The server runs in a child process that exits on its own when the runner dies, so not
even ``kill -9`` of the runner leaves it behind.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import TYPE_CHECKING

from flowrig import layout
from flowrig.errors import InfrastructureError

if TYPE_CHECKING:
    from flowrig.certs import TLSMaterial

#: Seconds the embedded Prefect API may take to answer its health check.
START_TIMEOUT = 60.0

#: Settings that make the throwaway server quiet, offline and quick to start.
_SERVER_ENV = {
    "PREFECT__SERVER_EPHEMERAL": "1",
    "PREFECT__SERVER_FINAL": "1",
    "PREFECT_UI_ENABLED": "false",
    # No browser talks to this API (its UI is off), and the run's clients do not
    # fetch CSRF tokens from it: whatever the caller's environment says.
    "PREFECT_SERVER_API_CSRF_PROTECTION_ENABLED": "false",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "PREFECT_SERVER_DATABASE_MIGRATE_ON_START": "false",
    "PREFECT_SERVER_REGISTER_BLOCKS_ON_START": "false",
    # Its check of whether block types changed since the last start loads every
    # installed collection and hashes the registry even when registration is off:
    # about a second of start-up. The template already holds the block types.
    "PREFECT_SERVER_MEMOIZE_BLOCK_AUTO_REGISTRATION": "false",
    # The database is deleted with the run, so services that turn events into task
    # runs, persist events and logs, or react to them would only spend the run's CPU
    # on rows nobody reads. The flow run and its states are written by the API itself.
    "PREFECT_SERVER_SERVICES_TASK_RUN_RECORDER_ENABLED": "false",
    "PREFECT_SERVER_SERVICES_EVENT_PERSISTER_ENABLED": "false",
    "PREFECT_SERVER_SERVICES_EVENT_LOGGER_ENABLED": "false",
    "PREFECT_SERVER_SERVICES_TRIGGERS_ENABLED": "false",
    "PREFECT_SERVER_EVENTS_STREAM_OUT_ENABLED": "false",
    "PREFECT_SERVER_LOGS_STREAM_OUT_ENABLED": "false",
}


def _sqlite_url(path: Path) -> str:
    return f"sqlite+aiosqlite:///{path}"


def _prefect_version() -> str:
    from importlib.metadata import version

    return version("prefect")


def template_path() -> Path:
    """Where the migrated database template for the installed Prefect lives."""
    return layout.cache_dir() / f"prefect-{_prefect_version()}" / "template.db"


def ensure_template() -> Path:
    """Create the migrated database template once; later calls return at once.

    Concurrent runs wait on a file lock instead of migrating side by side.
    """
    path = template_path()
    if path.is_file():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.parent / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if path.is_file():
            return path
        partial = path.with_suffix(".partial")
        partial.unlink(missing_ok=True)
        env = _clean_env()
        env.update(
            PREFECT_HOME=str(path.parent),
            PREFECT_SERVER_DATABASE_CONNECTION_URL=_sqlite_url(partial),
            PREFECT_SERVER_ANALYTICS_ENABLED="false",
        )
        done = subprocess.run(
            [sys.executable, "-m", "flowrig.api.serve", "make-template"],
            env=env,
            capture_output=True,
            text=True,
        )
        if done.returncode != 0:
            tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
            raise InfrastructureError(f"could not create the Prefect database: {tail}")
        partial.rename(path)
    return path


def _clean_env() -> dict[str, str]:
    # The server must never talk to another API, nor read the caller's database URL.
    return {
        k: v
        for k, v in os.environ.items()
        if k not in ("PREFECT_API_URL", "PREFECT_API_KEY")
        and not k.startswith(("PREFECT_SERVER_DATABASE", "PREFECT_API_DATABASE"))
    }


def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


class EmbeddedPrefectAPI:
    """One Prefect API for one run.

    Parameters
    ----------
    bind_host
        Address the server listens on (loopback, or ``0.0.0.0`` in a runner container).
    advertised_host
        Host name workers use to reach it.
    port
        Fixed port, or ``None`` for a free one.
    start_timeout
        Seconds the server may take, from its start, to answer.
    """

    def __init__(
        self,
        bind_host: str = "127.0.0.1",
        advertised_host: str = "127.0.0.1",
        port: int | None = None,
        start_timeout: float = START_TIMEOUT,
    ) -> None:
        self.bind_host = bind_host
        self.advertised_host = advertised_host
        self.port = port or _free_port(bind_host)
        self.start_timeout = start_timeout
        #: When the server first answered (``time.perf_counter()``), once it has.
        self.ready_at: float | None = None
        self._process: subprocess.Popen[bytes] | None = None
        self._workdir: Path | None = None

    @property
    def url(self) -> str:
        """``PREFECT_API_URL`` for the runner and every worker."""
        return f"http://{self.advertised_host}:{self.port}/api"

    def small_ca_file(self, ca_pem: bytes) -> str:
        """A CA file for ``PREFECT_API_SSL_CERT_FILE`` that is cheap to load.

        Every Prefect client builds an SSL context, even for an ``http://`` API, and
        with no CA file it loads the whole system bundle: tens of milliseconds per
        client, and a task run on a worker makes a client. The run's own CA (one
        certificate) is also the right CA should the API ever be served over TLS.
        Inside the image the baked ``ca.crt`` is used, which every container has.
        """
        baked = layout.IMAGE_TLS_DIR / layout.CA_CERT
        if layout.in_image() and baked.is_file() and baked.read_bytes() == ca_pem:
            return str(baked)
        assert self._workdir is not None, "start() first"
        path = self._workdir / layout.CA_CERT
        path.write_bytes(ca_pem)
        return str(path)

    def client_settings(self, tls: "TLSMaterial") -> dict[str, str | None]:
        """Prefect settings, by environment name, of every client of this API.

        The runner's flow uses them and ships them to the tasks on the workers. The
        API's database is deleted with the run: heartbeats exist so that a server can
        notice a crashed run later, and logs sent there would be deleted unread, so
        both are off (the logs still go to the console). Cutting the heartbeat also
        saves the up to one second Prefect waits for its thread at the end of a flow.
        The API runs the very Prefect the clients do, so none asks for its version.
        ``None`` unsets a setting.
        """
        return {
            "PREFECT_API_URL": self.url,
            "PREFECT_API_SSL_CERT_FILE": self.small_ca_file(tls.ca_pem),
            "PREFECT_LOGGING_TO_API_ENABLED": "false",
            "PREFECT_CLIENT_SERVER_VERSION_CHECK_ENABLED": "false",
            # The API has CSRF protection off (no browser talks to it), so the token each
            # new client would fetch before its first write is only a wasted request.
            "PREFECT_CLIENT_CSRF_SUPPORT_ENABLED": "false",
            "PREFECT_FLOWS_HEARTBEAT_FREQUENCY": None,
            # The API has no UI and is gone when the run ends: no "View at" link into it.
            "PREFECT_UI_URL": "",
        }

    @property
    def local_url(self) -> str:
        """URL the runner itself uses (always reachable from its own process)."""
        host = "127.0.0.1" if self.bind_host in ("0.0.0.0", "") else self.bind_host
        return f"http://{host}:{self.port}/api"

    def start(self) -> "EmbeddedPrefectAPI":
        """Start the server without waiting for it (see :meth:`wait_ready`)."""
        template = ensure_template()
        self._workdir = Path(tempfile.mkdtemp(prefix="flowrig-prefect-"))
        database = self._workdir / "prefect.db"
        shutil.copyfile(template, database)
        env = _clean_env()
        env.update(_SERVER_ENV)
        env.update(
            PREFECT_HOME=str(self._workdir),
            PREFECT_SERVER_DATABASE_CONNECTION_URL=_sqlite_url(database),
            PREFECT_LOGGING_LEVEL=os.environ.get("PREFECT_LOGGING_LEVEL", "WARNING"),
        )
        self._process = subprocess.Popen(
            [
                sys.executable, "-m", "flowrig.api.serve", "serve",
                "--host", self.bind_host, "--port", str(self.port),
                "--parent", str(os.getpid()), "--workdir", str(self._workdir),
            ],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        # Readiness is watched from now on, so the moment it is reached is known even
        # when the run asks only later (after its cluster started).
        self._ready = threading.Event()
        self._failure: InfrastructureError | None = None
        self._watcher = threading.Thread(
            target=self._watch_ready, args=(self._process,), name="flowrig-api-ready", daemon=True
        )
        self._watcher.start()
        return self

    def _watch_ready(self, process: "subprocess.Popen[bytes]") -> None:
        deadline = time.monotonic() + self.start_timeout
        health = self.local_url + "/health"
        while time.monotonic() < deadline:
            if process.poll() is not None:
                err = process.stderr.read().decode(errors="replace") if process.stderr else ""
                self._failure = InfrastructureError(f"the embedded Prefect API exited at start: {_cause(err)}")
                break
            with contextlib.suppress(OSError):
                with urllib.request.urlopen(health, timeout=2) as response:
                    if response.status == 200:
                        self.ready_at = time.perf_counter()
                        break
            time.sleep(0.05)
        else:
            self._failure = InfrastructureError(
                f"the embedded Prefect API did not answer within {self.start_timeout:.0f} s; "
                "set PREFECT_API_URL to use a running Prefect server instead"
            )
        self._ready.set()

    def wait_ready(self, timeout: float | None = None) -> None:
        """Block until ``/api/health`` answers (``ready_at`` says when it first did).

        Raises
        ------
        InfrastructureError
            When the server exits or does not answer within ``timeout`` seconds (default:
            the start timeout the API was made with, counted from its start).
        """
        assert self._process is not None, "start() first"
        if not self._ready.wait(timeout):
            raise InfrastructureError(
                f"the embedded Prefect API did not answer within {timeout:.0f} s; "
                "set PREFECT_API_URL to use a running Prefect server instead"
            )
        if self._failure is not None:
            raise self._failure

    def stop(self) -> None:
        """Stop the server and delete its database; safe to call more than once."""
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            # The database is thrown away with the run, so there is nothing to shut
            # down gracefully: a graceful uvicorn stop only adds a second to every run.
            process.kill()
            process.wait()
        if process is not None and process.stderr:
            process.stderr.close()
        if self._workdir is not None:
            shutil.rmtree(self._workdir, ignore_errors=True)
            self._workdir = None


def _cause(stderr: str) -> str:
    # uvicorn ends with "Application shutdown failed"; the line that names the cause
    # (a port in use, a database error) comes earlier.
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    for line in lines:
        if "[Errno" in line or "ERROR" in line or "Error:" in line:
            return line
    return lines[-1] if lines else "no output"


