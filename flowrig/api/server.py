"""The run's embedded Prefect API: the runner's side (start, wait, stop).

With no ``PREFECT_API_URL``, Prefect would start a temporary API in every process that
needs one, Dask worker processes included, each paying for imports and migrations. A
run instead starts exactly one API here and hands its URL to the runner and every
worker. Its SQLite database is a copy of the migrated template
(:mod:`~flowrig.api.template`), so a run never migrates.

The server runs in a child process that exits on its own when the runner dies, so not
even ``kill -9`` of the runner leaves it behind.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import TYPE_CHECKING, Any

from flowrig import layout
from flowrig.api.template import SERVER_ENV, clean_env, ensure_template, sqlite_url
from flowrig.common import runfolders
from flowrig.common.runfolders import RunFolder
from flowrig.common.runid import RUN_ID_ENV
from flowrig.errors import InfrastructureError

if TYPE_CHECKING:
    from flowrig.certs import TLSMaterial

#: Seconds the embedded Prefect API may take to answer its health check.
START_TIMEOUT = 60.0

def _listening_socket(host: str, port: int | None) -> socket.socket:
    """A socket bound and listening before the server exists: its port is known at once
    and cannot be taken by anyone else in between."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        if port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port or 0))
        sock.listen(2048)
    except OSError as exc:
        sock.close()
        raise InfrastructureError(
            f"the embedded Prefect API cannot listen on {host}:{port or 0}: {exc.strerror or exc}"
        ) from None
    return sock


def basic_auth(auth_string: str) -> str:
    """The ``Authorization`` header value Prefect's clients send for ``auth_string``."""
    return "Basic " + base64.b64encode(auth_string.encode()).decode()


