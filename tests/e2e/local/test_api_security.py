"""The run's Prefect API is private to the run: basic auth on every route but /health
and /ready (its /docs and /openapi.json included), served over HTTPS with the run's certificate, on a socket made by the
runner (no port race, no port on a command line), and its auth string in no command
line or environment of any process of the run."""

from __future__ import annotations

import json
import socket
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import psutil
import pytest

from flowrig.api import EmbeddedPrefectAPI
from flowrig.api.server import basic_auth
from flowrig.certs import TLSMaterial
from flowrig.errors import InfrastructureError
from tests.run_support import FLOWRIG, marked_env, processes_with_marker

#: A flow that, while its task naps, lets the test probe the run's API; it writes the
#: run's own credentials to a file so the test can look for them where they must not be.
PROBED_FLOW = """
    import json, os, time
    from pathlib import Path
    from prefect import flow, task
    from prefect.settings import get_current_settings

    @task
    def nap(seconds: float) -> str:
        api = get_current_settings().api
        return json.dumps({"url": str(api.url), "auth": api.auth_string.get_secret_value()})

    @flow
    def main(out: str, seconds: float = 8.0) -> int:
        Path(out).write_text(nap(seconds))
        time.sleep(seconds)
        return 1
"""


def _status(url: str, *, data: bytes | None = None, auth: str | None = None, ca: bytes | None = None) -> int:
    """The status of a request; ``ca`` is trusted, else (a peer the test only needs to
    talk to, not to verify) the server's certificate is not checked."""
    headers = {"Content-Type": "application/json"}
    if auth is not None:
        headers["Authorization"] = basic_auth(auth)
    request = urllib.request.Request(url, data=data, headers=headers, method="POST" if data is not None else "GET")
    if ca:
        context = ssl.create_default_context(cadata=ca.decode())
    else:
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    try:
        with urllib.request.urlopen(request, timeout=20, context=context) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code


def test_only_health_and_ready_answer_without_the_auth_string():
    tls = TLSMaterial.for_run(None, hosts=["127.0.0.1"])
    api = EmbeddedPrefectAPI.for_run(("127.0.0.1", "127.0.0.1"), tls).start()
    try:
        api.wait_ready()
        assert api.url.startswith("https://127.0.0.1:")
        assert _status(api.url + "/health", ca=tls.ca_pem) == 200
        assert _status(api.url + "/ready", ca=tls.ca_pem) == 200
        for path in ("/flow_runs/filter", "/task_runs/filter", "/deployments/filter"):
            assert _status(api.url + path, data=b"{}", ca=tls.ca_pem) == 401, path
            assert _status(api.url + path, data=b"{}", auth="wrong", ca=tls.ca_pem) == 401, path
            assert _status(api.url + path, data=b"{}", auth=api.auth_string, ca=tls.ca_pem) == 200, path
        assert _status(api.url + "/admin/version", ca=tls.ca_pem) == 401
        # The app around the API serves its schema and documentation: behind the same
        # auth string (they list every route and model of the API).
        root = api.url.removesuffix("/api")
        for path in ("/docs", "/redoc", "/openapi.json", "/docs/oauth2-redirect", "/", "/api", "/api/"):
            assert _status(root + path, ca=tls.ca_pem) == 401, path
            assert _status(root + path, auth="wrong", ca=tls.ca_pem) == 401, path
        assert _status(root + "/openapi.json", auth=api.auth_string, ca=tls.ca_pem) == 200
        assert _status(root + "/docs", auth=api.auth_string, ca=tls.ca_pem) == 200
        # Plain HTTP to an HTTPS API gets no answer worth the name.
        with pytest.raises((urllib.error.URLError, ConnectionError, OSError)):
            urllib.request.urlopen(api.url.replace("https://", "http://") + "/health", timeout=5)
    finally:
        api.stop()


def test_the_port_is_the_runners_from_the_start_and_on_no_command_line():
    api = EmbeddedPrefectAPI()
    try:
        # Bound and listening before any server exists: nobody else can take it.
        with socket.socket() as probe:
            with pytest.raises(OSError):
                probe.bind(("127.0.0.1", api.port))
        api.start()
        api.wait_ready()
        child = [p for p in psutil.Process().children() if "flowrig.api.serve" in " ".join(p.cmdline())]
        assert len(child) == 1
        cmdline = " ".join(child[0].cmdline())
        assert str(api.port) not in cmdline and api.auth_string not in cmdline
        assert api.auth_string not in json.dumps(child[0].environ())
    finally:
        api.stop()


def test_a_listening_squatter_cannot_stand_in_for_the_api():
    # The old race: a process answering on the port before the server binds it. The
    # runner's socket is its own, and readiness needs the run's credentials.
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        with pytest.raises(InfrastructureError, match="cannot listen"):
            EmbeddedPrefectAPI(port=squatter.getsockname()[1])


def test_a_run_uses_the_authenticated_api_and_leaks_its_credentials_nowhere(project_factory, tmp_path):
    project = project_factory(PROBED_FLOW, 'flow = "flow.py:main"\n[cluster]\nn_workers = 1\n')
    out = tmp_path / "api.json"
    marker = "api-security"
    process = subprocess.Popen(
        [*FLOWRIG, "run", str(project), "--param", f"out={out}", "--output", "json"],
        env=marked_env(marker), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        deadline = time.monotonic() + 180
        while not out.exists() or not out.read_text():
            assert process.poll() is None, process.communicate()[1][-3000:]
            assert time.monotonic() < deadline
            time.sleep(0.2)
        seen = json.loads(out.read_text())
        assert seen["url"].startswith("https://127.0.0.1:")
        # Mid-run: anyone but the run is refused.
        assert _status(seen["url"] + "/flow_runs/filter", data=b"{}") == 401
        assert _status(seen["url"] + "/flow_runs/filter", data=b"{}", auth=seen["auth"]) == 200
        # The credentials are in no command line and no environment of the run's processes.
        procs = processes_with_marker(marker)
        assert len(procs) >= 3  # runner, API server, worker (and its nanny / fork server)
        for proc in procs:
            assert seen["auth"] not in " ".join(proc.cmdline()), proc.cmdline()[:3]
            assert seen["auth"] not in json.dumps(proc.environ()), proc.cmdline()[:3]
        stdout, stderr = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == 0, stderr[-3000:]
    assert json.loads(stdout.strip().splitlines()[-1])["state"] == "Completed"
    assert seen["auth"] not in stdout + stderr


def test_no_secret_in_the_client_settings_that_may_reach_an_environment(tmp_path: Path):
    tls = TLSMaterial.ephemeral()
    api = EmbeddedPrefectAPI(ca_pem=tls.ca_pem)
    try:
        api.start()
        public = api.client_settings(tls)
        assert "PREFECT_API_AUTH_STRING" not in public
        assert api.auth_string not in json.dumps(public)
        assert api.secret_settings() == {"PREFECT_API_AUTH_STRING": api.auth_string}
    finally:
        api.stop()
