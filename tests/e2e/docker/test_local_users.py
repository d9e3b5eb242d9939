"""Another user of the same machine gets nothing from a root run: no parameter on a
command line, no HTTP endpoint that answers, no scratch directory to read or swap, no
API route, on the local backend and on docker.

The test makes a real second user (``useradd``, removed afterwards) and runs
tests/e2e/docker/local_user_probe.py as that user (``runuser``, the system's Python) while a real
``flowrig run`` of root maps its slow tasks. That user first makes the directory that
Dask would use for scratch space (``$TMPDIR/dask-scratch-space``, mode 0777), as an
attacker would.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import tempfile
import textwrap
import urllib.parse
from pathlib import Path

import psutil
import pytest

from tests.docker_support import derived_image, docker_run_env
from tests.run_support import (
    FLOWRIG,
    SLOW_MAP_FLOW,
    RunWatcher,
    assert_nothing_left,
    marked_env,
    processes_with_marker,
)

PROBE = Path(__file__).with_name("local_user_probe.py")
#: Interpreters another user can run: never this test's own (it may live in root's home).
SYSTEM_PYTHONS = ("/usr/bin/python3", "/usr/local/bin/python3", "/bin/python3")


def _as_user(user: str, argv: list[str], **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(
        [shutil.which("runuser") or "runuser", "-u", user, "--", *argv],
        env={"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"},
        capture_output=True, text=True, **kwargs,
    )


@pytest.fixture(scope="module")
def other_user():
    """(name, python) of a new unprivileged user, and a Python it can run; the user and
    everything it still runs are removed afterwards."""
    if os.geteuid() != 0:
        pytest.skip("making a second user needs root")
    for tool in ("useradd", "userdel", "runuser"):
        if shutil.which(tool) is None:
            pytest.fail(f"{tool} is missing", pytrace=False)
    name = f"flowrig-probe-{secrets.token_hex(3)}"
    subprocess.run([shutil.which("useradd"), "--no-create-home", "--shell", "/usr/sbin/nologin", name], check=True)
    try:
        python = next((p for p in SYSTEM_PYTHONS if _as_user(name, [p, "-c", "pass"]).returncode == 0), None)
        if python is None:
            pytest.fail(f"no Python that {name} can run among {SYSTEM_PYTHONS}", pytrace=False)
        yield name, python
    finally:
        subprocess.run([shutil.which("pkill") or "pkill", "-KILL", "-u", name], check=False)
        subprocess.run([shutil.which("userdel"), "--force", name], check=False)


@pytest.fixture
def shared_tmp(other_user):
    """A temporary directory like /tmp (mode 1777) where the other user has already made
    ``dask-scratch-space`` with mode 0777, as an attacker would."""
    name, _ = other_user
    tmp = Path(tempfile.mkdtemp(prefix="flowrig-users-"))
    tmp.chmod(0o1777)
    squatted = tmp / "dask-scratch-space"
    made = _as_user(name, ["mkdir", "-m", "0777", str(squatted)])
    assert made.returncode == 0, made.stderr
    try:
        yield tmp, squatted
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _probe(other_user, spec: dict) -> dict:
    name, python = other_user
    done = _as_user(name, [python, "-c", PROBE.read_text()], input=json.dumps(spec), timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout)


def _listening(processes: list[psutil.Process]) -> set[tuple[str, int]]:
    found = set()
    for proc in processes:
        try:
            connections = proc.net_connections(kind="tcp")
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        for c in connections:
            if c.status == psutil.CONN_LISTEN:
                found.add(("127.0.0.1" if c.laddr.ip in ("0.0.0.0", "::") else c.laddr.ip, c.laddr.port))
    return found


def _probe_finds_nothing(other_user, secret: str, endpoints: set, api: tuple | None, link: str, shared_tmp) -> None:
    """Probe the run as the other user: it must get nothing, and must have reached the
    run's API (its health answers anyone, the rest wants the auth string) and the
    dashboard proxy (refused without the link)."""
    tmp, squatted = shared_tmp
    parsed = urllib.parse.urlsplit(link)
    assert api is not None and api in endpoints, (api, endpoints)
    found = _probe(other_user, {
        "secret": secret, "endpoints": sorted(endpoints),
        "open": [[*api, "/api/health"], [*api, "/api/ready"]],
        "proxy": [parsed.hostname, parsed.port], "tmp": str(tmp), "own": str(squatted),
    })
    assert found["findings"] == [], "\n".join(found["findings"])
    assert found["tried"] > 100
    answers, (host, port) = found["answers"], api
    assert answers[f"https://{host}:{port}/api/health"] == 200, answers
    assert answers[f"https://{host}:{port}/docs"] == 401, answers
    assert answers[f"https://{host}:{port}/openapi.json"] == 401, answers
    assert answers[f"http://{parsed.hostname}:{parsed.port}/status"] == 403, answers


def test_another_local_user_gets_nothing_from_a_local_run(other_user, shared_tmp, project_factory):
    tmp, _ = shared_tmp
    secret = "leak-" + secrets.token_hex(12)
    project = project_factory(SLOW_MAP_FLOW, 'flow = "flow.py:main"\n[cluster]\nn_workers = 2\n')
    marker = "users-" + secrets.token_hex(4)
    env = {**marked_env(marker), "TMPDIR": str(tmp)}
    run = RunWatcher(subprocess.Popen(
        [*FLOWRIG, "run", str(project), "--param", f"secret={secret}", "--param", "n=400", "--param", "seconds=0.5"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    ))
    link = None
    try:
        link = run.wait_for(r"dashboard at (\S+)", 240).group(1)
        run.wait_for(r"Beginning flow run", 120)
        run.wait_for(r"tasks \d+/400 done", 120)  # the workers run the map
        processes = processes_with_marker(marker)
        endpoints = _listening(processes)
        api = [p for p in processes if "flowrig.api.serve" in " ".join(p.cmdline())]
        api_ports = _listening(api)
        assert len(endpoints) >= 6, endpoints  # proxy, API, scheduler (Dask, HTTP), 2 workers (Dask, HTTP)
        [api_port] = api_ports
        _probe_finds_nothing(other_user, secret, endpoints, api_port, link, shared_tmp)
        # Where the workers keep scratch and spill data: a directory of the run's own, 0700.
        scratch = [p for p in tmp.iterdir() if p.name.startswith("flowrig-") and (p / "dask-scratch-space").is_dir()]
        assert len(scratch) == 1, sorted(tmp.iterdir())
        assert scratch[0].stat().st_mode & 0o777 == 0o700 and scratch[0].stat().st_uid == 0
        assert any(w.name.startswith("worker-") for w in (scratch[0] / "dask-scratch-space").iterdir())
    finally:
        code = run.stop()
    assert code == 143, run.tail()
    assert_nothing_left(marker, link)
    assert not any(p.name.startswith("flowrig-") for p in tmp.iterdir()), sorted(tmp.iterdir())


def _container_listeners(container) -> set[tuple[str, int]]:
    """(address, port) of each TCP socket a container listens on, as its own network
    namespace has them (read from the host, through the container's first process)."""
    pid = container.attrs["State"]["Pid"]
    found = set()
    for table in ("tcp", "tcp6"):
        try:
            lines = Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            local, state = fields[1], fields[3]
            if state != "0A":  # LISTEN
                continue
            address, port = local.split(":")
            if len(address) == 8:
                host = ".".join(str(int(address[i:i + 2], 16)) for i in (6, 4, 2, 0))
            else:
                host = "::" if set(address) == {"0"} else "::1" if address.endswith("1") else address
            found.add((host, int(port, 16)))
    return found


@pytest.mark.docker
def test_another_local_user_gets_nothing_from_a_docker_run(other_user, shared_tmp, docker_client, seed_image,
                                                          tmp_path):
    from flowrig.containers import engine

    tmp, _ = shared_tmp
    secret = "leak-" + secrets.token_hex(12)
    project = tmp_path / "slow"
    project.mkdir()
    (project / "flow.py").write_text(textwrap.dedent(SLOW_MAP_FLOW))
    (project / "flowrig.toml").write_text('flow = "flow.py:main"\n[cluster]\nbackend = "docker"\nn_workers = 2\n')
    run_id = "usr" + secrets.token_hex(4)
    marker = "users-" + run_id
    with derived_image(docker_client, seed_image, project, "flowrig-users") as image:
        env = {**docker_run_env(run_id), "FLOWRIG_TEST_MARK": marker, "TMPDIR": str(tmp)}
        run = RunWatcher(subprocess.Popen(
            [*FLOWRIG, "run", str(project), "--backend", "docker", "--image", image,
             "--param", f"secret={secret}", "--param", "n=400", "--param", "seconds=0.5"],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        ))
        try:
            link = run.wait_for(r"dashboard at (\S+)", 300).group(1)
            run.wait_for(r"Beginning flow run", 120)
            run.wait_for(r"tasks \d+/400 done", 120)
            containers = engine.run_containers(docker_client, run_id)
            assert {c.labels["flowrig.role"] for c in containers} == {"runner", "scheduler", "worker"}
            endpoints: set[tuple[str, int]] = set()
            api: tuple[str, int] | None = None
            inside_only = []
            # The run's API, as the workers are told to reach it.
            [worker_env] = {tuple(c.attrs["Config"]["Env"]) for c in containers if c.labels["flowrig.role"] == "worker"}
            [api_url] = [e.split("=", 1)[1] for e in worker_env if e.startswith("PREFECT_API_URL=")]
            api_port = urllib.parse.urlsplit(api_url).port
            for container in containers:
                container.reload()
                # Published on the host (the scheduler's ports, on 127.0.0.1).
                for bindings in (container.attrs["NetworkSettings"]["Ports"] or {}).values():
                    for binding in bindings or []:
                        endpoints.add((binding["HostIp"] or "127.0.0.1", int(binding["HostPort"])))
                # Listening in the container: reachable from the host on its bridge address
                # unless bound to the container's own loopback.
                address = next(iter(container.attrs["NetworkSettings"]["Networks"].values()))["IPAddress"]
                for host, port in _container_listeners(container):
                    if host in ("127.0.0.1", "::1"):
                        inside_only.append((container.labels["flowrig.role"], port))
                        continue
                    endpoints.add((address, port))
                    if container.labels["flowrig.role"] == "runner" and port == api_port:
                        api = (address, port)
            endpoints |= _listening(processes_with_marker(marker))
            # Each worker's HTTP server is on its container's loopback, out of everyone's reach.
            assert sum(1 for role, _ in inside_only if role == "worker") >= 2, inside_only
            _probe_finds_nothing(other_user, secret, endpoints, api, link, shared_tmp)
            # Nor does `docker inspect` (root's) show the parameter anywhere.
            for container in containers:
                assert secret not in json.dumps(container.attrs), container.name
        finally:
            code = run.stop()
            engine.remove_run(docker_client, run_id)
        assert code == 143, run.tail()
