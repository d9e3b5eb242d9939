"""A fault-injecting HTTP proxy between flowrig and the tests' moto server.

moto starts every ECS task RUNNING, stops it without a stop code or container reason,
never answers RunTask with failures and never throttles. :class:`FaultProxy` forwards
every request to moto and, by rules the test sets, answers some itself or rewrites
moto's answer:

- :meth:`FaultProxy.throttle`: a seeded fraction of calls answered ``400
  ThrottlingException`` (``Throttling`` / ``RequestLimitExceeded`` for the query APIs)
  without reaching moto;
- :meth:`FaultProxy.throttle_first`: the next N calls of one operation throttled;
- :meth:`FaultProxy.refuse_first`: the next N calls of one operation answered with an
  error of the test's choosing (as AWS refuses calls naming a role IAM has not
  propagated yet);
- :meth:`FaultProxy.worker_capacity`: RunTask for workers starts at most N worker tasks
  in all; every further one is a ``RESOURCE:FARGATE`` failure in the answer;
- :meth:`FaultProxy.stop_role`: DescribeTasks reports every task of a role (container
  ``dask-scheduler`` / ``dask-worker``) STOPPED with a stop code, stopped reason and
  container reason, as Fargate does when an image cannot be pulled.

It counts requests per operation (throttled ones included), so a benchmark can report
AWS calls per worker. Point flowrig at it with ``AWS_ENDPOINT_URL`` (:meth:`endpoint`).
"""

from __future__ import annotations

import http.client
import json
import random
import threading
import time
import urllib.parse
from collections import Counter
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable, Iterator

import pytest

_EC2_VERSION = "2016-11-15"
_HOP_HEADERS = {"connection", "keep-alive", "transfer-encoding", "content-length", "host"}


@dataclass
class StopRule:
    role_container: str
    stop_code: str
    stopped_reason: str
    container_reason: str
    #: Called once per task, in the proxy's thread, before its stop is first reported.
    before: Callable[[str], None] | None = None


