"""A local AWS for tests: one moto server per test session, listening on loopback.

Registered as a pytest plugin. The ``moto_server`` fixture starts the server once and
points boto3 and aiobotocore at it (``AWS_ENDPOINT_URL``, fake credentials,
``us-east-1``); ``aws`` gives each test a fresh state in which ECS tasks stay RUNNING
until stopped and task ARNs are long (needed for task tags). ``ecs_tasks_pending``
makes tasks stay PENDING instead, ``ec2_instances_pending`` instances pending. The server records every request, so tests can
check what was sent (``aws.requests("RunTask")``).

Moto hands out made-up private addresses (10.x) for tasks. Nothing here connects to
them, and tests must not either: they point clusters at a real scheduler on loopback
or keep tasks PENDING.
"""

from __future__ import annotations

import base64
import json
import os
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

REGION = "us-east-1"
#: A task stays in its state for this many describe calls (practically: until stopped).
_FOREVER = 10**9
#: Service prefix of ECS operations in the X-Amz-Target header.
_ECS_TARGET = "AmazonEC2ContainerServiceV20141113."


@dataclass
class MotoServer:
    """A running moto server and its control API (``/moto-api``)."""

    endpoint: str
    recording_path: Path
    _ecs: Any = None

    def ecs(self) -> Any:
        """An ECS client for the server (made once: clients are slow to create)."""
        if self._ecs is None:
            import boto3

            self._ecs = boto3.client("ecs", region_name=REGION, endpoint_url=self.endpoint)
        return self._ecs

    def _call(self, path: str, body: Any = None) -> bytes:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(
            f"{self.endpoint}/moto-api/{path}", data=data, method="POST" if data is not None else "GET"
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.read()

    def reset(self) -> None:
        """Forget every resource and request (a new, empty account)."""
        self._call("reset", {})
        self._call("recorder/reset-recording", {})

    def set_transition(self, model: str, transition: dict[str, Any]) -> None:
        """Configure how a model's status advances (moto's state manager)."""
        self._call("state-manager/set-transition", {"model_name": model, "transition": transition})

    def start_recording(self) -> None:
        self._call("recorder/start-recording", {})

    def reset_recording(self) -> None:
        """Forget the requests recorded so far (the resources stay), and record on."""
        self._call("recorder/reset-recording", {})
        self.start_recording()

    def requests(self, operation: str | None = None) -> list[dict[str, Any]]:
        """Recorded JSON requests to ECS, oldest first, optionally one operation only.

        Each item is ``{"operation": ..., "body": {...}}``.
        """
        found = []
        for line in self._call("recorder/download-recording").decode().splitlines():
            entry = json.loads(line)
            headers = {key.lower(): value for key, value in entry["headers"].items()}
            target = headers.get("x-amz-target", "")
            if not target.startswith(_ECS_TARGET):
                continue
            name = target[len(_ECS_TARGET) :]
            if operation and name != operation:
                continue
            raw = entry["body"] or ""
            text = base64.b64decode(raw).decode() if entry.get("body_encoded") else raw
            found.append({"operation": name, "body": json.loads(text or "{}")})
        return found

    def query_requests(self, action: str) -> list[dict[str, list[str]]]:
        """Recorded query-protocol requests (EC2, IAM, STS) of one ``Action``, oldest
        first, each as its parsed form (``name -> values``)."""
        from urllib.parse import parse_qs

        found = []
        for line in self._call("recorder/download-recording").decode().splitlines():
            entry = json.loads(line)
            raw = entry["body"] or ""
            text = base64.b64decode(raw).decode(errors="replace") if entry.get("body_encoded") else raw
            form = parse_qs(text)
            if form.get("Action") == [action]:
                found.append(form)
        return found

    def operations(self) -> list[str]:
        """Every recorded request's operation (``Action`` or X-Amz-Target), oldest first."""
        names = []
        for line in self._call("recorder/download-recording").decode().splitlines():
            entry = json.loads(line)
            headers = {key.lower(): value for key, value in entry["headers"].items()}
            target = headers.get("x-amz-target")
            if target:
                names.append(target.rsplit(".", 1)[-1])
                continue
            raw = entry["body"] or ""
            text = base64.b64decode(raw).decode(errors="replace") if entry.get("body_encoded") else raw
            for part in text.split("&"):
                if part.startswith("Action="):
                    names.append(part[len("Action=") :])
        return names


@pytest.fixture(scope="session")
def moto_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MotoServer]:
    """One moto server for the whole session, on 127.0.0.1 and a free port."""
    recording = tmp_path_factory.mktemp("moto") / "recording.jsonl"
    patch = pytest.MonkeyPatch()
    env = {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": REGION,
        "AWS_REGION": REGION,
        # Never ask the instance metadata service (a link-local address) for credentials.
        "AWS_EC2_METADATA_DISABLED": "true",
        # Roles get AWS managed policies attached; moto knows them only when told to.
        "MOTO_IAM_LOAD_MANAGED_POLICIES": "true",
        # RunInstances refuses an instance type that does not exist, as EC2 does.
        "MOTO_EC2_ENABLE_INSTANCE_TYPE_VALIDATION": "true",
        "MOTO_RECORDER_FILEPATH": str(recording),
    }
    for key, value in env.items():
        patch.setenv(key, value)
    for key in ("AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL"):
        patch.delenv(key, raising=False)

    import moto.moto_api
    from moto.server import ThreadedMotoServer

    # The recorder reads its path when moto is first imported; it may have been earlier.
    moto.moto_api.recorder._location = str(recording)
    # So do moto's settings (the server runs in this process).
    import moto.settings

    patch.setattr(moto.settings, "EC2_ENABLE_INSTANCE_TYPE_VALIDATION", True)
    recording.touch()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    patch.setenv("AWS_ENDPOINT_URL", f"http://{host}:{port}")
    try:
        yield MotoServer(endpoint=f"http://{host}:{port}", recording_path=recording)
    finally:
        server.stop()
        patch.undo()


