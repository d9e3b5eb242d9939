"""The fault proxy's rate limits: token buckets that refill at their rate, and a call
that finds a bucket short answered throttled without reaching the server behind.

The server behind is a counting HTTP server in this process (a stand-in for moto), so
what reached it is known exactly.
"""

from __future__ import annotations

import http.client
import json
import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Iterator

import pytest

from tests.aws_faults import AWS_LIMITS, FaultProxy
from tests.token_bucket import TokenBucket

ECS = "AmazonEC2ContainerServiceV20141113"


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_bucket_starts_full_and_refills_at_its_rate_up_to_its_size():
    clock = Clock()
    bucket = TokenBucket(burst=5, refill=2, clock=clock)
    assert [bucket.take(1) for _ in range(6)] == [True] * 5 + [False]
    clock.now += 0.4  # 0.8 of a token
    assert not bucket.take(1)
    clock.now += 0.1
    assert bucket.take(1)
    assert not bucket.take(1)
    clock.now += 100
    assert bucket.level() == 5  # never more than its size
    assert not bucket.take(6)  # all or nothing
    assert bucket.level() == 5


@pytest.fixture
def upstream() -> Iterator[tuple[str, Counter]]:
    """A server that counts requests by ``X-Amz-Target`` operation and answers ``{}``."""
    seen: Counter[str] = Counter()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:  # noqa: N802 - http.server's name
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            seen[self.headers.get("X-Amz-Target", "").rsplit(".", 1)[-1]] += 1
            body = b'{"tasks": [], "failures": []}'
            self.send_response(200)
            self.send_header("Content-Type", "application/x-amz-json-1.1")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    host, port = server.server_address[:2]
    try:
        yield f"http://{host}:{port}", seen
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def proxy(upstream) -> Iterator[FaultProxy]:
    proxy = FaultProxy(upstream[0]).start()
    try:
        yield proxy
    finally:
        proxy.stop()


def call(proxy: FaultProxy, operation: str, **params: Any) -> tuple[int, dict]:
    host, port = proxy.server.server_address[:2]
    connection = http.client.HTTPConnection(host, port, timeout=10)
    try:
        connection.request("POST", "/", body=json.dumps(params), headers={
            "X-Amz-Target": f"{ECS}.{operation}", "Content-Type": "application/x-amz-json-1.1"})
        response = connection.getresponse()
        return response.status, json.loads(response.read() or b"{}")
    finally:
        connection.close()


def test_a_throttled_call_never_reaches_the_server_behind(proxy, upstream):
    _, seen = upstream
    proxy.rate_limit("stops", ("StopTask",), burst=2, refill=0.001)
    answers = [call(proxy, "StopTask", task="t") for _ in range(3)]
    assert [status for status, _ in answers] == [200, 200, 400]
    assert answers[2][1]["__type"] == "ThrottlingException"
    assert seen["StopTask"] == 2
    assert proxy.calls["StopTask"] == 3 and proxy.throttled["StopTask"] == 1
    assert proxy.rate_throttled == Counter({"stops": 1})
    # Other operations draw from no bucket.
    assert [call(proxy, "DescribeTasks")[0] for _ in range(5)] == [200] * 5
    assert [(op, throttled) for _, op, throttled in proxy.log][-6:] == (
        [("StopTask", True)] + [("DescribeTasks", False)] * 5)


def test_run_task_takes_a_launch_token_per_task_from_every_bucket_or_from_none(proxy, upstream):
    _, seen = upstream
    launches = proxy.rate_limit("launches", ("RunTask",), burst=15, refill=0.001, per="task")
    calls = proxy.rate_limit("run-task-calls", ("RunTask",), burst=2, refill=0.001)
    assert call(proxy, "RunTask", count=10)[0] == 200
    assert call(proxy, "RunTask", count=10)[0] == 400  # 5 launches left: refused whole
    assert calls.level() == pytest.approx(1, abs=0.01)  # ...and took no call token
    assert call(proxy, "RunTask", count=5)[0] == 200
    assert call(proxy, "RunTask", count=0)[0] == 400  # no call token left
    assert seen["RunTask"] == 2
    assert launches.level() == pytest.approx(0, abs=0.01)
    assert proxy.rate_throttled == Counter({"launches": 1, "run-task-calls": 1})


def test_aws_limits_cite_their_source_and_scale(proxy):
    assert {limit.name for limit in AWS_LIMITS} >= {"fargate-launches", "run-task-calls", "task-reads",
                                                    "stop-task-calls"}
    for limit in AWS_LIMITS:
        assert limit.source.startswith("https://docs.aws.amazon.com/")
        # A figure that is not AWS's own says so.
        assert limit.name in ("fargate-launches", "run-task-calls") or "assumed" in limit.source
    proxy.aws_limits(scale=0.5, only={"fargate-launches"})
    [(name, operations, per, bucket)] = proxy._buckets
    assert (name, operations, per, bucket.burst, bucket.refill) == ("fargate-launches", ("RunTask",), "task", 50, 10)
