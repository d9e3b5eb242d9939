"""A local Prefect server for the benchmarks that measure against one (imported by them)."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path


def start_server(work: Path, env: dict[str, str]) -> tuple[subprocess.Popen, str]:
    """``prefect server start`` on a free loopback port (UI off, home under ``work``),
    once it answers; returns the process and its API URL."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {**env, "PREFECT_HOME": str(work / "server-home"), "PREFECT_UI_ENABLED": "false"}
    server = subprocess.Popen(
        [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}/api"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url + "/health", timeout=2):
                return server, url
        except OSError:
            time.sleep(0.5)
    server.kill()
    sys.exit("the Prefect server did not start")