@pytest.fixture
def aws(moto_server: MotoServer) -> MotoServer:
    """A fresh AWS account on the session's moto server, recording requests.

    ECS tasks stay RUNNING until stopped (moto's default would stop them at once), and
    long task ARNs are on, as dask-cloudprovider needs them to tag tasks.
    """
    moto_server.reset()
    moto_server.set_transition("ecs::task", {"progression": "manual", "times": _FOREVER})
    moto_server.ecs().put_account_setting(name="taskLongArnFormat", value="enabled")
    moto_server.start_recording()
    return moto_server


@pytest.fixture
def bootstrapped(aws: MotoServer) -> MotoServer:
    """The account after `flowrig ecs bootstrap`: the policy each run's execution role
    gets (reading its own run's secret) exists."""
    from typer.testing import CliRunner

    from flowrig.cli.ecs import app

    result = CliRunner().invoke(app, ["bootstrap"])
    assert result.exit_code == 0, result.output
    return aws


@pytest.fixture
def ecs_tasks_pending(aws: MotoServer, monkeypatch: pytest.MonkeyPatch) -> MotoServer:
    """ECS tasks stay PENDING until stopped, as on Fargate while it has no capacity.

    moto starts every task RUNNING and has no PENDING state; the server runs in this
    process, so its task model is made to report PENDING for tasks still meant to run.
    """
    from moto.ecs.models import Task

    def last_status(task: Any) -> str:
        return "PENDING" if task.desired_status == "RUNNING" else task.status

    def set_last_status(task: Any, value: str) -> None:
        task.status = value

    monkeypatch.setattr(Task, "last_status", property(last_status, set_last_status))
    return aws


@pytest.fixture
def ec2_instances_pending(aws: MotoServer, monkeypatch: pytest.MonkeyPatch) -> MotoServer:
    """EC2 instances stay ``pending`` until terminated, as while EC2 has no capacity.

    moto starts every instance ``running``; the server runs in this process, so its
    instance model is made to start ``pending`` (termination still ends it).
    """
    from moto.ec2.models.instances import Instance, InstanceState

    created = Instance.__init__

    def pending_init(instance: Any, *args: Any, **kwargs: Any) -> None:
        created(instance, *args, **kwargs)
        instance._state = InstanceState("pending", 0)

    monkeypatch.setattr(Instance, "__init__", pending_init)
    return aws


def aws_env_without_credentials(tmp_path: Path) -> dict[str, str]:
    """An environment in which boto3 finds no credentials (and asks no metadata service)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(
        AWS_SHARED_CREDENTIALS_FILE=str(tmp_path / "missing-credentials"),
        AWS_CONFIG_FILE=str(tmp_path / "missing-config"),
        AWS_EC2_METADATA_DISABLED="true",
        AWS_DEFAULT_REGION=REGION,
    )
    return env
