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
- :meth:`FaultProxy.spot_capacity`: Spot has room for at most N workers in all: RunTask
  on ``FARGATE_SPOT`` answers the rest as failures, as Fargate words a Spot shortage, and
  RunInstances of a further Spot instance is refused ``InsufficientInstanceCapacity``;
- :meth:`FaultProxy.stop_role`: DescribeTasks reports every task of a role (container
  ``dask-scheduler`` / ``dask-worker``) STOPPED with a stop code, stopped reason and
  container reason, as Fargate does when an image cannot be pulled;
- :meth:`FaultProxy.rate_limit` and :meth:`FaultProxy.aws_limits`: token buckets, as AWS
  throttles an account per Region (:data:`AWS_LIMITS`); a call that finds a bucket short
  is answered ``ThrottlingException`` without reaching moto, and RunTask takes one token
  per task from a launch bucket;
- :meth:`FaultProxy.latency`: every answer delayed, as a Region's endpoint is far away;
- :meth:`FaultProxy.on_run_task` and :meth:`FaultProxy.on_stop_task`: the harness is told
  of each task moto started or stopped, so that stand-ins can play its container;
- :meth:`FaultProxy.answer`: every call of one operation answered by the test's function
  without reaching moto (an API moto lacks, e.g. ``iam:SimulatePrincipalPolicy``, or a
  Service Quotas value it does not hold).

It counts requests per operation (throttled ones included) and logs when each came
(:attr:`FaultProxy.log`), so a benchmark can report AWS calls per worker and over time.
Point flowrig at it with ``AWS_ENDPOINT_URL`` (:meth:`endpoint`).
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

from tests.aws_limits import AWS_LIMITS, AwsLimit
from tests.token_bucket import TokenBucket

