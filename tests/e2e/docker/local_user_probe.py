"""What another user of the machine can get from a run: run by tests/e2e/docker/test_local_users.py
as that user, with the system's Python and its standard library only.

Reads a JSON object on stdin::

    {"secret": "...",                       a parameter value of the run
     "endpoints": [["127.0.0.1", 41234], ...],   every port the run listens on
     "open": [["127.0.0.1", 41999, "/api/health"], ...],   routes allowed to answer
     "proxy": ["127.0.0.1", 45678] or null, the run's dashboard proxy
     "tmp": "/tmp/...",                     the run's TMPDIR
     "own": "/tmp/.../dask-scratch-space"}  a directory this user made there first

and prints one JSON object: ``findings``, a list of everything the user got (empty
when the run gave away nothing), ``answers``, the status of every HTTP answer by URL
(refusals included), and ``tried``, how many probes were made.
"""

from __future__ import annotations

import glob
import http.client
import json
import os
import socket
import ssl
import sys

PATHS = (
    "/", "/status", "/metrics", "/health", "/info/main/workers.html", "/info/main/logs.html",
    "/json/identity.json", "/sitemap.json", "/individual-plots.json", "/individual-task-stream",
    "/api/health", "/api/ready", "/api/flow_runs/filter", "/docs", "/openapi.json", "/redoc",
    "/status?flowrig-token=guess",
)

#: Seconds an endpoint may take to answer: a busy scheduler or API can be slow, and a
#: slow answer must not pass for none.
TIMEOUT = 20
#: Seconds for a TLS handshake: a plain HTTP server never finishes one.
HANDSHAKE_TIMEOUT = 5

findings: list[str] = []
#: Every answer an HTTP probe got, by URL: what each endpoint showed this user.
answers: dict[str, int] = {}
tried = 0


def _anyone_context() -> ssl.SSLContext:
    """A TLS client without a certificate that trusts any server: what this user has."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def _speaks_tls(host: str, port: int) -> str:
    """``"open"`` when a TLS handshake without a client certificate completes,
    ``"refused"`` when the server speaks TLS but refuses it, ``"plain"`` otherwise
    (an HTTP server waits for the rest of a "request" that never ends)."""
    global tried
    tried += 1
    try:
        with socket.create_connection((host, port), timeout=HANDSHAKE_TIMEOUT) as raw:
            with _anyone_context().wrap_socket(raw, server_hostname=None) as wrapped:
                # TLS 1.3: a server that wants a client certificate says so after the
                # handshake, on the first read.
                wrapped.settimeout(HANDSHAKE_TIMEOUT)
                try:
                    wrapped.recv(1)
                except socket.timeout:
                    pass
                return "open"
    except ssl.SSLError:
        return "refused"
    except OSError:
        return "plain"


def _request(host: str, port: int, path: str, *, tls: bool, headers: dict[str, str] | None = None,
             method: str = "GET") -> tuple[int, bytes] | None:
    global tried
    tried += 1
    try:
        if tls:
            connection: http.client.HTTPConnection = http.client.HTTPSConnection(
                host, port, timeout=TIMEOUT, context=_anyone_context())
        else:
            connection = http.client.HTTPConnection(host, port, timeout=TIMEOUT)
        connection.request(method, path, headers=headers or {})
        response = connection.getresponse()
        # A switched protocol (a websocket) has no end to read.
        body = response.read(4096) if response.status != 101 else b""
        connection.close()
        return response.status, body
    except (OSError, http.client.HTTPException, ssl.SSLError):
        return None


def probe_command_lines(secret: str) -> None:
    """Every process's command line, and its environment where the kernel lets this
    user read it (its own processes only)."""
    global tried
    for what in ("cmdline", "environ"):
        for path in glob.glob(f"/proc/[0-9]*/{what}"):
            tried += 1
            try:
                with open(path, "rb") as f:
                    if secret.encode() in f.read():
                        findings.append(f"the parameter's value is in {path}")
            except OSError:
                pass


def probe_http(endpoints: list[list], open_routes: list[list], proxy: list | None) -> None:
    allowed = {(h, p, path) for h, p, path in open_routes}
    served_to_anyone = {(h, p) for h, p, _ in open_routes}
    for host, port in endpoints:
        handshake = _speaks_tls(host, port)
        if handshake == "open" and (host, port) not in served_to_anyone:
            findings.append(f"{host}:{port} completes a TLS handshake with no client certificate")
        for tls in (False, True) if handshake == "open" else (False,):
            for path in PATHS:
                answer = _request(host, port, path, tls=tls)
                if answer is None:
                    continue
                status, body = answer
                answers[f"{'https' if tls else 'http'}://{host}:{port}{path}"] = status
                if status < 400 and (host, port, path) not in allowed:
                    findings.append(
                        f"{'https' if tls else 'http'}://{host}:{port}{path} answered {status}: {body[:120]!r}")
            # A websocket (bokeh's live pages) without the cookie.
            answer = _request(host, port, "/status/ws", tls=tls, headers={
                "Upgrade": "websocket", "Connection": "Upgrade", "Sec-WebSocket-Version": "13",
                "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==", "Sec-WebSocket-Protocol": "bokeh, x",
            })
            if answer is not None and answer[0] < 400:
                findings.append(f"a websocket at {host}:{port}/status/ws answered {answer[0]}")
    if proxy:
        host, port = proxy
        # Another name for this machine (DNS rebinding) and a made-up cookie get nothing either.
        for headers in ({"Host": f"rebound.example:{port}"},
                        {"Cookie": f"flowrig-dashboard-{port}=guess"}):
            answer = _request(host, port, "/status", tls=False, headers=headers)
            if answer is not None and answer[0] < 400:
                findings.append(f"the proxy answered {answer[0]} to {headers}")


def probe_files(tmp: str, own: str | None) -> None:
    global tried
    me = os.getuid()
    for entry in sorted(os.listdir(tmp)):
        path = os.path.join(tmp, entry)
        tried += 1
        try:
            info = os.lstat(path)
        except OSError:
            continue
        if info.st_uid == me:
            continue
        try:
            if os.path.isdir(path):
                listed = os.listdir(path)
                findings.append(f"{path} (the run's) can be listed: {listed[:5]}")
                try:
                    with open(os.path.join(path, "planted.py"), "w") as f:
                        f.write("planted = True\n")
                    findings.append(f"{path} (the run's) takes files of this user")
                except OSError:
                    pass
            else:
                with open(path, "rb") as f:
                    findings.append(f"{path} (the run's) can be read: {f.read(80)!r}")
        except OSError:
            pass
    if own and os.path.isdir(own):
        used = [name for name in os.listdir(own) if not name.startswith("planted")]
        if used:
            findings.append(f"the run used {own}, a directory of this user's: {used[:5]}")


def main() -> None:
    spec = json.load(sys.stdin)
    probe_command_lines(spec["secret"])
    probe_http(spec.get("endpoints") or [], spec.get("open") or [], spec.get("proxy"))
    if spec.get("tmp"):
        probe_files(spec["tmp"], spec.get("own"))
    json.dump({"findings": findings, "answers": answers, "tried": tried, "uid": os.getuid()}, sys.stdout)


if __name__ == "__main__":
    main()
