"""Which certificates a run uses: its own CA wherever flowrig starts the roles, the
image's baked files only for roles something else starts.

A baked image's leaf and CA are in every copy of the image for a year; a run whose
roles flowrig starts itself has no use for them and gets a CA made for that run, also
inside the image. The last two tests run the real thing: the local backend inside a
container of the baked seed image, and an ECS run (against moto) whose scheduler and
worker are replayed as containers of that image.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import uuid
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes

from flowrig import layout
from flowrig.backends import get_backend
from flowrig.certs import TLSMaterial
from flowrig.run.prepared import run_certificates
from tests.run_support import FLOWRIG
from tests.tls_support import local_scheduler

REPO = Path(__file__).resolve().parents[3]


def fingerprint(pem: bytes) -> str:
    return x509.load_pem_x509_certificate(pem).fingerprint(hashes.SHA256()).hex()


@pytest.fixture
def in_baked_image(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> TLSMaterial:
    """This process as if it ran in a baked image: FLOWRIG_IN_IMAGE and baked files."""
    baked = TLSMaterial.ephemeral()
    baked.write_to_dir(tmp_path / "baked")
    monkeypatch.setenv(layout.IN_IMAGE_ENV, "1")
    monkeypatch.delenv(layout.TLS_DIR_ENV, raising=False)
    monkeypatch.setattr(layout, "IMAGE_TLS_DIR", tmp_path / "baked")
    return baked


@pytest.mark.parametrize(
    ("backend", "options"),
    [
        ("local", {}),
        ("docker", {}),
        ("ecs", {"cluster_arn": "arn:aws:ecs:us-east-1:123456789012:cluster/c"}),
        ("fargate", {}),
        ("ec2", {}),
        ("ec2", {"tls": "per-run"}),
        ("distributed:LocalCluster", {}),
    ],
)
def test_runs_whose_roles_flowrig_starts_get_a_ca_of_their_own_in_a_baked_image(in_baked_image, backend, options):
    first = run_certificates(get_backend(backend), None, options)
    second = run_certificates(get_backend(backend), None, options)
    baked = fingerprint(in_baked_image.ca_pem)
    assert fingerprint(first.ca_pem) != baked and fingerprint(second.ca_pem) != baked
    assert fingerprint(first.ca_pem) != fingerprint(second.ca_pem)
    # Short-lived, and no CA key kept anywhere: the run's alone.
    assert (first.not_after - x509.load_pem_x509_certificate(first.ca_pem).not_valid_before_utc).days <= 1


@pytest.mark.parametrize(
    ("backend", "options"),
    [
        ("address", {"address": "tls://scheduler:8786"}),
        ("ecs", {"worker_task_definition_arn": "arn:aws:ecs:us-east-1:123456789012:task-definition/mine:1"}),
        ("fargate", {"scheduler_task_definition_arn": "arn:aws:ecs:us-east-1:123456789012:task-definition/s:1"}),
        ("fargate", {"scheduler_address": "tls://10.0.0.5:8786"}),
        ("ec2", {"tls": "baked"}),
    ],
)
def test_roles_started_by_something_else_make_the_run_use_the_baked_files(in_baked_image, backend, options):
    tls = run_certificates(get_backend(backend), None, options)
    assert tls.ca_pem == in_baked_image.ca_pem and tls.key_pem == in_baked_image.key_pem


def test_delivered_and_given_certificates_still_come_first(in_baked_image, tmp_path, monkeypatch):
    given = TLSMaterial.ephemeral()
    assert run_certificates(get_backend("address"), given, {"address": "tls://x:1"}) is given
    delivered = TLSMaterial.ephemeral()
    delivered.write_to_dir(tmp_path / "delivered")
    monkeypatch.setenv(layout.TLS_DIR_ENV, str(tmp_path / "delivered"))
    assert run_certificates(get_backend("local"), None, {}).ca_pem == delivered.ca_pem


def test_a_sizing_hook_cannot_switch_the_run_to_other_certificates(in_baked_image, monkeypatch):
    """The certificates are chosen before the hook runs; options that would change the
    choice are refused rather than started with certificates their roles lack."""
    from prefect import flow as prefect_flow

    from flowrig.errors import BadInput
    from flowrig.run.config import RunConfig
    from flowrig.run.execute import execute

    # An API of "our own" that is never reached: the run ends before it would be used.
    monkeypatch.setenv("PREFECT_API_URL", "http://127.0.0.1:9/api")

    def hook(parameters, provider_kwargs):
        provider_kwargs["worker_task_definition_arn"] = "arn:aws:ecs:us-east-1:123456789012:task-definition/w:1"

    @prefect_flow
    def flow() -> None:  # never reached
        raise AssertionError

    config = RunConfig(flow=flow, parameters={}, backend=get_backend("fargate"), n_workers=1,
                       sizing_hook=hook, sizing_hook_name="hook", options={})
    with pytest.raises(BadInput, match="sizing hook changed options"):
        execute(config)


# --- the real thing ----------------------------------------------------------------------

FINGERPRINT_FLOW = '''
from prefect import flow, task


@task
def ca_of_this_worker() -> str:
    """The SHA-256 fingerprint of the CA the worker running this task trusts."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from distributed import get_worker

    ca = get_worker().security.tls_ca_file
    pem = ca.encode() if "-----BEGIN" in ca else open(ca, "rb").read()
    return x509.load_pem_x509_certificate(pem).fingerprint(hashes.SHA256()).hex()