__all__ = ["AWS_LIMITS", "AwsLimit", "FaultProxy", "fault_proxy"]

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
        self._answers: dict[str, Callable[[bytes], tuple[int, dict[str, str], bytes]]] = {}
        #: Task ARN -> container name of every task moto started through the proxy.
        self.roles: dict[str, str] = {}
        #: Task ARN -> when its stop was first reported (``time.monotonic()``).
        self.stopped_at: dict[str, float] = {}
        #: ``clientToken`` of each RunTask request (throttled ones included), in order.
        self.client_tokens: list[str] = []
        self.worker_tasks_started = 0
        #: Spot workers (tasks or instances) let through, and at most how many (``None``: any).
        self.spot_started = 0
        self._spot_capacity: int | None = None
        #: The parameters of each RunTask request that reached the rules, in order.
        self.run_task_requests: list[dict[str, Any]] = []
        #: ``(market, instance type)`` of each RunInstances request that reached the rules, in order.
        self.run_instances_requests: list[tuple[str, str]] = []
        #: ``(name, operations, per, bucket)`` of each rate limit.
        self._buckets: list[tuple[str, tuple[str, ...], str, TokenBucket]] = []
        #: Calls answered throttled by each rate limit, by its name.
        self.rate_throttled: Counter[str] = Counter()
        #: ``(time.monotonic(), operation, throttled)`` of every call, in order of arrival.
        self.log: list[tuple[float, str, bool]] = []
        self._latency = 0.0
        self._run_task_callbacks: list[Callable[[str, str], None]] = []
        self._stop_task_callbacks: list[Callable[[str], None]] = []
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

    def spot_capacity(self, workers: int) -> None:
        """Let at most ``workers`` Spot workers start in all (Fargate Spot tasks, Spot instances)."""
        self._spot_capacity = workers

    def _spot_refusal(self, body: bytes) -> tuple[int, dict[str, str], bytes] | None:
        """RunInstances of a Spot instance beyond :meth:`spot_capacity`: EC2's refusal, else ``None``."""
        form = urllib.parse.parse_qs(body.decode(errors="replace"))
        market = (form.get("InstanceMarketOptions.MarketType") or ["on-demand"])[0]
        with self.lock:
            self.run_instances_requests.append((market, (form.get("InstanceType") or [""])[0]))
            if market != "spot" or self._spot_capacity is None:
                return None
            if self.spot_started < self._spot_capacity:
                self.spot_started += 1
                return None
        return self._error("ec2", "InsufficientInstanceCapacity",
                           "There is no Spot capacity available that matches your request.")

    def stop_role(self, role_container: str, *, stop_code: str, stopped_reason: str, container_reason: str,
                  before: Callable[[str], None] | None = None) -> None:
        """Report every task of ``role_container`` STOPPED in DescribeTasks from now on."""
        self._stops.append(StopRule(role_container, stop_code, stopped_reason, container_reason, before))

    def rate_limit(self, name: str, operations: tuple[str, ...] | set[str], burst: float, refill: float,
                   per: str = "call", clock: Callable[[], float] = time.monotonic) -> TokenBucket:
        """Throttle ``operations`` by a token bucket: a call takes one token (``per="call"``)
        or one per task it asks for (``per="task"``, RunTask's ``count``). A call takes from
        every bucket of its operation at once or, when one is short, from none and is
        answered throttled."""
        if per not in ("call", "task"):
            raise ValueError(f"per must be 'call' or 'task', not {per!r}")
        bucket = TokenBucket(burst, refill, clock)
        self._buckets.append((name, tuple(operations), per, bucket))
        return bucket

    def aws_limits(self, scale: float = 1.0, only: set[str] | None = None) -> None:
        """Throttle as AWS does (:data:`AWS_LIMITS`, ``only`` those named), every burst
        and refill times ``scale`` (a short test shrinks them)."""
        for limit in AWS_LIMITS:
            if only is None or limit.name in only:
                self.rate_limit(limit.name, limit.operations, limit.burst * scale, limit.refill * scale, limit.per)

    def latency(self, seconds: float) -> None:
        """Delay every answer by ``seconds`` (throttled ones too), as a Region's endpoint does."""
        self._latency = max(float(seconds), 0.0)

    def on_run_task(self, callback: Callable[[str, str], None]) -> None:
        """Call ``callback(task_arn, container)`` for each task moto started (in the proxy's thread)."""
        self._run_task_callbacks.append(callback)

    def on_stop_task(self, callback: Callable[[str], None]) -> None:
        """Call ``callback(task_arn)`` after each StopTask moto answered (in the proxy's thread)."""
        self._stop_task_callbacks.append(callback)

    def _rate_limited(self, operation: str, body: bytes) -> str | None:
        """The name of the first rate limit a call finds short, after taking its tokens
        from every bucket when none is (under the lock)."""
        wanted = [(name, per, bucket) for name, ops, per, bucket in self._buckets if operation in ops]
        if not wanted:
            return None
        count = 1
        if any(per == "task" for _, per, _ in wanted):
            try:
                count = int(json.loads(body or b"{}").get("count", 1))
            except (ValueError, AttributeError):
                count = 1
        needs = [(name, bucket, 1 if per == "call" else count) for name, per, bucket in wanted]
        for name, bucket, tokens in needs:
            if bucket.level() < tokens:
                return name
        for _, bucket, tokens in needs:
            bucket.take(tokens)
        return None

    def answer(self, operation: str, fn: Callable[[bytes], tuple[int, dict[str, str], bytes]]) -> None:
        """Answer every call of ``operation`` with ``fn(request body) -> (status, headers,
        payload)``, in the proxy's thread, instead of moto."""
        self._answers[operation] = fn

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
            refusal = self._refusals.get(operation)
            refused = bool(refusal and refusal[0] > 0)
            if refused:
                refusal[0] -= 1
            if not throttled and not refused:
                limit = self._rate_limited(operation, body)
                if limit is not None:
                    self.rate_throttled[limit] += 1
                    throttled = True
            if throttled:
                self.throttled[operation] += 1
            self.log.append((time.monotonic(), operation, throttled))
        if self._latency:
            time.sleep(self._latency)
        if throttled:
            return self._answer(request, *self._throttling(protocol))
        if refused:
            return self._answer(request, *self._error(protocol, refusal[1], refusal[2]))
        answer = self._answers.get(operation)
        if answer is not None:
            return self._answer(request, *answer(body))
        if operation == "RunTask":
            return self._run_task(request, body)
        if operation == "RunInstances":
            refusal = self._spot_refusal(body)
            if refusal is not None:
                return self._answer(request, *refusal)
        status, headers, payload = self._forward(request, body)
        if operation == "DescribeTasks" and status == 200 and self._stops:
            payload = self._rewrite_described(payload)
        self._answer(request, status, headers, payload)
        if operation == "StopTask" and status == 200:
            arn = json.loads(payload).get("task", {}).get("taskArn", "")
            for callback in self._stop_task_callbacks:
                callback(arn)

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
        spot = any(p.get("capacityProvider") == "FARGATE_SPOT" for p in params.get("capacityProviderStrategy") or ())
        reason = self._capacity_reason
        with self.lock:
            self.run_task_requests.append(dict(params))
            if spot and self._spot_capacity is not None:
                allowed = max(min(count, self._spot_capacity - self.spot_started), 0)
                self.spot_started += allowed
                reason = ("Capacity is unavailable at this time. Please try again later or in a different "
                          "availability zone", "")
            if container == "dask-worker" and self._capacity is not None:
                allowed = max(min(allowed, self._capacity - self.worker_tasks_started), 0)
                self.worker_tasks_started += allowed
        failures = [
            {"arn": f"arn:aws:ecs:us-east-1:123456789012:capacity/{i}", "reason": reason[0],
             **({"detail": reason[1]} if reason[1] else {})}
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
        if status == 200:
            for task in answer.get("tasks", ()):
                for callback in self._run_task_callbacks:
                    callback(task["taskArn"], container)

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
