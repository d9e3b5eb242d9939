"""A worker named after its ECS task: the placeholder is replaced from a real HTTP
metadata endpoint on loopback, as ECS serves it inside a task."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from flowrig.errors import InfrastructureError
from flowrig.roles import task_name

ARN = "arn:aws:ecs:us-east-1:123456789012:task/flowrig-run1/0f1e2d3c4b5a69788796a5b4c3d2e1f0"


@pytest.fixture
def metadata():
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            body = json.dumps({"TaskARN": ARN, "Cluster": "flowrig-run1"}).encode() if self.path == "/v4/x/task" else b""
            self.send_response(200 if body else 404)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v4/x"
    server.shutdown()
    server.server_close()


def test_placeholder_becomes_the_task_id(metadata):
    args = ["tls://10.0.0.1:8786", "--name", task_name.FROM_ECS_TASK, "--nthreads", "2"]
    resolved = task_name.resolve(args, {task_name.METADATA_ENV: metadata})
    assert resolved == ["tls://10.0.0.1:8786", "--name", "0f1e2d3c4b5a69788796a5b4c3d2e1f0", "--nthreads", "2"]
    assert task_name.task_id(ARN) == resolved[2]


def test_args_without_the_placeholder_are_left_alone():
    assert task_name.resolve(["addr", "--name", "w1"], {}) == ["addr", "--name", "w1"]


def test_no_metadata_endpoint_is_one_line(metadata):
    with pytest.raises(InfrastructureError) as info:
        task_name.resolve(["--name", task_name.FROM_ECS_TASK], {})
    assert "ECS_CONTAINER_METADATA_URI_V4 is not set" in str(info.value)
    with pytest.raises(InfrastructureError) as info:
        task_name.resolve(["--name", task_name.FROM_ECS_TASK], {task_name.METADATA_ENV: metadata + "/nope"})
    assert "cannot read the worker's ECS task id" in str(info.value) and "\n" not in str(info.value)


def test_a_group_workers_name_is_its_group_then_its_task_id(metadata):
    """A worker group's ECS workers join as GROUP-TASKID: the launcher names them so too."""
    from flowrig.backends.aws.ecs.worker_kinds import WorkerKind

    kind = WorkerKind("def", group="gpu")
    args = ["tls://10.0.0.1:8786", "--name", kind.name_template, "--resources", "flowrig-group-gpu=1"]
    resolved = task_name.resolve(args, {task_name.METADATA_ENV: metadata})
    assert resolved[2] == "gpu-0f1e2d3c4b5a69788796a5b4c3d2e1f0" == kind.worker_name(ARN)
    assert resolved[3:] == ["--resources", "flowrig-group-gpu=1"]