@flow
def which_ca() -> str:
    return ca_of_this_worker.submit().result()
'''


def _on_network(docker_client, network: str) -> list:
    """The containers `ecs run-local` started on ``network`` (each invocation labels
    its containers with an id of its own)."""
    from flowrig.backends.aws.ecs import run_local

    found = docker_client.containers.list(all=True, filters={"label": run_local.LABEL_RUN})
    return [c for c in found if network in c.attrs["NetworkSettings"]["Networks"]]


def _baked_files(docker_client, image: str) -> dict[str, bytes]:
    files = {}
    for name in (layout.CA_CERT, layout.LEAF_CERT, layout.LEAF_KEY):
        files[name] = docker_client.containers.run(
            image, [str(layout.IMAGE_TLS_DIR / name)], entrypoint="cat", remove=True
        )
    return files


@pytest.mark.docker
def test_a_local_run_inside_a_baked_image_uses_a_ca_made_for_that_run(docker_client, seed_image, tmp_path):
    from tests.docker_support import derived_image

    project = tmp_path / "which-ca"
    project.mkdir()
    (project / "flow.py").write_text(FINGERPRINT_FLOW)
    (project / "flowrig.toml").write_text('flow = "flow.py:which_ca"\n\n[cluster]\nbackend = "local"\nn_workers = 1\n')
    info = json.loads(docker_client.containers.run(seed_image, ["info"], remove=True))
    baked = fingerprint(_baked_files(docker_client, seed_image)[layout.CA_CERT])
    assert info["certificate"]["ca_sha256"] == baked, info  # a baked image, and its CA
    with derived_image(docker_client, seed_image, project, "flowrig-which-ca") as image:
        used = []
        for _ in range(2):
            # The run's own --timeout ends a stuck run with its logs (exit 124), well
            # before the test's timeout would end it without them.
            done = subprocess.run(
                ["docker", "run", "--rm", image, "run", "--output", "json", "--timeout", "240"],
                capture_output=True, text=True, timeout=280,
            )
            assert done.returncode == 0, done.stderr[-3000:]
            outcome = json.loads(done.stdout.strip().splitlines()[-1])
            assert outcome["state"] == "Completed", outcome
            used.append(outcome["result"])
    assert baked not in used, "a run of the baked image used the image's own CA"
    assert used[0] != used[1], "two runs of the image shared a CA"


@pytest.mark.docker
@pytest.mark.aws
# Two cluster objects (the stand-in and the fargate one) watch the same scheduler.
@pytest.mark.filterwarnings("ignore:Scheduler already contains a plugin")
def test_an_ecs_run_from_a_baked_image_uses_a_ca_made_for_that_run(
    aws, bootstrapped, docker_client, seed_image, tmp_path, monkeypatch
):
    """The runner decides its certificates as it would inside the baked seed image (its
    baked files, copied out of the image); the run's scheduler and worker tasks, as ECS
    would start them from the definitions flowrig registered, run as containers of the
    image with the run's secret, and use that run's CA."""
    import boto3

    from flowrig.backends.aws.ecs import FargateBackend, run_local, taskdoc
    from flowrig.backends.base import ClusterSpec
    from flowrig.project.sizing import ClusterSize
    from flowrig.roles import task_name

    baked_dir = tmp_path / "baked"
    baked_dir.mkdir()
    for name, data in _baked_files(docker_client, seed_image).items():
        (baked_dir / name).write_bytes(data)
    baked = fingerprint((baked_dir / layout.CA_CERT).read_bytes())
    monkeypatch.setenv(layout.IN_IMAGE_ENV, "1")
    monkeypatch.delenv(layout.TLS_DIR_ENV, raising=False)
    monkeypatch.setattr(layout, "IMAGE_TLS_DIR", baked_dir)
    # The project's options, as `flowrig run` reads them: roles all started by flowrig.
    # No preflight: the image is local, never pushed to (moto's) ECR, which it would refuse.
    options = {"worker_cpu": 1024, "worker_mem": 2048, "create_roles": True, "preflight": False}

    def one_run() -> tuple[str, str, dict, dict]:
        """A fargate run against moto: (run id, its CA's fingerprint, task definitions, worker RunTask)."""
        tls = run_certificates(FargateBackend(), None, options)
        # moto starts no task: a scheduler and a worker on loopback with the run's
        # certificates stand in for the tasks, so that the run's client can connect and
        # its start sees a worker join.
        stand_in = local_scheduler(tls, workers=1)
        run_id = uuid.uuid4().hex[:8]
        with stand_in:
            started = FargateBackend().start(ClusterSpec(
                run_id=run_id, size=ClusterSize(1), tls=tls, image=seed_image,
                worker_env={"FLOWRIG_RUN_ID": run_id}, options={**options, "scheduler_address": stand_in.scheduler_address},
            ))
            ecs = boto3.client("ecs")
            described = {role: ecs.describe_task_definition(taskDefinition=f"flowrig-{run_id}-{role}")
                         for role in ("scheduler", "worker")}
            [worker_request] = [r["body"] for r in aws.requests("RunTask") if run_id in json.dumps(r["body"])]
            [secret] = described["worker"]["taskDefinition"]["containerDefinitions"][0]["secrets"]
            secret_text = boto3.client("secretsmanager").get_secret_value(SecretId=secret["valueFrom"])["SecretString"]
            secrets_dir = tmp_path / f"secrets-{run_id}"
            path = secrets_dir / taskdoc.secret_file_name(secret["valueFrom"])
            path.parent.mkdir(parents=True)
            path.write_text(secret_text)
            started.close()
        assert fingerprint(json.loads(secret_text)["ca"].encode()) == fingerprint(tls.ca_pem)
        return run_id, fingerprint(tls.ca_pem), described, {"request": worker_request, "secrets": secrets_dir}

    run_id, first, described, worker = one_run()
    _second_id, second, _described, _worker = one_run()
    assert baked not in (first, second), "the run used the image's baked CA"
    assert first != second, "two runs shared a CA"

    # The first run's roles, replayed: they take the run's CA from its secret.
    network = f"flowrig-replay-{run_id}"
    for role, document in described.items():
        (tmp_path / f"{role}.json").write_text(json.dumps(document, default=str))
    request = worker["request"]
    override = request["overrides"]["containerOverrides"][0]
    command = override["command"]
    command[1] = "tls://dask-scheduler:8786"
    command[command.index(task_name.FROM_ECS_TASK)] = "replayed-0"
    (tmp_path / "worker-overrides.json").write_text(json.dumps(request))
    (tmp_path / "scheduler-overrides.json").write_text(json.dumps({"containerOverrides": []}))
    docker_client.networks.create(network, driver="bridge", labels={run_local.LABEL_RUN: run_id})
    background = []
    try:
        for role in ("scheduler", "worker"):
            background.append(subprocess.Popen(
                [*FLOWRIG, "ecs", "run-local", str(tmp_path / f"{role}.json"), "--overrides",
                 str(tmp_path / f"{role}-overrides.json"), "--network", network, "--secrets-dir",
                 str(worker["secrets"])],
                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
        deadline = time.monotonic() + 180
        containers: dict = {}
        while time.monotonic() < deadline:
            containers = {c.labels.get(run_local.LABEL_CONTAINER): c for c in _on_network(docker_client, network)}
            joined = containers.get("dask-worker")
            if joined is not None and b"Registered to" in joined.logs():
                break
            time.sleep(1)
        else:
            logs = {name: c.logs()[-3000:] for name, c in containers.items()}
            pytest.fail(f"the replayed worker never joined the replayed scheduler over the run's TLS: {logs}")
        for name in ("dask-scheduler", "dask-worker"):
            installed = containers[name].exec_run(["cat", "/dev/shm/flowrig-tls/ca.crt"])
            assert installed.exit_code == 0, installed.output
            assert fingerprint(installed.output) == first, name
    finally:
        for process in background:
            process.terminate()
        for process in background:
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                process.kill()
        for container in _on_network(docker_client, network):
            container.remove(force=True)
        for net in docker_client.networks.list(names=[network]):
            net.remove()
    shutil.rmtree(worker["secrets"], ignore_errors=True)