class FaultProxy:
    """A threaded proxy to ``upstream`` on 127.0.0.1 with seeded fault rules.

    Parameters
    ----------
    upstream
        ``http://host:port`` of the moto server.
    seed
        Seed of the random choices (which calls are throttled).
    """

    def __init__(self, upstream: str, seed: int = 0) -> None:
        self.upstream = urllib.parse.urlsplit(upstream)
        self.random = random.Random(seed)
        self.lock = threading.Lock()
        self.calls: Counter[str] = Counter()
        self.throttled: Counter[str] = Counter()
        self._throttle: tuple[float, set[str] | None] = (0.0, None)
        self._first: Counter[str] = Counter()
        self._refusals: dict[str, list[Any]] = {}
        self._capacity: int | None = None
        self._capacity_reason = ("RESOURCE:FARGATE", "Capacity is unavailable at this time. Please try again later.")
        self._stops: list[StopRule] = []
        #: Task ARN -> container name of every task moto started through the proxy.
        self.roles: dict[str, str] = {}
        #: Task ARN -> when its stop was first reported (``time.monotonic()``).
        self.stopped_at: dict[str, float] = {}
        #: ``clientToken`` of each RunTask request (throttled ones included), in order.
        self.client_tokens: list[str] = []
        self.worker_tasks_started = 0
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                proxy._handle(self)

            do_GET = do_POST  # noqa: N815

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    # --- life -----------------------------------------------------------------------
    def start(self) -> "FaultProxy":
        self._thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    @property
    def endpoint(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}"

    # --- rules ----------------------------------------------------------------------
    def throttle(self, fraction: float, operations: set[str] | None = None) -> None:
        """Answer ``fraction`` of the calls (of ``operations``, default: all) as throttled."""
        self._throttle = (fraction, operations)

    def throttle_first(self, operation: str, calls: int) -> None:
        """Answer the next ``calls`` calls of ``operation`` as throttled, whatever the fraction."""
        self._first[operation] = calls

    def refuse_first(self, operation: str, calls: int, code: str, message: str) -> None:
        """Answer the next ``calls`` calls of ``operation`` with error ``code`` and ``message``."""
        self._refusals[operation] = [calls, code, message]

    def worker_capacity(self, tasks: int, reason: str = "RESOURCE:FARGATE",
                        detail: str = "Capacity is unavailable at this time. Please try again later.") -> None:
        """Let at most ``tasks`` worker tasks start in all; RunTask reports the rest as failures."""
        self._capacity = tasks
        self._capacity_reason = (reason, detail)

    def stop_role(self, role_container: str, *, stop_code: str, stopped_reason: str, container_reason: str,
                  before: Callable[[str], None] | None = None) -> None:
        """Report every task of ``role_container`` STOPPED in DescribeTasks from now on."""
        self._stops.append(StopRule(role_container, stop_code, stopped_reason, container_reason, before))

    # --- handling ---------------------------------------------------------------------
    @staticmethod
    def _operation(headers: Any, body: bytes) -> tuple[str, str]:
        """``(operation, protocol)``: ``json`` (X-Amz-Target), ``ec2`` or ``query``."""
        target = headers.get("X-Amz-Target")
        if target:
            return target.rsplit(".", 1)[-1], "json"
        form = urllib.parse.parse_qs(body.decode(errors="replace"))
        action = (form.get("Action") or ["?"])[0]
        return action, "ec2" if (form.get("Version") or [""])[0] == _EC2_VERSION else "query"

    def _handle(self, request: BaseHTTPRequestHandler) -> None:
        length = int(request.headers.get("Content-Length") or 0)
        body = request.rfile.read(length) if length else b""
        operation, protocol = self._operation(request.headers, body)
        with self.lock:
            self.calls[operation] += 1
            if operation == "RunTask":
                self.client_tokens.append(json.loads(body or b"{}").get("clientToken", ""))
            fraction, only = self._throttle
            throttled = fraction > 0 and (only is None or operation in only) and self.random.random() < fraction
            if self._first[operation] > 0:
                self._first[operation] -= 1
                throttled = True
            if throttled:
                self.throttled[operation] += 1
            refusal = self._refusals.get(operation)
            refused = bool(refusal and refusal[0] > 0)
            if refused:
                refusal[0] -= 1
        if throttled:
            return self._answer(request, *self._throttling(protocol))
        if refused:
            return self._answer(request, *self._error(protocol, refusal[1], refusal[2]))
        if operation == "RunTask":
            return self._run_task(request, body)
        status, headers, payload = self._forward(request, body)
        if operation == "DescribeTasks" and status == 200 and self._stops:
            payload = self._rewrite_described(payload)
        self._answer(request, status, headers, payload)

    def _forward(self, request: BaseHTTPRequestHandler, body: bytes) -> tuple[int, dict[str, str], bytes]:
        connection = http.client.HTTPConnection(self.upstream.hostname, self.upstream.port, timeout=60)
        try:
            headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP_HEADERS}
            headers["Host"] = request.headers.get("Host", "")
            connection.request(request.command, request.path, body=body, headers=headers)
            response = connection.getresponse()
            payload = response.read()
            kept = {k: v for k, v in response.getheaders() if k.lower() not in _HOP_HEADERS}
            return response.status, kept, payload
        finally:
            connection.close()

    @staticmethod
    def _answer(request: BaseHTTPRequestHandler, status: int, headers: dict[str, str], payload: bytes) -> None:
        request.send_response(status)
        for key, value in headers.items():
            request.send_header(key, value)
        request.send_header("Content-Length", str(len(payload)))
        request.end_headers()
        request.wfile.write(payload)

    @staticmethod
    def _error(protocol: str, code: str, message: str) -> tuple[int, dict[str, str], bytes]:
        if protocol == "json":
            body = json.dumps({"__type": code, "message": message}).encode()
            return 400, {"Content-Type": "application/x-amz-json-1.1"}, body
        escaped = message.replace("&", "&amp;").replace("<", "&lt;")
        if protocol == "ec2":
            return 400, {"Content-Type": "text/xml"}, (
                f"<Response><Errors><Error><Code>{code}</Code><Message>{escaped}</Message></Error></Errors>"
                "<RequestID>fault-proxy</RequestID></Response>").encode()
        return 403, {"Content-Type": "text/xml"}, (
            f"<ErrorResponse><Error><Type>Sender</Type><Code>{code}</Code><Message>{escaped}</Message></Error>"
            "<RequestId>fault-proxy</RequestId></ErrorResponse>").encode()

    @staticmethod
    def _throttling(protocol: str) -> tuple[int, dict[str, str], bytes]:
        if protocol == "json":
            body = json.dumps({"__type": "ThrottlingException", "message": "Rate exceeded"}).encode()
            return 400, {"Content-Type": "application/x-amz-json-1.1"}, body
        if protocol == "ec2":
            body = (b"<Response><Errors><Error><Code>RequestLimitExceeded</Code><Message>Request limit exceeded."
                    b"</Message></Error></Errors><RequestID>fault-proxy</RequestID></Response>")
            return 503, {"Content-Type": "text/xml"}, body
        body = (b"<ErrorResponse><Error><Type>Sender</Type><Code>Throttling</Code><Message>Rate exceeded"
                b"</Message></Error><RequestId>fault-proxy</RequestId></ErrorResponse>")
        return 400, {"Content-Type": "text/xml"}, body

    def _run_task(self, request: BaseHTTPRequestHandler, body: bytes) -> None:
        params = json.loads(body or b"{}")
        overrides = params.get("overrides", {}).get("containerOverrides") or [{}]
        container = overrides[0].get("name", "")
        count = int(params.get("count", 1))
        allowed = count
        with self.lock:
            if container == "dask-worker" and self._capacity is not None:
                allowed = max(min(count, self._capacity - self.worker_tasks_started), 0)
                self.worker_tasks_started += allowed
        failures = [
            {"arn": f"arn:aws:ecs:us-east-1:123456789012:capacity/{i}", "reason": self._capacity_reason[0],
             "detail": self._capacity_reason[1]}
            for i in range(count - allowed)
        ]
        if allowed == 0:
            payload = json.dumps({"tasks": [], "failures": failures}).encode()
            return self._answer(request, 200, {"Content-Type": "application/x-amz-json-1.1"}, payload)
        if allowed != count:
            params["count"] = allowed
            body = json.dumps(params).encode()
        status, headers, payload = self._forward(request, body)
        if status == 200:
            answer = json.loads(payload)
            with self.lock:
                for task in answer.get("tasks", ()):
                    self.roles[task["taskArn"]] = container
            answer["failures"] = list(answer.get("failures") or []) + failures
            payload = json.dumps(answer).encode()
        self._answer(request, status, headers, payload)

    def _rewrite_described(self, payload: bytes) -> bytes:
        answer = json.loads(payload)
        for task in answer.get("tasks", ()):
            arn = task["taskArn"]
            role = self.roles.get(arn)
            rule = next((r for r in self._stops if r.role_container == role), None)
            if rule is None:
                continue
            with self.lock:
                first = arn not in self.stopped_at
                if first:
                    self.stopped_at[arn] = 0.0
            if first:
                if rule.before is not None:
                    rule.before(arn)
                self.stopped_at[arn] = time.monotonic()  # reported from this answer on
            task.update(lastStatus="STOPPED", desiredStatus="STOPPED", stopCode=rule.stop_code,
                        stoppedReason=rule.stopped_reason)
            for container in task.get("containers", ()):
                container.update(lastStatus="STOPPED", reason=rule.container_reason)
                container.pop("exitCode", None)
        return json.dumps(answer).encode()


@pytest.fixture
def fault_proxy(aws: Any, monkeypatch: pytest.MonkeyPatch) -> Iterator[FaultProxy]:
    """A :class:`FaultProxy` in front of the test's fresh moto account; flowrig (and
    boto3 in the test) talk to AWS through it."""
    proxy = FaultProxy(aws.endpoint, seed=12).start()
    monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.endpoint)
    try:
        yield proxy
    finally:
        proxy.stop()
