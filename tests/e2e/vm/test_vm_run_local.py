"""``flowrig vm run-local``: a VM's cloud-init replayed with the local engine, as real containers.

For each VM backend the seed project's scheduler and worker cloud-init are rendered
(per-run certificates, so the VMs would read them from the cloud's secret store), run
here on the host's network with the test's certificates over stdin, and the seed flow
runs against that scheduler from the host with the same certificates: 90. Each
container is checked against the VM's ``docker run`` line and for key material in its
configuration; the streaming mode removes its containers on SIGTERM.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import socket
import subprocess
import time
import uuid
from pathlib import Path

import pytest

from flowrig.backends.vm import cloudinit
from flowrig.certs import TLSMaterial
from flowrig.certs.scan import private_keys_in_bytes
from flowrig.containers import LABEL_RUN_ID
from tests.docker_support import SEED_PROJECT
from tests.run_support import FLOWRIG

TEN = "x=[0,1,2,3,4,5,6,7,8,9]"

pytestmark = pytest.mark.docker


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def certs(tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("certs")
    TLSMaterial.ephemeral().write_to_dir(directory)
    return directory


def project_for(root: Path, port: int, prefect_url: str | None) -> Path:
    root.mkdir(parents=True)
    (root / "flow.py").write_text((SEED_PROJECT / "flow.py").read_text())
    # The scheduler listens where the test reaches it; the workers report to the test's
    # Prefect server, which they reach on the host's network as a VM would in its own.
    (root / "flowrig.toml").write_text(
        'flow = "flow.py:dask_cloud_provider_test"\n'
        "[cluster.options]\n"
        f'scheduler_extra_args = ["--port", "{port}"]\n'
        + (f'env_vars = {{ PREFECT_API_URL = "{prefect_url}" }}\n' if prefect_url else "")
    )
    return root


def run_containers(client, run_id: str):
    return client.containers.list(all=True, filters={"label": f"{LABEL_RUN_ID}={run_id}"})


def flowrig(*args: str, env: dict | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([*FLOWRIG, *args], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})


def check_like_its_vm(container, role: cloudinit.VMRole) -> None:
    """The container runs as the VM's ``docker run`` line says, certificates aside."""
    host = container.attrs["HostConfig"]
    config = container.attrs["Config"]
    assert host["NetworkMode"] == "host"
    assert host["ReadonlyRootfs"] is True
    assert host["CapDrop"] == ["ALL"] and host["SecurityOpt"] == ["no-new-privileges:true"]
    assert host["PidsLimit"] == cloudinit.PIDS_LIMIT[role.role]
    assert host["Tmpfs"] == {"/tmp": "rw,nosuid,nodev,noexec"}
    assert host["ShmSize"] == 64 * 1024 * 1024
    assert config["Image"] == role.image and tuple(config["Cmd"]) == role.command
    assert config["Labels"][LABEL_RUN_ID] == role.run_id and config["Labels"]["flowrig.role"] == role.role
    line = shlex.split(shlex.join(cloudinit.container_arguments(role)))
    vm_env = {line[i + 1] for i, word in enumerate(line) if word == "-e"}
    local_env = set(config["Env"])
    assert {e for e in vm_env if not e.startswith("FLOWRIG_TLS")} <= local_env
    assert "FLOWRIG_TLS_FROM=stdin" in local_env
    assert not any(e.startswith("FLOWRIG_TLS_SECRET_REF=") for e in local_env)
    # The certificates came over stdin: none of the engine's view of the container holds a key.
    assert list(private_keys_in_bytes(json.dumps(container.attrs).encode())) == []


@pytest.mark.parametrize(("backend", "api"), [("azure", "server"), ("ec2", "server"), ("gcp", "server"),
                                             ("ec2", "embedded")])