class EmbeddedPrefectAPI:
    """One Prefect API for one run, private to it.

    Every route but ``GET /api/health`` and ``GET /api/ready`` needs the run's auth
    string, a random token made here that reaches the server through a pipe and the
    run's clients through the settings flowrig ships to its tasks (never a command line
    or an environment variable). The listening socket is made here and handed to the
    server, so no other process can take its port. With ``server_tls`` the API is
    served over HTTPS.

    Parameters
    ----------
    bind_host
        The interface the server listens on: loopback, or the runner's own address on
        the network its workers are on.
    advertised_host
        Host name or address the workers use to reach it.
    port
        Fixed port, or ``None`` for a free one.
    server_tls
        ``(certificate PEM, key PEM)`` to serve HTTPS with; the certificate must name
        ``advertised_host``.
    ca_pem
        The CA the clients trust for it (the run's).
    auth_string
        The token; default: a new random one.
    start_timeout
        Seconds the server may take, from its start, to answer.
    """

    def __init__(
        self,
        bind_host: str = "127.0.0.1",
        advertised_host: str = "127.0.0.1",
        port: int | None = None,
        *,
        server_tls: tuple[bytes, bytes] | None = None,
        ca_pem: bytes | None = None,
        auth_string: str | None = None,
        start_timeout: float = START_TIMEOUT,
    ) -> None:
        self.bind_host = bind_host
        self.advertised_host = advertised_host
        self._socket: socket.socket | None = _listening_socket(bind_host, port)
        self.port: int = self._socket.getsockname()[1]
        self.server_tls = server_tls
        self.ca_pem = ca_pem
        self.auth_string = auth_string or secrets.token_urlsafe(32)
        self.start_timeout = start_timeout
        #: When the server first answered an authenticated request (``time.perf_counter()``).
        self.ready_at: float | None = None
        self._process: subprocess.Popen[bytes] | None = None
        self._workdir: Path | None = None
        self._folder: RunFolder | None = None
        self._ready = threading.Event()
        self._watch_lock = threading.Lock()
        self._watching = False
        self._failure: InfrastructureError | None = None

    @classmethod
    def for_run(cls, hosts: tuple[str, str], tls: "TLSMaterial") -> "EmbeddedPrefectAPI":
        """The API of a run whose certificates are ``tls``: HTTPS when its leaf names the
        advertised host (per-run certificates are made to), else HTTP."""
        bind, advertised = hosts
        return cls(bind, advertised, **_serving(advertised, tls))

    def adopt(self, advertised_host: str, tls: "TLSMaterial") -> "EmbeddedPrefectAPI":
        """Make a server spawned ahead of its run's certificates (:meth:`spawn`) the API
        of the run whose certificates are ``tls``, as :meth:`for_run` would, and hand it
        its configuration (:meth:`configure`)."""
        assert self._socket is not None and self._process is not None, "spawn() first, then adopt once"
        self.advertised_host = advertised_host
        for name, value in _serving(advertised_host, tls).items():
            setattr(self, name, value)
        return self.configure()

    @property
    def scheme(self) -> str:
        return "https" if self.server_tls else "http"

    @property
    def url(self) -> str:
        """``PREFECT_API_URL`` for the runner and every worker."""
        return f"{self.scheme}://{self.advertised_host}:{self.port}/api"

    @property
    def local_url(self) -> str:
        """URL the runner itself uses (always reachable from its own process)."""
        host = "127.0.0.1" if self.bind_host in ("0.0.0.0", "") else self.bind_host
        return f"{self.scheme}://{host}:{self.port}/api"

    def small_ca_file(self, ca_pem: bytes) -> str:
        """A CA file for ``PREFECT_API_SSL_CERT_FILE`` that is cheap to load.

        Every Prefect client builds an SSL context, even for an ``http://`` API, and
        with no CA file it loads the whole system bundle: tens of milliseconds per
        client, and a task run on a worker makes a client. The run's own CA (one
        certificate) is the CA of an API served over HTTPS. In a container whose run's
        certificates were delivered (or baked) its ``ca.crt`` is used: every container of
        the run has it at the same path.
        """
        for directory in (os.environ.get(layout.TLS_DIR_ENV), layout.IMAGE_TLS_DIR if layout.in_image() else None):
            # Certificates delivered to every container of the run, or baked into it.
            shared = Path(directory) / layout.CA_CERT if directory else None
            if shared is not None and shared.is_file() and shared.read_bytes() == ca_pem:
                return str(shared)
        assert self._workdir is not None, "start() first"
        path = self._workdir / layout.CA_CERT
        path.write_bytes(ca_pem)
        return str(path)

    def client_settings(self, tls: "TLSMaterial") -> dict[str, str | None]:
        """Prefect settings, by environment name, of every client of this API, its auth
        string left out (:meth:`secret_settings`): these may go into an environment.

        The API's database is deleted with the run: heartbeats exist so that a server
        can notice a crashed run later, and logs sent there would be deleted unread, so
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
            # CSRF protection is off on this API: no browser can hold its credentials
            # (it never asks for them), and without it a client's first write fetches
            # a token it does not need.
            "PREFECT_CLIENT_CSRF_SUPPORT_ENABLED": "false",
            "PREFECT_FLOWS_HEARTBEAT_FREQUENCY": None,
            # The API has no UI and is gone when the run ends: no "View at" link into it.
            "PREFECT_UI_URL": "",
        }

    def secret_settings(self) -> dict[str, str]:
        """The auth string, by environment name: for the settings shipped to the run's
        tasks over its TLS channel, never for an environment."""
        return {"PREFECT_API_AUTH_STRING": self.auth_string}

    def start(self) -> "EmbeddedPrefectAPI":
        """Start the server without waiting for it (see :meth:`wait_ready`)."""
        return self.spawn().configure()

    def spawn(self) -> "EmbeddedPrefectAPI":
        """Start the server's process, which imports Prefect's server at once and then
        waits for its configuration (:meth:`configure`): what it needs before it can
        import (its environment, its database, its socket) is all made here, so that
        it can be spawned before the run knows its certificates."""
        assert self._socket is not None and self._process is None, "an API starts once"
        template = ensure_template()
        # Held by this process (and the server removes it when this process is gone):
        # a folder that outlives both is for `flowrig local leftovers`.
        self._folder = runfolders.make("prefect", os.environ.get(RUN_ID_ENV))
        self._workdir = self._folder.path
        database = self._workdir / "prefect.db"
        shutil.copyfile(template, database)
        env = clean_env()
        env.update(SERVER_ENV)
        env.update(
            PREFECT_HOME=str(self._workdir),
            PREFECT_SERVER_DATABASE_CONNECTION_URL=sqlite_url(database),
            PREFECT_LOGGING_LEVEL=os.environ.get("PREFECT_LOGGING_LEVEL", "WARNING"),
        )
        errors = open(self._workdir / "server.log", "wb")
        try:
            self._process = subprocess.Popen(
                # The folder is on the command line (it is no secret) so that a server
                # whose runner is gone before it was configured still removes it.
                [sys.executable, "-m", "flowrig.api.serve", "--workdir", str(self._workdir)],
                env=env,
                stdin=subprocess.PIPE,
                stdout=subprocess.DEVNULL,
                stderr=errors,
                pass_fds=(self._socket.fileno(),),
                # Signals sent to the runner's process group stay with the runner: the
                # API must outlive the flow's own handling of them (its final state is
                # reported there), and stops with the runner's teardown or its death.
                start_new_session=True,
            )
        finally:
            errors.close()
        return self

    def configure(self) -> "EmbeddedPrefectAPI":
        """Send the spawned server its auth string, its TLS leaf and its socket's
        number: it serves once it has imported Prefect's server."""
        assert self._socket is not None and self._process is not None, "spawn() first, then configure once"
        config = {
            "fd": self._socket.fileno(),
            "auth": self.auth_string,
            "workdir": str(self._workdir),
            "tls": {"cert": self.server_tls[0].decode(), "key": self.server_tls[1].decode()}
            if self.server_tls
            else None,
        }
        assert self._process.stdin is not None
        try:
            self._process.stdin.write(json.dumps(config).encode() + b"\n")
            self._process.stdin.flush()
        except OSError:
            pass  # it exited while importing: the readiness watch says why (its log)
        # The server holds the socket now; connections wait in its backlog until it serves.
        self._socket.close()
        self._socket = None
        return self

    def watch(self) -> None:
        """Watch for readiness from now on, in a thread, so that ``ready_at`` is the
        moment it was reached even when the run asks only later.

        A runner calls it once it may run threads: the local backend's fork server is
        forked from a runner that still runs one (:meth:`Backend.prepare`).
        :meth:`wait_ready` calls it too.
        """
        with self._watch_lock:
            if self._watching or self._process is None:
                return
            self._watching = True
        threading.Thread(
            target=self._watch_ready, args=(self._process,), name="flowrig-api-ready", daemon=True
        ).start()

    def _request(self, timeout: float) -> int:
        """An authenticated request to the API; its status."""
        import ssl

        request = urllib.request.Request(
            self.local_url + "/flow_runs/filter",
            data=b'{"limit": 1}',
            headers={"Authorization": basic_auth(self.auth_string), "Content-Type": "application/json"},
            method="POST",
        )
        context = None
        if self.server_tls:
            # The socket is this process's own, handed to its own child: whoever
            # answers on it is the server, so its name needs no check.
            context = ssl.create_default_context(cadata=(self.ca_pem or self.server_tls[0]).decode())
            context.check_hostname = False
        try:
            with urllib.request.urlopen(request, timeout=timeout, context=context) as response:
                return response.status
        except urllib.error.HTTPError as exc:
            return exc.code

    def _watch_ready(self, process: "subprocess.Popen[bytes]") -> None:
        deadline = time.monotonic() + self.start_timeout
        try:
            while time.monotonic() < deadline:
                if process.poll() is not None:
                    self._failure = InfrastructureError(
                        f"the embedded Prefect API exited at start: {_cause(self._server_log())}"
                    )
                    return
                try:
                    # Waits in the listen backlog until the server answers.
                    status = self._request(timeout=max(deadline - time.monotonic(), 0.1))
                except OSError:
                    time.sleep(0.05)
                    continue
                if status == 200:
                    self.ready_at = time.perf_counter()
                else:
                    self._failure = InfrastructureError(
                        f"the embedded Prefect API answered {status} to the run's own credentials"
                    )
                return
            self._failure = InfrastructureError(
                f"the embedded Prefect API did not answer within {self.start_timeout:.0f} s; "
                "set PREFECT_API_URL to use a running Prefect server instead"
            )
        finally:
            self._ready.set()

    def _server_log(self) -> str:
        if self._workdir is None:
            return ""
        try:
            return (self._workdir / "server.log").read_text(errors="replace")
        except OSError:
            return ""

    def wait_ready(self, timeout: float | None = None) -> None:
        """Block until the API answers an authenticated request (``ready_at``: when).

        Raises
        ------
        InfrastructureError
            When the server exits or does not answer within ``timeout`` seconds (default:
            the start timeout the API was made with, counted from its start).
        """
        assert self._process is not None, "start() first"
        self.watch()
        if not self._ready.wait(timeout):
            raise InfrastructureError(
                f"the embedded Prefect API did not answer within {timeout:.0f} s; "
                "set PREFECT_API_URL to use a running Prefect server instead"
            )
        if self._failure is not None:
            raise self._failure

    def stop(self) -> None:
        """Stop the server and delete its database; safe to call more than once."""
        if self._socket is not None:
            self._socket.close()
            self._socket = None
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            # The database is thrown away with the run, so there is nothing to shut
            # down gracefully: a graceful uvicorn stop only adds a second to every run.
            process.kill()
            process.wait()
        if process is not None and process.stdin:
            with contextlib.suppress(OSError):
                process.stdin.close()
        if self._folder is not None:
            self._folder.remove()
            self._folder = None
            self._workdir = None


def _serving(advertised_host: str, tls: "TLSMaterial") -> dict[str, Any]:
    """How an API advertised as ``advertised_host`` serves a run whose certificates are
    ``tls``: HTTPS when the leaf names that host, else HTTP; the run's CA either way."""
    serves_tls = advertised_host in tls.hosts
    return {"server_tls": (tls.cert_pem, tls.key_pem) if serves_tls else None, "ca_pem": tls.ca_pem}


def _cause(stderr: str) -> str:
    # uvicorn ends with "Application shutdown failed"; the line that names the cause
    # (a port in use, a database error) comes earlier.
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    for line in lines:
        if "[Errno" in line or "ERROR" in line or "Error:" in line:
            return line
    return lines[-1] if lines else "no output"


