"""A worker's drain, end to end on loopback: a real mutual-TLS scheduler (the image's
scheduler command, with flowrig's lifetime preload), a worker that stays, and a worker
run as the entry point runs it, ``python -m flowrig.roles.drain -- python -m
distributed.cli.dask_worker ...``, in a process group of its own (as the image's init
signals it).

- SIGTERM to the whole group, and each cloud's notice read from a metadata stand-in
  (ECS, EC2 IMDSv2, GCP, Azure): the worker retires before its deadline, the task it
  was executing completes once, the task waiting in its queue runs once elsewhere,
  and the data only it held survives on the other worker;
- no runner client connected, or a cluster being torn down: no drain, the worker stops
  at once.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from flowrig import roles
from tests.metadata_support import TOKEN, MetadataStandIn

REPO = Path(__file__).resolve().parents[3]
#: Seconds from SIGTERM to the kill, for the workers drained by signal.
BUDGET = 20
#: Seconds the task the worker executes when the notice comes takes.
LONG_TASK = 2.0


def mark_and_sleep(marks: str, name: str, seconds: float) -> str:
    with open(os.path.join(marks, name), "a") as f:
        f.write("started\n")
    time.sleep(seconds)
    return name


def starts(marks: Path, name: str) -> int:
    path = marks / name
    return len(path.read_text().splitlines()) if path.exists() else 0


class Cluster:
    """A scheduler process, a runner client, and a worker that stays."""

    def __init__(self, root: Path, tls) -> None:
        self.root = root
        self.tls = tls
        self.tls_dir = root / "tls"
        tls.write_to_dir(self.tls_dir)
        self.marks = root / "marks"
        self.marks.mkdir()
        scheduler_file = root / "scheduler.json"
        command = roles.command_for("scheduler", ["--host", "127.0.0.1", "--port", "0", "--no-dashboard",
                                                  "--scheduler-file", str(scheduler_file)], self.tls_dir)
        self.processes: list[subprocess.Popen] = []
        self._start(command)
        deadline = time.monotonic() + 60
        while not scheduler_file.exists():
            assert time.monotonic() < deadline, "the scheduler did not start"
            time.sleep(0.1)
        time.sleep(0.2)
        self.address = json.loads(scheduler_file.read_text())["address"]
        from distributed import Client

        self.client = Client(self.address, security=tls.to_security(), timeout=30)
        self.keeper = self.worker("keeper")

    def _start(self, command: list[str], env: dict[str, str] | None = None, **kwargs) -> subprocess.Popen:
        process = subprocess.Popen(command, env=roles.secure_environment({**os.environ, **(env or {})}), cwd=REPO,
                                   **kwargs)
        self.processes.append(process)
        return process

    def worker_command(self, name: str) -> list[str]:
        return roles.command_for("worker", [self.address, "--name", name, "--nthreads", "1", "--no-dashboard"],
                                 self.tls_dir)

    def worker(self, name: str) -> str:
        """Start a plain worker; its address once it joined."""
        self._start(self.worker_command(name))
        return self.address_of(name)

    def drained_worker(self, name: str, env: dict[str, str]) -> tuple[subprocess.Popen, str]:
        """Start a worker under the drain supervisor, as the entry point does, in a
        process group of its own; the supervisor's process and the worker's address."""
        command = roles.drained(self.worker_command(name), env)
        assert command[:4] == [sys.executable, "-m", roles.DRAIN_MODULE, "--"]
        # A file, not a pipe: the worker's own log lines go there too, unread until the end.
        log = open(self.root / f"{name}.log", "w+")
        process = self._start(command, env, start_new_session=True, stderr=log)
        process.log = log  # type: ignore[attr-defined]
        return process, self.address_of(name)

    def address_of(self, name: str, timeout: float = 60) -> str:
        deadline = time.monotonic() + timeout
        while True:
            found = {w["name"]: a for a, w in self.client.scheduler_info()["workers"].items()}
            if name in found:
                return found[name]
            assert time.monotonic() < deadline, f"worker {name} did not join"
            time.sleep(0.1)

    def names(self) -> set[str]:
        return {w["name"] for w in self.client.scheduler_info()["workers"].values()}

    def close(self) -> None:
        self.client.close()
        for process in self.processes:
            if process.poll() is None:
                process.kill()
            process.wait()
            log = getattr(process, "log", None)
            if log is not None:
                log.close()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory, tls):
    cluster = Cluster(tmp_path_factory.mktemp("drain"), tls)
    yield cluster
    cluster.close()


@pytest.fixture
def own_cluster(tmp_path, tls):
    cluster = Cluster(tmp_path, tls)
    yield cluster
    cluster.close()


class Work:
    """What a worker holds when its notice comes: a result only it has, a task it is
    executing, and a task waiting in its queue."""

    def __init__(self, cluster: Cluster, address: str) -> None:
        self.cluster = cluster
        tag = uuid.uuid4().hex[:6]
        self.names = {kind: f"{kind}-{tag}" for kind in ("unique", "long", "queued")}
        client, marks = cluster.client, str(cluster.marks)
        where = {"workers": [address], "allow_other_workers": True, "pure": False}
        self.unique = client.submit(mark_and_sleep, marks, self.names["unique"], 0.0, workers=[address], pure=False)
        self.unique.result(timeout=30)
        self.long = client.submit(mark_and_sleep, marks, self.names["long"], LONG_TASK, **where)
        self.queued = client.submit(mark_and_sleep, marks, self.names["queued"], 0.1, **where)
        deadline = time.monotonic() + 30
        while not starts(cluster.marks, self.names["long"]):
            assert time.monotonic() < deadline, "the long task did not start"
            time.sleep(0.05)

    def check_handed_over(self) -> None:
        """Every task ran exactly once, and the unique result lives on the keeper."""
        assert self.long.result(timeout=30) == self.names["long"]
        assert self.queued.result(timeout=30) == self.names["queued"]
        assert self.unique.result(timeout=30) == self.names["unique"]
        for name in self.names.values():
            assert starts(self.cluster.marks, name) == 1, name
        assert set(self.cluster.client.who_has(self.unique)[self.unique.key]) == {self.cluster.keeper}


def _finish(process: subprocess.Popen, timeout: float) -> tuple[int, str, float]:
    started = time.monotonic()
    try:
        code = process.wait(timeout=timeout)
    finally:
        if process.poll() is None:
            process.kill()
    log = process.log  # type: ignore[attr-defined]
    log.seek(0)
    return code, log.read(), time.monotonic() - started


def test_sigterm_to_the_group_drains_the_worker(cluster):
    process, address = cluster.drained_worker("by-signal", {roles.DRAIN_ENV: str(BUDGET)})
    work = Work(cluster, address)
    os.killpg(process.pid, signal.SIGTERM)  # what dumb-init does in a container
    code, err, took = _finish(process, BUDGET + 5)
    assert "flowrig-drain: drained after SIGTERM" in err, err[-3000:]
    assert code == 0, err[-3000:]
    assert took < BUDGET, err[-3000:]
    assert "by-signal" not in cluster.names()
    work.check_handed_over()


@pytest.mark.parametrize("kind", ["ecs", "ec2", "gcp", "azure"])
def test_a_notice_from_the_metadata_service_drains_the_worker(cluster, kind):
    metadata, proxy = MetadataStandIn(), MetadataStandIn()
    try:
        # A proxy of the environment must never see a metadata request (or a token).
        env = {**metadata.environment(kind), "HTTP_PROXY": proxy.url, "http_proxy": proxy.url}
        process, address = cluster.drained_worker(f"by-{kind}", env)
        work = Work(cluster, address)
        metadata.notice(kind, in_seconds=60)
        noticed = time.monotonic()
        code, err, took = _finish(process, 60)
        assert "flowrig-drain: drained after" in err, err[-3000:]
        assert code == 0, err[-3000:]
        # Before the deadline: 60 s less the margin (GCP's notice is 30 s in any case).
        assert time.monotonic() - noticed < 25, err[-3000:]
        work.check_handed_over()
        assert proxy.requests == []
        if kind == "ec2":
            assert metadata.paths("PUT") == ["/latest/api/token"]
            asked = [{k.lower(): v for k, v in h.items()} for m, p, h in metadata.requests
                     if p.endswith("/spot/instance-action")]
            assert asked and all(h.get("x-aws-ec2-metadata-token") == TOKEN for h in asked)
    finally:
        metadata.close()
        proxy.close()


def test_no_drain_without_a_runner_client(own_cluster):
    process, address = own_cluster.drained_worker("lonely", {roles.DRAIN_ENV: str(BUDGET)})
    Work(own_cluster, address)
    own_cluster.client.close()  # the run is over: its runner went
    os.killpg(process.pid, signal.SIGTERM)
    code, err, took = _finish(process, 15)
    assert "stopping without a drain: the run is ending (no runner connected)" in err, err[-3000:]
    assert took < 5, err[-3000:]
    # Stopped in the middle of its task: it never finished there.
    assert "drained after" not in err


def test_no_drain_once_the_cluster_is_being_torn_down(own_cluster):
    process, address = own_cluster.drained_worker("torn-down", {roles.DRAIN_ENV: str(BUDGET)})
    Work(own_cluster, address)
    client = own_cluster.client
    client.sync(lambda: client.scheduler.flowrig_closing())  # what a cluster's close does first
    os.killpg(process.pid, signal.SIGTERM)
    code, err, took = _finish(process, 15)
    assert "stopping without a drain: the run is ending (no runner connected)" in err, err[-3000:]
    assert took < 5, err[-3000:]


def test_sigint_stops_the_worker_at_once_while_its_run_goes_on(cluster):
    """What the docker backend's own teardown and scale-down send first."""
    process, address = cluster.drained_worker("interrupted", {roles.DRAIN_ENV: str(BUDGET)})
    Work(cluster, address)
    os.killpg(process.pid, signal.SIGINT)
    code, err, took = _finish(process, 15)
    assert "flowrig-drain" not in err, err[-3000:]
    assert took < 5, err[-3000:]


