"""A stand-in for the clouds' metadata services, on loopback, for the drain's notices.

One threaded HTTP server answers as ECS's task metadata endpoint v4 (under ``/ecs``),
EC2's IMDSv2 (a token is required: 401 without it), GCP's ``preempted`` (with
``wait_for_change``; 403 without ``Metadata-Flavor: Google``) and Azure's scheduled
events (400 without ``Metadata: true``), as their documentation describes them.
:meth:`MetadataStandIn.notice` turns one of them to "this machine is being taken
back"; :attr:`MetadataStandIn.requests` records what was asked.
"""

from __future__ import annotations

import json
import threading
import time
from datetime import datetime, timezone
from email.utils import format_datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

TOKEN = "AQAEAstand-in-token=="
VM_NAME = "flowrig-worker-vm"


class MetadataStandIn:
    """``url`` is its base; ``environment(kind)`` what a worker needs to read ``kind``."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, str, dict[str, str]]] = []
        self.notices: dict[str, float] = {}
        #: When set, every GET is answered with a redirect there (a hostile endpoint).
        self.redirect: str | None = None
        self.changed = threading.Condition()
        stand_in = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def do_PUT(self) -> None:
                stand_in._record(self)
                if self.path == "/latest/api/token" and self.headers.get("X-aws-ec2-metadata-token-ttl-seconds"):
                    return self._send(200, TOKEN.encode())
                self._send(400, b"")

            def do_GET(self) -> None:
                stand_in._record(self)
                if stand_in.redirect:
                    return self._send(302, b"", {"Location": stand_in.redirect + self.path})
                status, body = stand_in._answer(self)
                self._send(status, body)

            def _send(self, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
                self.send_response(status)
                for name, value in (headers or {}).items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def environment(self, kind: str) -> dict[str, str]:
        host = self.url.removeprefix("http://")
        return {
            "ecs": {"ECS_CONTAINER_METADATA_URI_V4": self.url + "/ecs"},
            "ec2": {"AWS_EC2_METADATA_SERVICE_ENDPOINT": self.url},
            "gcp": {"GCE_METADATA_HOST": host},
            "azure": {"FLOWRIG_AZURE_METADATA": self.url},
        }[kind] | {"FLOWRIG_SPOT_NOTICE": kind}

    def notice(self, kind: str, in_seconds: float = 60.0) -> None:
        """``kind``'s machine is taken back ``in_seconds`` from now."""
        with self.changed:
            self.notices[kind] = time.time() + in_seconds
            self.changed.notify_all()

    def paths(self, method: str = "GET") -> list[str]:
        return [path for m, path, _ in self.requests if m == method]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    # --- the answers --------------------------------------------------------------------
    def _record(self, handler: BaseHTTPRequestHandler) -> None:
        self.requests.append((handler.command, handler.path, dict(handler.headers.items())))

    def _answer(self, handler: BaseHTTPRequestHandler) -> tuple[int, bytes]:
        url = urlsplit(handler.path)
        query = parse_qs(url.query)
        headers = handler.headers
        if url.path == "/ecs/task":
            desired = "STOPPED" if "ecs" in self.notices else "RUNNING"
            return 200, json.dumps({"TaskARN": "arn:aws:ecs:eu-west-1:1:task/c/abc", "DesiredStatus": desired,
                                    "KnownStatus": "RUNNING"}).encode()
        if url.path == "/latest/meta-data/spot/instance-action":
            if headers.get("X-aws-ec2-metadata-token") != TOKEN:
                return 401, b""
            if "ec2" not in self.notices:
                return 404, b""
            when = datetime.fromtimestamp(self.notices["ec2"], timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
            return 200, json.dumps({"action": "terminate", "time": when}).encode()
        if url.path == "/computeMetadata/v1/instance/preempted":
            if headers.get("Metadata-Flavor") != "Google":
                return 403, b""
            if query.get("wait_for_change") == ["true"]:
                wait = float(query.get("timeout_sec", ["60"])[0])
                with self.changed:
                    self.changed.wait_for(lambda: "gcp" in self.notices, timeout=wait)
            return 200, b"TRUE" if "gcp" in self.notices else b"FALSE"
        if url.path.startswith("/metadata/"):
            if headers.get("Metadata") != "true":
                return 400, b""
            if url.path == "/metadata/instance/compute/name":
                return 200, VM_NAME.encode()
            if url.path == "/metadata/scheduledevents":
                events = []
                if "azure" in self.notices:
                    when = datetime.fromtimestamp(self.notices["azure"], timezone.utc)
                    events.append({"EventId": "1", "EventType": "Preempt", "ResourceType": "VirtualMachine",
                                   "Resources": [VM_NAME], "EventStatus": "Scheduled",
                                   "NotBefore": format_datetime(when, usegmt=True)})
                return 200, json.dumps({"DocumentIncarnation": 1, "Events": events}).encode()
        return 404, b""
