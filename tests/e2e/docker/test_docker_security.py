"""The docker backend's containers, seen from outside and from inside during a real run.

One run of a probe flow naps while the test looks at it from the host: what
``docker inspect`` shows of every container, and whether the scheduler lets in a
client with another run's certificate or with the image's own baked one. The flow
itself reports what a worker gets from the run's API without credentials, whether
the runner sees a Docker socket, and whether its auth string is on any command line.
"""

from __future__ import annotations

import json
import subprocess
import textwrap
import time
import uuid

import pytest

from flowrig.certs import TLSMaterial
from flowrig.containers import engine
from tests.docker_support import derived_image, docker_run_env
from tests.run_support import FLOWRIG

API_KEY_MARKER = "pnu_flowrig0security0marker"

SECURITY_FLOW = """
    import glob
    import os
    import time

    import httpx
    from prefect import flow, task
    from prefect.settings import get_current_settings

    def _reveal(value):
        return value.get_secret_value() if hasattr(value, "get_secret_value") else value

    @task
    def from_a_worker() -> dict:
        url, ca = os.environ["PREFECT_API_URL"], os.environ["PREFECT_API_SSL_CERT_FILE"]
        return {
            "url": url,
            "anonymous": httpx.post(url + "/flow_runs/filter", json={}, verify=ca).status_code,
            "forged_state": httpx.post(url + "/flow_runs/00000000-0000-0000-0000-000000000000/set_state",
                                       json={"state": {"type": "COMPLETED"}, "force": True}, verify=ca).status_code,
            "health": httpx.get(url + "/health", verify=ca).status_code,
            "socket": os.path.exists("/var/run/docker.sock"),
            "tls_dir": os.environ.get("FLOWRIG_TLS_DIR"),
        }

    @flow
    def main(nap: float = 0.0) -> dict:
        seen = from_a_worker.submit().result()
        auth = _reveal(get_current_settings().api.auth_string)
        command_lines = []
        for path in glob.glob("/proc/[0-9]*/cmdline"):
            try:
                command_lines.append(open(path, "rb").read())
            except OSError:
                pass
        writable = True
        try:
            open("/opt/flowrig/project/written", "w").close()
        except OSError:
            writable = False
        time.sleep(nap)  # the test looks at the containers meanwhile
        return {
            **seen,
            "auth": auth,
            "auth_on_a_command_line": any(auth.encode() in line for line in command_lines),
            "runner_socket": os.path.exists("/var/run/docker.sock"),
            "root_writable": writable,
            "uid": os.getuid(),
        }
"""


@pytest.fixture(scope="module")
def security_image(docker_client, seed_image, tmp_path_factory):
    project = tmp_path_factory.mktemp("security-probe")
    (project / "flow.py").write_text(textwrap.dedent(SECURITY_FLOW))
    (project / "flowrig.toml").write_text('flow = "flow.py:main"\n\n[cluster]\nbackend = "docker"\nn_workers = 1\n')
    with derived_image(docker_client, seed_image, project, "flowrig-security") as tag:
        yield tag


def _baked_material(docker_client, image: str) -> TLSMaterial:
    def read(name: str) -> bytes:
        return docker_client.containers.run(
            image, entrypoint=["cat"], command=[f"/etc/flowrig/tls/{name}"], remove=True
        )

    return TLSMaterial(ca_pem=read("ca.crt"), cert_pem=read("tls.crt"), key_pem=read("tls.key"))


def _refused(address: str, material: TLSMaterial) -> bool:
    from distributed import Client

    try:
        Client(address, security=material.to_security(), timeout=5).close()
    except (OSError, TimeoutError):
        return True
    return False


def _wait_for_containers(docker_client, run_id: str, roles: set[str], timeout: float) -> list:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = engine.run_containers(docker_client, run_id)
        if roles <= {c.labels.get("flowrig.role") for c in found if c.status == "running"}:
            return found
        time.sleep(0.5)
    raise AssertionError(f"the run's {sorted(roles)} containers were not all running within {timeout:.0f} s")