def test_the_worker_stops_with_a_supervisor_killed_outright(own_cluster):
    process, _ = own_cluster.drained_worker("orphan", {roles.DRAIN_ENV: str(BUDGET)})
    process.kill()  # SIGKILL: no drain, and the worker must not be left behind
    process.wait()
    deadline = time.monotonic() + 20
    while "orphan" in own_cluster.names():
        assert time.monotonic() < deadline, "the worker outlived its supervisor"
        time.sleep(0.2)


def test_a_redirecting_metadata_endpoint_is_not_followed():
    """A metadata service never redirects: following one would send the IMDS token
    (and the worker's questions) to wherever it points."""
    from flowrig.roles import metadata as notices

    hostile, elsewhere = MetadataStandIn(), MetadataStandIn()
    try:
        elsewhere.notice("ec2")
        hostile.redirect = elsewhere.url
        env = hostile.environment("ec2")
        assert notices.check_ec2(env, {}) is None
        assert hostile.paths("PUT") == ["/latest/api/token"]
        assert hostile.paths() == ["/latest/meta-data/spot/instance-action"]
        assert elsewhere.requests == []
        # The same endpoint without the redirect gives the notice: the check can succeed.
        hostile.redirect = None
        hostile.notice("ec2", in_seconds=100)
        source, deadline = notices.check_ec2(env, {})
        assert source == "an EC2 Spot interruption (terminate)"
        assert 80 < deadline - time.monotonic() <= 90
    finally:
        hostile.close()
        elsewhere.close()
