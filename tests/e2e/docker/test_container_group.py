"""The one run-local loop (:func:`flowrig.containers.group.run_group`) with real
containers of the test image: who ends a group, what reaches a member's stdin, and what
is left once it ends, normally, on an error or on a signal."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import time
import uuid

import pytest

from flowrig.containers import LABEL_RUN_ID, ContainerPlan, labels
from flowrig.containers.group import Member, Network, run_group
from flowrig.errors import BadInput
from tests.docker_support import REPO, listed

pytestmark = pytest.mark.docker


def plan(run_id: str, role: str, image: str, script: str, network: str, **extra) -> ContainerPlan:
    return ContainerPlan(
        name=f"flowrig-group-{role}-{run_id}", image=image, command=("sh", "-c", script),
        labels=labels(run_id, role), environment={}, network=network, **extra,
    )


def leftovers(client, run_id: str) -> list[str]:
    return [*listed(client, {"label": f"{LABEL_RUN_ID}={run_id}"})]


def networks_named(client, name: str) -> list:
    return [net for net in client.networks.list(names=[name]) if net.name == name]


@pytest.fixture
def run_id(docker_client):
    run_id = uuid.uuid4().hex[:8]
    yield run_id
    for container in docker_client.containers.list(all=True, filters={"label": f"{LABEL_RUN_ID}={run_id}"}):
        container.remove(force=True)
    for net in docker_client.networks.list():
        if run_id in net.name:
            net.remove()


@pytest.mark.parametrize("parallel", [True, False], ids=["parallel", "one-by-one"])
def test_the_first_essential_exit_ends_the_group_and_a_non_essential_exit_does_not(
    docker_client, seed_image, run_id, parallel
):
    network = f"flowrig-group-{run_id}"
    members = [
        # Exits first, and is not essential: the group goes on.
        Member(plan(run_id, "side", seed_image, "echo side-out; exit 3", network), "side", essential=False),
        # Would run for a minute: only the first essential exit counts.
        Member(plan(run_id, "slow", seed_image, "echo slow-out; sleep 60", network), "slow"),
        Member(plan(run_id, "main", seed_image, "sleep 2; echo main-out; exit 5", network), "main"),
    ]
    out = io.StringIO()
    started = time.monotonic()
    code = run_group(docker_client, members, [Network(network, own_run_id=run_id)], out=out, parallel=parallel)
    assert code == 5
    assert time.monotonic() - started < 45
    lines = out.getvalue().splitlines()
    # Prefixed by label, the last line of the one that ended the group included.
    for line in ("side | side-out", "slow | slow-out", "main | main-out"):
        assert line in lines, lines
    assert leftovers(docker_client, run_id) == []
    assert networks_named(docker_client, network) == []


def test_stdin_is_delivered_then_closed_and_a_shared_network_is_kept(docker_client, seed_image, run_id):
    network = f"flowrig-group-shared-{run_id}"
    # cat ends only at end of file: without the close it would be killed by timeout (124).
    script = 'timeout 20 cat; echo "cat=$?"'
    reader = plan(run_id, "reader", seed_image, script, network, stdin_open=True)
    payload = b"line one\nline two\n"
    out = io.StringIO()
    code = run_group(docker_client, [Member(reader, "reader", stdin=payload)],
                     [Network(network, labels={"flowrig.test": run_id})], out=out)
    assert code == 0
    assert out.getvalue().splitlines() == ["reader | line one", "reader | line two", "reader | cat=0"]
    assert leftovers(docker_client, run_id) == []
    # Invocations meet on a shared network: it stays for the next one.
    [kept] = networks_named(docker_client, network)
    assert kept.attrs["Labels"] == {"flowrig.test": run_id}


def test_detach_prints_the_names_and_keeps_the_containers_running(docker_client, seed_image, run_id):
    members = [Member(plan(run_id, role, seed_image, "sleep 60", "bridge"), role) for role in ("a", "b")]
    out = io.StringIO()
    assert run_group(docker_client, members, out=out, detach=True) == 0
    assert out.getvalue() == "".join(f"{m.plan.name}\n" for m in members)
    running = {c.name: c.status for c in docker_client.containers.list(filters={"label": f"{LABEL_RUN_ID}={run_id}"})}
    assert running == {m.plan.name: "running" for m in members}


@pytest.mark.parametrize("failure", ["after_create", "missing image"])
def test_an_error_before_the_start_removes_every_container_and_the_own_network(
    docker_client, seed_image, run_id, failure
):
    network = f"flowrig-group-{run_id}"
    seen: list[str] = []

    def refuse(container) -> None:
        seen.append(container.status)
        raise BadInput("refused")

    second_image = f"flowrig-no-such-image:{run_id}" if failure == "missing image" else seed_image
    members = [
        Member(plan(run_id, "first", seed_image, "echo started; sleep 60", network), "first"),
        Member(plan(run_id, "second", second_image, "echo started; sleep 60", network), "second",
               after_create=refuse if failure == "after_create" else None),
    ]
    out = io.StringIO()
    with pytest.raises(BadInput, match="refused" if failure == "after_create" else "not found: build it"):
        run_group(docker_client, members, [Network(network, own_run_id=run_id)], out=out)
    # The check saw a container created and not started; nothing started at all.
    assert seen == (["created"] if failure == "after_create" else [])
    assert out.getvalue() == ""
    assert leftovers(docker_client, run_id) == []
    assert networks_named(docker_client, network) == []


GROUP_SCRIPT = """
import sys
from flowrig.containers import ContainerPlan, engine, labels
from flowrig.containers.group import Member, Network, run_group
from flowrig.errors import exit_status

image, run_id, network = sys.argv[1:]
members = [
    Member(ContainerPlan(name=f"flowrig-group-{role}-{run_id}", image=image,
                         command=("sh", "-c", f"echo {role}-ready; exec sleep 120"),
                         labels=labels(run_id, role), environment={}, network=network), role)
    for role in ("one", "two")
]
try:
    code = run_group(engine.connect(), members, [Network(network, own_run_id=run_id)], out=sys.stdout)
except BaseException as exc:  # as the CLI maps it: a signal is 128 + its number
    code = exit_status(exc)[0]
sys.exit(code)
"""


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_removes_every_container_and_the_own_network(docker_client, seed_image, run_id, signum):
    network = f"flowrig-group-{run_id}"
    process = subprocess.Popen(
        [sys.executable, "-c", GROUP_SCRIPT, seed_image, run_id, network],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO, env={**os.environ},
    )
    try:
        seen = set()
        deadline = time.monotonic() + 60
        while seen != {"one | one-ready", "two | two-ready"} and time.monotonic() < deadline:
            line = process.stdout.readline()
            assert line, process.stderr.read()
            seen.add(line.strip())
        assert len(leftovers(docker_client, run_id)) == 2
        assert len(networks_named(docker_client, network)) == 1
        process.send_signal(signum)
        process.wait(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
    # Ended by the signal, as every flowrig command is (128 + its number).
    assert process.returncode == 128 + signum, process.stderr.read()
    assert leftovers(docker_client, run_id) == []
    assert networks_named(docker_client, network) == []