def test_a_vms_roles_replayed_locally_run_the_seed_flow(
    docker_client, seed_image, prefect_server, certs, tmp_path, backend, api
):
    """With ``embedded``, the workers report to the runner's own API: the CA file it
    names is at a path of the runner's machine, and the worker's container uses the
    run's CA where it was delivered instead."""
    run_id = f"vm{uuid.uuid4().hex[:8]}"
    port = free_port()
    api_url = prefect_server if api == "server" else None
    project = project_for(tmp_path / "project", port, api_url)
    rendered = tmp_path / "cloud-init"
    try:
        done = flowrig("vm", "cloud-init", "--backend", backend, "--project", str(project),
                       "--image", seed_image, "--output-dir", str(rendered),
                       "--scheduler-address", f"tls://127.0.0.1:{port}", env={"FLOWRIG_RUN_ID": run_id})
        assert done.returncode == 0, done.stderr
        scheduler = cloudinit.parse((rendered / "scheduler.yaml").read_text())
        worker = cloudinit.parse((rendered / "worker.yaml").read_text())
        assert scheduler.tls.source == worker.tls.source != "baked"

        started = flowrig("vm", "run-local", str(rendered / "scheduler.yaml"), str(rendered / "worker.yaml"),
                          "--certs", str(certs), "--detach")
        assert started.returncode == 0, started.stderr
        assert started.stdout.split() == [scheduler.name, worker.name]
        by_name = {c.name: c for c in run_containers(docker_client, run_id)}
        assert sorted(by_name) == sorted([scheduler.name, worker.name])
        check_like_its_vm(by_name[scheduler.name], scheduler)
        check_like_its_vm(by_name[worker.name], worker)

        ran = flowrig("run", str(project), "--backend", "address", "--scheduler-address", f"tls://127.0.0.1:{port}",
                      "--certs", str(certs), "--param", TEN, "--output", "json",
                      env={"PREFECT_API_URL": api_url} if api_url else None, timeout=300)
        logs = {name: c.logs().decode(errors="replace")[-1500:] for name, c in by_name.items()}
        assert ran.returncode == 0, (ran.stderr[-3000:], logs)
        outcome = json.loads(ran.stdout.strip().splitlines()[-1])
        assert (outcome["state"], outcome["result"]) == ("Completed", 90), outcome
        # The worker is the VM's: it joined under its VM's name, over the same mutual TLS.
        from distributed import Client

        with Client(f"tls://127.0.0.1:{port}", security=TLSMaterial.from_dir(certs).to_security(),
                    timeout=30) as client:
            names = [info["name"] for info in client.scheduler_info()["workers"].values()]
        assert names == [worker.name]
    finally:
        for container in run_containers(docker_client, run_id):
            container.remove(force=True)
    assert run_containers(docker_client, run_id) == []


def test_streaming_run_local_prefixes_logs_and_removes_its_containers_on_sigterm(
    docker_client, seed_image, certs, tmp_path
):
    run_id = f"vm{uuid.uuid4().hex[:8]}"
    project = project_for(tmp_path / "project", free_port(), "http://127.0.0.1:9/api")
    rendered = tmp_path / "all.yaml"
    done = flowrig("vm", "cloud-init", "--backend", "gcp", "--project", str(project), "--image", seed_image,
                   "--role", "scheduler", env={"FLOWRIG_RUN_ID": run_id})
    assert done.returncode == 0, done.stderr
    rendered.write_text(done.stdout)
    process = subprocess.Popen([*FLOWRIG, "vm", "run-local", str(rendered), "--certs", str(certs)],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 90
        while not any("Scheduler at" in c.logs().decode(errors="replace") for c in run_containers(docker_client, run_id)):
            assert process.poll() is None and time.monotonic() < deadline, process.communicate(timeout=30)
            time.sleep(0.5)
        process.send_signal(signal.SIGTERM)
        out, err = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
        leftovers = run_containers(docker_client, run_id)
        for container in leftovers:
            container.remove(force=True)
    assert leftovers == [], err
    assert process.returncode == 128 + signal.SIGTERM, err
    assert f"flowrig-{run_id}-scheduler | " in out and "Scheduler at" in out


def test_an_image_the_engine_lacks_is_named_with_the_fix(docker_client, certs, tmp_path):
    project = project_for(tmp_path / "project", free_port(), "http://127.0.0.1:9/api")
    missing = f"flowrig-missing-{uuid.uuid4().hex[:8]}:1"
    done = flowrig("vm", "cloud-init", "--backend", "ec2", "--project", str(project), "--image", missing,
                   "--output-dir", str(tmp_path / "out"))
    assert done.returncode == 0, done.stderr
    ran = flowrig("vm", "run-local", str(tmp_path / "out" / "worker.yaml"), "--certs", str(certs))
    assert ran.returncode == 2, ran.stderr
    [line] = ran.stderr.strip().splitlines()
    assert f"docker pull {missing}" in line and "flowrig build" in line


def test_streaming_run_local_ends_when_a_role_exits_and_removes_every_container(
    docker_client, seed_image, certs, tmp_path
):
    run_id = f"vm{uuid.uuid4().hex[:8]}"
    port = free_port()
    project = project_for(tmp_path / "project", port, "http://127.0.0.1:9/api")
    # A scheduler that no client ever joins closes on its own after this many seconds.
    toml = project / "flowrig.toml"
    toml.write_text(toml.read_text().replace(f'"--port", "{port}"', f'"--port", "{port}", "--first-client-timeout", "3"'))
    done = flowrig("vm", "cloud-init", "--backend", "ec2", "--project", str(project), "--image", seed_image,
                   "--scheduler-address", f"tls://127.0.0.1:{port}", env={"FLOWRIG_RUN_ID": run_id})
    assert done.returncode == 0, done.stderr
    (tmp_path / "both.yaml").write_text(done.stdout)
    try:
        ran = flowrig("vm", "run-local", str(tmp_path / "both.yaml"), "--certs", str(certs), timeout=120)
    finally:
        leftovers = run_containers(docker_client, run_id)
        for container in leftovers:
            container.remove(force=True)
    assert leftovers == [], ran.stderr
    # The scheduler ended first and cleanly; its worker went with it.
    assert ran.returncode == 0, ran.stdout[-2000:] + ran.stderr[-2000:]
    assert "flowrig-no-client-timeout" in ran.stdout
    assert f"flowrig-{run_id}-scheduler | " in ran.stdout