@pytest.mark.docker
def test_a_docker_run_holds_no_socket_shows_no_secret_and_lets_no_stranger_in(docker_client, security_image):
    run_id = "s" + uuid.uuid4().hex[:9]
    # A Prefect Cloud key in the caller's environment travels over the runner's stdin.
    env = docker_run_env(run_id, PREFECT_API_KEY=API_KEY_MARKER)
    run = subprocess.Popen(
        [*FLOWRIG, "run", "--backend", "docker", "--image", security_image, "--param", "nap=20.125", "--output", "json"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        containers = _wait_for_containers(docker_client, run_id, {"runner", "scheduler", "worker"}, 180)
        inspected = {c.labels["flowrig.role"]: docker_client.api.inspect_container(c.id) for c in containers}
        scheduler = next(c for c in containers if c.labels["flowrig.role"] == "scheduler")
        port = engine.published_port(scheduler, 8786)
        address = f"tls://127.0.0.1:{port}"
        # Workers start beside the scheduler: once they run, it may not listen yet, and a
        # refusal must come from its TLS, not from a port nothing answers on.
        engine.wait_for_log(scheduler, "Scheduler at:", 120, "scheduler")
        stranger_refused = _refused(address, TLSMaterial.ephemeral())
        baked_refused = _refused(address, _baked_material(docker_client, security_image))
        stdout, stderr = run.communicate(timeout=240)
    finally:
        if run.poll() is None:
            run.kill()
            run.communicate()
        engine.remove_run(docker_client, run_id)
    assert run.returncode == 0, stderr[-3000:]
    outcome = json.loads(stdout.strip().splitlines()[-1])
    seen = outcome["result"]

    # The run's API: HTTPS, closed to anyone without the run's auth string.
    assert seen["url"].startswith("https://") and seen["health"] == 200
    assert seen["anonymous"] == 401 and seen["forged_state"] == 401
    assert not seen["auth_on_a_command_line"]

    # The scheduler lets in neither a stranger nor a holder of the image's baked key.
    assert stranger_refused and baked_refused

    # No container holds the Docker socket; every one is locked down.
    assert not seen["runner_socket"] and not seen["socket"]
    assert not seen["root_writable"] and seen["uid"] != 0
    assert seen["tls_dir"] == "/dev/shm/flowrig-tls"
    assert set(inspected) == {"runner", "scheduler", "worker"}
    for role, info in inspected.items():
        host = info["HostConfig"]
        assert host["CapDrop"] == ["ALL"], role
        assert "no-new-privileges:true" in host["SecurityOpt"], role
        assert host["ReadonlyRootfs"] is True and host["PidsLimit"] > 0, role
        assert not host.get("Binds") and not info.get("Mounts"), role
        assert host["Privileged"] is False and info["Config"]["User"] == "flowrig", role
        for binding in (host.get("PortBindings") or {}).values():
            assert all(b["HostIp"] == "127.0.0.1" for b in binding), role

    # Nothing inspect shows holds the auth string, a parameter, or a private key.
    text = json.dumps(inspected)
    assert outcome["result"]["auth"] and outcome["result"]["auth"] not in text
    assert "20.125" not in text and "nap" not in json.dumps([i["Config"]["Cmd"] for i in inspected.values()])
    assert "PRIVATE KEY" not in text and "PREFECT_API_AUTH_STRING" not in text
    assert API_KEY_MARKER not in text


def test_the_test_sees_a_stranger_refused_but_the_runs_own_certificate_accepted(tls):
    """_refused can fail: a scheduler with the run's own certificates lets the run in."""
    from distributed import Scheduler
    from distributed.utils import LoopRunner

    runner = LoopRunner(asynchronous=False)
    runner.start()
    try:
        async def start():
            return await Scheduler(protocol="tls", host="127.0.0.1", security=tls.to_security(), dashboard=False)

        scheduler = runner.run_sync(start)
        try:
            assert not _refused(scheduler.address, tls)
            assert _refused(scheduler.address, TLSMaterial.ephemeral())
        finally:
            runner.run_sync(scheduler.close)
    finally:
        runner.stop()
