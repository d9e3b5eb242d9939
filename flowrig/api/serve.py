"""The embedded API's own process: ``python -m flowrig.api.serve`` (started by
:class:`flowrig.api.EmbeddedPrefectAPI`, never by users).

Nothing secret and no port is on its command line or in its environment: it reads one
JSON line from stdin, a pipe its parent keeps open for its whole life::

    {"fd": 5,                       the listening socket, made and bound by the parent
     "auth": "...",                 -> server.api.auth_string (basic auth on every route
                                       but /api/health and /api/ready, /docs included)
     "tls": {"cert": "...", "key": "..."} or null,   serve HTTPS with this leaf
     "workdir": "/tmp/..."}         removed when the parent goes away

It imports Prefect's server before it reads that line, so that a run can spawn it as
its first step. End of file on stdin means the parent is gone (even after ``kill -9``):
the server exits at once (once its import is done, before it); a watch of the
parent's pid covers a parent whose forks still hold the pipe. Either way it removes
the run's folder (``--workdir``). A process flowrig owns, so start-up may pause and freeze the collector here.

``python -m flowrig.api.serve make-template`` migrates the database template (build
time in the image, once per Prefect version on a host).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import sys
import threading
import time
from typing import Any


def _read_line(fd: int = 0) -> bytes:
    # Unbuffered, byte by byte: nothing buffered is shared with the watcher's reads.
    chunks = []
    while True:
        byte = os.read(fd, 1)
        if not byte or byte == b"\n":
            return b"".join(chunks)
        chunks.append(byte)


def _gone(workdir: str | None) -> None:
    if workdir:
        shutil.rmtree(workdir, ignore_errors=True)
    os._exit(0)


def _watch_stdin(workdir: str | None) -> None:
    # The parent writes nothing after the first line: end of file means it is gone.
    try:
        while os.read(0, 65536):
            pass
    finally:
        _gone(workdir)


def _watch_parent(parent: int, workdir: str | None) -> None:
    while os.getppid() == parent:
        time.sleep(0.5)
    _gone(workdir)


def _memfd(name: str, data: bytes) -> tuple[int, str]:
    """An anonymous in-memory file, and a path OpenSSL can open it by: no disk."""
    fd = os.memfd_create(name, os.MFD_CLOEXEC)
    os.write(fd, data)
    return fd, f"/proc/self/fd/{fd}"


def serve(config: dict[str, Any]) -> None:
    """Build the app under the run's settings and serve the inherited socket."""
    import uvicorn
    from prefect.settings import PREFECT_SERVER_API_AUTH_STRING, temporary_settings

    from flowrig.api.auth import RequireAuth
    from flowrig.common.startup_gc import collector_paused
    from flowrig.internals import prefect_server

    # The settings context wraps the app's creation and its whole event loop: the app
    # reads the auth string when it is built, the websocket handshakes on each connection.
    with temporary_settings(updates={PREFECT_SERVER_API_AUTH_STRING: config["auth"]}):
        with collector_paused():
            # Every route of the app, not only Prefect's under /api: its /docs and
            # /openapi.json would describe the API to anyone.
            app = RequireAuth(prefect_server.create_app(), config["auth"])
        # family, type and protocol read from the socket itself: with protocol 6 asyncio
        # sets TCP_NODELAY on each connection (about 45 ms a request without it).
        sock = socket.socket(fileno=config["fd"])
        options: dict[str, Any] = {}
        fds: list[int] = []
        if config.get("tls"):
            cert_fd, cert_path = _memfd("flowrig-api-cert", config["tls"]["cert"].encode())
            key_fd, key_path = _memfd("flowrig-api-key", config["tls"]["key"].encode())
            fds = [cert_fd, key_fd]
            options.update(ssl_certfile=cert_path, ssl_keyfile=key_path)
        server_config = uvicorn.Config(app, log_level="error", lifespan="on", **options)
        server_config.load()  # reads the key now; its in-memory file can go
        for fd in fds:
            os.close(fd)
        uvicorn.Server(server_config).run(sockets=[sock])


def main(argv: list[str] | None = None) -> None:
    """``python -m flowrig.api.serve [--workdir DIR | make-template]`` (internal)."""
    argv = sys.argv[1:] if argv is None else argv
    from flowrig.internals import prefect_server

    if argv[:1] == ["make-template"]:
        prefect_server.build_template_database()
        return
    # The run's folder, removed when the runner goes away before it sent the config.
    workdir = argv[1] if argv[:1] == ["--workdir"] and len(argv) > 1 else None
    threading.Thread(target=_watch_parent, args=(os.getppid(), workdir), daemon=True).start()
    from flowrig.common.startup_gc import collector_paused

    # Imported before the configuration is read: the runner spawns this process as the
    # first thing a run does and sends the configuration once it has made the run's
    # certificates, while this import (most of the API's start-up) goes on.
    with collector_paused():
        import uvicorn  # noqa: F401

        prefect_server.import_server()
    line = _read_line(0)
    if not line:
        _gone(workdir)
    config = json.loads(line)
    threading.Thread(target=_watch_stdin, args=(config.get("workdir"),), daemon=True).start()
    serve(config)


if __name__ == "__main__":
    main()
