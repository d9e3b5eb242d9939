"""The drain's pure parts: what it reads from a worker's command line, when it declines
to drain, its budget, the deadlines of the clouds' notices, and the docker worker's plan
(drain budget in its environment, ``docker stop`` waiting that long and a grace more)."""

from __future__ import annotations

import sys
import time
from datetime import datetime, timedelta, timezone

import pytest

from flowrig import roles
from flowrig.backends.docker import plans
from flowrig.backends.docker.backend import DockerBackend
from flowrig.errors import BadInput
from flowrig.roles import drain, metadata


def test_worker_facts_come_from_the_dask_command_line():
    command = [
        sys.executable, "-m", "distributed.cli.dask_worker", "tls://flowrig-r1-scheduler:8786", "--name", "3",
        "--nthreads", "1", "--tls-ca-file", "/t/ca.crt", "--tls-cert=/t/tls.crt", "--tls-key", "/t/tls.key",
    ]
    facts = drain.worker_facts(command)
    assert facts.scheduler == "tls://flowrig-r1-scheduler:8786"
    assert facts.name == "3"
    assert facts.tls == {"tls_ca_file": "/t/ca.crt", "tls_client_cert": "/t/tls.crt", "tls_client_key": "/t/tls.key"}
    assert facts.drainable


def test_a_worker_without_name_or_address_is_not_drainable():
    assert not drain.worker_facts(["python", "-m", "distributed.cli.dask_worker", "tls://s:8786"]).drainable
    assert not drain.worker_facts(["python", "-m", "distributed.cli.dask_worker", "--name", "w"]).drainable
    # An option's value that looks like an address is not the scheduler's.
    facts = drain.worker_facts(["dask-worker", "--contact-address", "tls://me:1", "--name", "w"])
    assert facts.scheduler is None


@pytest.mark.parametrize(
    ("status", "reason"),
    [
        ({"known": False, "runner": True}, "the scheduler has retired it already"),
        ({"known": True, "runner": False, "status": "running"}, "the run is ending (no runner connected)"),
        ({"known": True, "runner": True, "status": "closing_gracefully"}, "it is closing_gracefully already"),
        ({"known": True, "runner": True, "status": "running"}, ""),
        ({"known": True, "runner": True, "status": "paused"}, ""),
    ],
)
def test_when_a_worker_drains(status, reason):
    assert drain._why_not(status) == reason


def test_the_budget_comes_from_the_environment(capsys):
    assert drain.budget_from({roles.DRAIN_ENV: "45"}) == 45
    assert drain.budget_from({}) == drain.DEFAULT_BUDGET
    assert drain.budget_from({roles.DRAIN_ENV: "-3"}) == drain.DEFAULT_BUDGET
    assert drain.budget_from({roles.DRAIN_ENV: "soon"}) == drain.DEFAULT_BUDGET
    assert "FLOWRIG_DRAIN_SECONDS='soon' is not a number of seconds" in capsys.readouterr().err


def test_a_worker_runs_under_the_supervisor_only_when_asked():
    command = ["python", "-m", roles.WORKER_MODULE, "tls://s:8786"]
    assert roles.drained(command, {}) == command
    assert roles.drained(command, {roles.DRAIN_ENV: "30"})[:4] == [sys.executable, "-m", "flowrig.roles.drain", "--"]
    assert roles.drained(command, {roles.NOTICE_ENV: "ec2"})[4:] == command


def test_a_notice_deadline_keeps_a_margin_and_stays_within_two_minutes():
    wall, now = 1_000_000.0, 50.0
    at = datetime.fromtimestamp(wall, timezone.utc)
    assert metadata.deadline_at(at + timedelta(seconds=120), now=now, wall=wall) == now + 110
    # In the past, or absurdly far: neither a negative budget nor a worker kept for hours.
    assert metadata.deadline_at(at - timedelta(seconds=30), now=now, wall=wall) == now
    assert metadata.deadline_at(at + timedelta(days=3), now=now, wall=wall) == now + metadata.LONGEST_NOTICE


def test_an_unknown_notice_kind_watches_nothing(capsys):
    assert metadata.watch("oracle", {}, lambda *a: None) is None
    assert "FLOWRIG_SPOT_NOTICE='oracle' is not one of ecs, ec2, gcp, azure" in capsys.readouterr().err


def test_nothing_answering_is_no_notice():
    # Port 9 on loopback: nothing listens; every check says "no notice", never raises.
    env = {"ECS_CONTAINER_METADATA_URI_V4": "http://127.0.0.1:9/v4", "AWS_EC2_METADATA_SERVICE_ENDPOINT":
           "http://127.0.0.1:9", "GCE_METADATA_HOST": "127.0.0.1:9", "FLOWRIG_AZURE_METADATA": "http://127.0.0.1:9"}
    started = time.monotonic()
    assert [check(env, {}) for check in metadata.CHECKS.values()] == [None] * 4
    assert time.monotonic() - started < 10


def test_the_docker_worker_plan_carries_its_drain_budget():
    worker = plans.render_worker("r2", "img", "net", 1, drain_timeout=40)
    assert worker.environment[roles.DRAIN_ENV] == "40"
    assert worker.stop_timeout == 45
    assert plans.render_worker("r2", "img", "net", 1, drain_timeout=2.5).stop_timeout == 8
    default = plans.render_worker("r2", "img", "net", 1)
    assert default.environment[roles.DRAIN_ENV] == str(plans.DRAIN_TIMEOUT)
    assert default.stop_timeout == plans.DRAIN_TIMEOUT + plans.DRAIN_GRACE


def test_drain_timeout_is_a_positive_number_of_seconds():
    assert DockerBackend().parse_options({"drain_timeout": 12}).drain_timeout == 12
    with pytest.raises(BadInput, match="drain_timeout"):
        DockerBackend().parse_options({"drain_timeout": 0})
