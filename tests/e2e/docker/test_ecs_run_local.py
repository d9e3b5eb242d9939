"""``flowrig ecs run-local``: the run plan as data (no Docker), then real containers.

The last test replays what a ``fargate`` run sent to ECS (moto records it): the
registered task definitions, the workers' RunTask overrides and the run's certificate
secret (as a file) become containers of the image on a Docker network of the test's
own, and the seed flow runs on them over mutual TLS with the run's certificates, once
against a Prefect server and once with the runner's own API, which answers a request
without its auth string with 401.

Cases that need none of these are in tests/unit/test_ecs_run_local.py.
"""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import time
import uuid

import docker.errors
import pytest
from typer.testing import CliRunner

from flowrig.backends.aws.ecs import defaults as ecs_defaults
from flowrig.backends.aws.ecs import run_local, taskdefs, taskdoc
from flowrig.cli.ecs import app
from flowrig.errors import BadInput
from flowrig.roles import task_name
from tests.docker_support import inspected
from tests.run_support import FLOWRIG
from tests.tls_support import local_scheduler
from tests.unit.test_ecs_run_local import SECRET_ARN, TRAVERSALS, _with, rendered

# --- the plan (pure) -------------------------------------------------------------


@pytest.mark.parametrize(
    "value_from, name",
    [
        (SECRET_ARN, "prefect-api-key"),
        (SECRET_ARN + ":token::", "prefect-api-key"),
        ("arn:aws:ssm:us-east-1:123456789012:parameter/flowrig/prefect-api-key", "prefect-api-key"),
        ("/flowrig/db-password", "db-password"),
        ("plain", "plain"),
        ("arn:aws:secretsmanager:us-east-1:123456789012:secret:team/token", "team/token"),
        # A parameter's path is cut to its last part, so it cannot climb out.
        ("arn:aws:ssm:us-east-1:123456789012:parameter/../../etc/passwd", "passwd"),
    ],
)
def test_secret_file_names(value_from, name):
    assert taskdoc.secret_file_name(value_from) == name


@pytest.mark.parametrize("value_from", TRAVERSALS[:2])
def test_run_local_traversal_exits_2_with_one_line_before_docker(tmp_path, value_from):
    (tmp_path / "secrets").mkdir()
    path = tmp_path / "runner.json"
    path.write_text(taskdefs.to_json(rendered("runner", secrets={"X": value_from})))
    env = {**os.environ, "DOCKER_HOST": "unix:///nonexistent/docker.sock"}  # no engine may be asked
    done = subprocess.run([*FLOWRIG, "ecs", "run-local", str(path), "--secrets-dir", str(tmp_path / "secrets")],
                          capture_output=True, text=True, cwd=tmp_path, timeout=60, env=env)
    assert done.returncode == 2, done.stderr
    [line] = done.stderr.strip().splitlines()
    assert "not a file inside --secrets-dir" in line and value_from in line


def test_print_plan_shows_the_containers_as_json(tmp_path):
    path = tmp_path / "worker.json"
    path.write_text(taskdefs.to_json(rendered("worker")))
    overrides = json.dumps({"containerOverrides": [{"name": "dask-worker", "command": ["dask-worker", "tls://s:8786"]}]})
    result = CliRunner().invoke(app, ["run-local", str(path), "--overrides", overrides, "--network", "n1", "--print-plan"])
    assert result.exit_code == 0, result.output
    [plan] = json.loads(result.stdout)
    assert plan["command"] == ["dask-worker", "tls://s:8786"]
    assert plan["network"] == "n1" and plan["container"] == "dask-worker"


@pytest.mark.parametrize(
    "args, words",
    [
        (["missing.json"], "cannot read missing.json"),
        (["{not json"], "is not valid JSON"),
        (['{"family": "f"}'], "no containerDefinitions"),
        (["TASKDEF", "--overrides", "[1]"], "--overrides must be a JSON object"),
    ],
)
def test_run_local_bad_input_exits_2_with_one_line(tmp_path, args, words):
    path = tmp_path / "worker.json"
    path.write_text(taskdefs.to_json(rendered("worker")))
    args = [str(path) if a == "TASKDEF" else a for a in args]
    done = subprocess.run([*FLOWRIG, "ecs", "run-local", *args], capture_output=True, text=True, cwd=tmp_path, timeout=60)
    assert done.returncode == 2, done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and words in done.stderr


# --- real containers ---------------------------------------------------------------
#: Run inside a runner container: every TCP port listening there (the run's API is
#: the only one) asked without credentials; prints ``{port: status}`` once one answers.
ANONYMOUS_PROBE = """
import json, socket, ssl, time, urllib.error, urllib.request
# One process that polls, rather than one exec per try: the embedded API lives only as
# long as the flow run, and starting a Python per try can miss that window on a busy host.
host = socket.gethostbyname(socket.gethostname())
unverified = ssl._create_unverified_context()
found = {}
deadline = time.monotonic() + 240
while not found and time.monotonic() < deadline:
    ports = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            rows = open(table).read().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            fields = row.split()
            if fields[3] == "0A":
                ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    for port in sorted(ports):
        for scheme in ("http", "https"):
            request = urllib.request.Request(f"{scheme}://{host}:{port}/api/flow_runs/filter", data=b"{}",
                                             headers={"Content-Type": "application/json"}, method="POST")
            try:
                status = urllib.request.urlopen(request, timeout=3, context=unverified).status
            except urllib.error.HTTPError as exc:
                status = exc.code
            except Exception:
                continue
            # A 404 is some other listener, not a Prefect API.
            if status != 404:
                found[port] = status
            break
    time.sleep(0.05)
if found:
    print(json.dumps(found))
"""

def containers_of(client, network=None):
    """The run's containers now (a runner that just ended is left out)."""
    found = inspected(client, {"label": run_local.LABEL_RUN})
    if network:
        found = [c for c in found if network in c.attrs["NetworkSettings"]["Networks"]]
    return found


@pytest.mark.docker
def test_run_local_runs_streams_reads_secrets_and_cleans_up(docker_client, seed_image, tmp_path):
    network = f"flowrig-test-{uuid.uuid4().hex[:8]}"
    definition = rendered("runner", image=seed_image, environment={"GREETING": "hello"},
                          secrets={"TOKEN": "arn:aws:ssm:us-east-1:123456789012:parameter/ci/token"})
    (tmp_path / "token").write_text("tok-123\n")
    script = 'echo "$GREETING $TOKEN"; [ "$(cat /proc/1/comm)" = docker-init ] && echo init-ok; exit 7'
    overrides = {"containerOverrides": [{"name": "flowrig-runner", "command": ["sh", "-c", script]}]}
    plans = run_local.plan_run(definition, taskdoc.load_overrides(overrides), run_id=uuid.uuid4().hex[:8],
                               network=network)
    # The image's entry point runs anything that is not a flowrig role as given.
    out = io.StringIO()
    try:
        code = run_local.run(plans, secrets_dir=tmp_path, out=out, client=docker_client)
        assert code == 7
        lines = out.getvalue().splitlines()
        assert "flowrig-runner | hello tok-123" in lines
        assert "flowrig-runner | init-ok" in lines
        assert containers_of(docker_client, network=network) == []
    finally:
        for container in containers_of(docker_client, network=network):
            container.remove(force=True)
        for net in docker_client.networks.list(names=[network]):
            net.remove()


@pytest.mark.docker
@pytest.mark.aws
# Two cluster objects (the stand-in and the fargate one) watch the same scheduler.
@pytest.mark.filterwarnings("ignore:Scheduler already contains a plugin")
def test_replaying_a_fargate_run_locally_gives_a_working_tls_cluster(aws, bootstrapped, docker_client, seed_image, tmp_path):
    import boto3

    from flowrig.backends.aws.ecs import FargateBackend
    from flowrig.backends.base import ClusterSpec
    from flowrig.certs.material import TLSMaterial
    from flowrig.project.sizing import ClusterSize

    # 1. A fargate run against moto. Its client needs some real scheduler to connect to:
    #    one on loopback, with the run's certificates, which the run also puts in its
    #    secret for the containers (the image's baked ones are not used).
    host_tls = TLSMaterial.ephemeral()
    stand_in = local_scheduler(host_tls, workers=1)
    run_id = uuid.uuid4().hex[:8]
    # What the runner hands its workers when PREFECT_API_URL names a Prefect server.
    api_url = "http://prefect-server:4200/api"
    worker_env = {"FLOWRIG_RUN_ID": run_id, "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "PREFECT_API_URL": api_url}
    with stand_in:
        started = FargateBackend().start(ClusterSpec(
            run_id=run_id, size=ClusterSize(2), tls=host_tls, image=seed_image, worker_env=worker_env,
            # No preflight: the image is local, never pushed to (moto's) ECR, which it would refuse.
            options={"scheduler_address": stand_in.scheduler_address, "worker_cpu": 1024, "worker_mem": 2048,
                     "create_roles": True, "preflight": False},
        ))
        ecs = boto3.client("ecs")
        described = {
            role: ecs.describe_task_definition(taskDefinition=f"flowrig-{run_id}-{role}")
            for role in ("scheduler", "worker")
        }
        worker_requests = [r["body"] for r in aws.requests("RunTask")]
        # What ECS would read with the execution role: the run's secret, as a file.
        [tls_secret] = described["worker"]["taskDefinition"]["containerDefinitions"][0]["secrets"]
        secret_arn = tls_secret["valueFrom"]
        secrets_dir = tmp_path / "secrets"
        secret_file = secrets_dir / taskdoc.secret_file_name(secret_arn)
        secret_file.parent.mkdir(parents=True)
        secret_file.write_text(boto3.client("secretsmanager").get_secret_value(SecretId=secret_arn)["SecretString"])
        started.close()
    # Both workers in one RunTask call (ECS starts up to ten per call).
    [worker_request] = worker_requests
    assert worker_request["count"] == 2
    with pytest.raises(Exception, match="ResourceNotFound"):
        boto3.client("secretsmanager").get_secret_value(SecretId=secret_arn)

    # 2. The same definitions and overrides as containers. ECS would have put the
    #    scheduler task's own address in the worker command; here that is its alias.
    network = f"flowrig-replay-{run_id}"
    for role, document in described.items():
        (tmp_path / f"{role}.json").write_text(json.dumps(document, default=str))
    (tmp_path / "scheduler-overrides.json").write_text(json.dumps({"containerOverrides": []}))
    for index in range(worker_request["count"]):
        request = json.loads(json.dumps(worker_request))
        override = request["overrides"]["containerOverrides"][0]
        assert "environment" not in override
        assert override["command"][1] == stand_in.scheduler_address
        override["command"][1] = "tls://dask-scheduler:8786"
        # ECS's metadata endpoint names each task of the call; here the test does.
        command = override["command"]
        command[command.index(task_name.FROM_ECS_TASK)] = f"replayed-{index}"
        (tmp_path / f"worker-{index}-overrides.json").write_text(json.dumps(request))
    # The runner task gets the run's certificates the same way.
    runner_definition = rendered("runner", image=seed_image, environment={"FLOWRIG_TLS_FROM": "secret"},
                                 secrets={"FLOWRIG_TLS_SECRET": secret_arn})
    (tmp_path / "runner.json").write_text(taskdefs.to_json(runner_definition))
    ten = "x=[0,1,2,3,4,5,6,7,8,9]"
    runner_overrides = {"containerOverrides": [{
        "name": "flowrig-runner",
        "command": ["run", "--scheduler-address", "tls://dask-scheduler:8786", "--param", ten, "--output", "json"],
        "environment": [{"name": "PREFECT_API_URL", "value": api_url}],
    }]}

    def run_local_cli(definition: str, overrides: str) -> list[str]:
        return [*FLOWRIG, "ecs", "run-local", str(tmp_path / definition), "--overrides", overrides,
                "--network", network, "--secrets-dir", str(secrets_dir)]

    docker_client.networks.create(network, driver="bridge", labels={run_local.LABEL_RUN: run_id})
    background = []
    try:
        # The run's Prefect API: a Prefect server from the same image, as a deployment
        # on ECS would point PREFECT_API_URL at one.
        server = docker_client.containers.run(
            seed_image, ["prefect", "server", "start", "--host", "0.0.0.0", "--port", "4200"],
            name=f"prefect-server-{run_id}", hostname="prefect-server", detach=True,
            labels={run_local.LABEL_RUN: run_id, run_local.LABEL_CONTAINER: "prefect-server"},
            environment={"PREFECT_SERVER_ANALYTICS_ENABLED": "false", "PREFECT_UI_ENABLED": "false"},
            network=network,
        )
        background.append(subprocess.Popen(
            run_local_cli("scheduler.json", str(tmp_path / "scheduler-overrides.json")),
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
        for index in range(2):
            background.append(subprocess.Popen(
                run_local_cli("worker.json", str(tmp_path / f"worker-{index}-overrides.json")),
                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
        health = "import urllib.request as u; u.urlopen('http://127.0.0.1:4200/api/health', timeout=2)"
        deadline = time.monotonic() + 180
        while server.exec_run(["python", "-c", health]).exit_code != 0:
            assert time.monotonic() < deadline, server.logs()[-2000:]
            time.sleep(2)
        runner = subprocess.run(
            run_local_cli("runner.json", json.dumps(runner_overrides)), capture_output=True, text=True, timeout=400)
        assert runner.returncode == 0, runner.stdout[-4000:] + runner.stderr[-2000:]
        # The container's stdout and stderr reach the log separately, so stderr lines may
        # come after the outcome: the outcome is its last JSON line.
        last = [line for line in runner.stdout.splitlines() if line.startswith("flowrig-runner | {")][-1]
        outcome = json.loads(last.split(" | ", 1)[1])
        assert (outcome["state"], outcome["result"]) == ("Completed", 90)
        assert outcome["scheduler_address"] == "tls://dask-scheduler:8786"

        # Once more with the run's own embedded API, as a runner task without
        # PREFECT_API_URL has it: asked without its auth string, it answers 401.
        own_api = {"containerOverrides": [{"name": "flowrig-runner", "command": runner_overrides[
            "containerOverrides"][0]["command"]}]}
        second = subprocess.Popen(run_local_cli("runner.json", json.dumps(own_api)),
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        statuses: dict = {}
        deadline = time.monotonic() + 300
        while second.poll() is None and not statuses and time.monotonic() < deadline:
            for container in containers_of(docker_client, network=network):
                if container.labels.get(run_local.LABEL_CONTAINER) != "flowrig-runner":
                    continue
                try:
                    probe = container.exec_run(["python", "-c", ANONYMOUS_PROBE])
                except docker.errors.APIError:  # it ended meanwhile: look again
                    continue
                if probe.exit_code == 0 and probe.output.strip():
                    statuses = json.loads(probe.output.decode().strip().splitlines()[-1])
            time.sleep(0.3)
        out, err = second.communicate(timeout=300)
        assert second.returncode == 0, out[-4000:] + err[-2000:]
        last = [line for line in out.splitlines() if line.startswith("flowrig-runner | {")][-1]
        outcome = json.loads(last.split(" | ", 1)[1])
        assert (outcome["state"], outcome["result"]) == ("Completed", 90)
        assert statuses and set(statuses.values()) == {401}, statuses

        # The task definitions' health checks, run where ECS would run them.
        by_container = {c.labels[run_local.LABEL_CONTAINER]: c for c in containers_of(docker_client, network=network)}
        assert sorted(by_container) == ["dask-scheduler", "dask-worker", "prefect-server"]
        scheduler_check = described["scheduler"]["taskDefinition"]["containerDefinitions"][0]["healthCheck"]["command"][1:]
        worker_check = described["worker"]["taskDefinition"]["containerDefinitions"][0]["healthCheck"]["command"][1:]
        assert by_container["dask-scheduler"].exec_run(scheduler_check).exit_code == 0
        assert by_container["dask-worker"].exec_run(worker_check).exit_code == 0
        # ... and they fail where the process they look for is not running.
        assert by_container["dask-scheduler"].exec_run(worker_check).exit_code == 1
        assert by_container["dask-worker"].exec_run(scheduler_check).exit_code == 1
    finally:
        # SIGTERM unwinds run-local like Ctrl-C: it removes its containers.
        for process in background:
            process.send_signal(signal.SIGTERM)
        for process in background:
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        docker_client.containers.get(f"prefect-server-{run_id}").remove(force=True)
        leftovers = containers_of(docker_client, network=network)
        for container in leftovers:
            container.remove(force=True)
        for net in docker_client.networks.list(names=[network]):
            net.remove()
    logs = [process.stdout.read() for process in background]
    assert leftovers == [], logs
    assert [process.returncode for process in background] == [128 + signal.SIGTERM] * 3
    # Each replayed container logged under its ECS container name.
    assert "dask-scheduler | " in logs[0] and "dask-worker | " in logs[1]


def _probe_definitions(image: str, family: str) -> tuple[dict, dict]:
    """A task whose container answers to ``dask-scheduler``, and one that looks for it."""
    server = {"family": f"{family}-server", "containerDefinitions": [{
        "name": "dask-scheduler", "image": image, "entryPoint": ["sh", "-c"], "command": ["sleep 60"]}]}
    look = ("for i in $(seq 10); do getent hosts dask-scheduler && echo FOUND && exit 0; sleep 0.5; done; "
            "echo ALONE; exit 1")
    probe = {"family": f"{family}-probe", "containerDefinitions": [{
        "name": "probe", "image": image, "entryPoint": ["sh", "-c"], "command": [look]}]}
    return server, probe


@pytest.mark.docker
@pytest.mark.parametrize("shared", [False, True])
def test_two_invocations_at_once_meet_only_on_a_network_they_name(docker_client, tmp_path, shared):
    from tests.docker_support import test_base_image

    family = f"meet-{uuid.uuid4().hex[:8]}"
    server, probe = _probe_definitions(test_base_image(), family)
    (tmp_path / "server.json").write_text(json.dumps(server))
    (tmp_path / "probe.json").write_text(json.dumps(probe))
    named = [] if not shared else ["--network", f"flowrig-test-{family}"]
    background = subprocess.Popen([*FLOWRIG, "ecs", "run-local", str(tmp_path / "server.json"), *named],
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 60
        while not [c for c in docker_client.containers.list(filters={"label": f"{run_local.LABEL_FAMILY}={family}-server"})
                   if c.status == "running"]:
            assert background.poll() is None and time.monotonic() < deadline, background.stdout.read()
            time.sleep(0.3)
        [running] = docker_client.containers.list(filters={"label": f"{run_local.LABEL_FAMILY}={family}-server"})
        [server_network] = running.attrs["NetworkSettings"]["Networks"]
        done = subprocess.run([*FLOWRIG, "ecs", "run-local", str(tmp_path / "probe.json"), *named],
                              capture_output=True, text=True, timeout=120)
    finally:
        background.send_signal(signal.SIGTERM)
        background.wait(timeout=60)
        for net in docker_client.networks.list(names=[f"flowrig-test-{family}"]):
            net.remove()
    if shared:
        assert done.returncode == 0 and "probe | FOUND" in done.stdout, done.stdout + done.stderr
    else:
        assert done.returncode == 1 and "probe | ALONE" in done.stdout, done.stdout + done.stderr
        assert server_network.startswith(f"{ecs_defaults.RUN_LOCAL_NETWORK}-")
        # The invocation's own network went with it.
        assert docker_client.networks.list(names=[server_network]) == []
    assert docker_client.containers.list(all=True, filters={"label": f"{run_local.LABEL_FAMILY}={family}-server"}) == []


# --- malformed input: one line, exit 2, before Docker is asked anything ---------------------


MALFORMED = [
    # (task definition, overrides, words in the one line)
    (_with({"secrets": [{"name": "TOKEN", "valueFrom": "arn:aws:ssm:us-east-1:1:parameter/a\u0000b"}]}), None,
     "NUL byte at containerDefinitions[0].secrets[0].valueFrom"),
    (_with({"environment": [{"name": "A", "value": "x\u0000y"}]}), None, "NUL byte at containerDefinitions[0]"),
    (_with(), {"containerOverrides": [{"name": "flowrig-runner", "command": ["a\u0000"]}]},
     "the task overrides holds a NUL byte"),
    (_with({"memory": "abc"}), None, "containerDefinitions[0].memory = 'abc'"),
    (_with(memory="lots"), None, "memory 'lots' is not a size ECS takes"),
    (_with({"command": "run"}), None, "containerDefinitions[0].command = 'run'"),
    (_with({"entryPoint": "sh"}), None, "containerDefinitions[0].entryPoint = 'sh'"),
    (_with({"environment": [{"value": "x"}]}), None, "containerDefinitions[0].environment[0].name"),
    (_with({"environment": {"A": "b"}}), None, "containerDefinitions[0].environment"),
    (_with({"environment": [{"name": "A=B", "value": "x"}]}), None, "'A=B' is not a valid environment variable"),
    (_with({"secrets": [{"name": "X"}]}), None, "containerDefinitions[0].secrets[0].valueFrom"),
    (_with({"secrets": [{"name": "BAD NAME", "valueFrom": "/a/b"}]}), None, "'BAD NAME' is not a valid"),
    (_with({"linuxParameters": "yes"}), None, "containerDefinitions[0].linuxParameters"),
    (_with({"essential": "yes"}), None, "containerDefinitions[0].essential"),
    (_with({"user": 0}), None, "containerDefinitions[0].user = 0"),
    (_with({"user": "0"}), None, "would run as '0', which is root"),
    (_with({"user": "root:root"}), None, "would run as 'root:root', which is root"),
    (_with({"user": "0:1000"}), None, "which is root"),
    (_with({"user": "a b"}), None, "user 'a b' is not a user"),
    (_with({"name": "../x"}), None, "'../x' is not an ECS container name"),
    (_with({"name": 5}), None, "containerDefinitions[0].name = 5"),
    (_with({"image": "a b"}), None, "'a b' is not an image name"),
    (_with({"workingDirectory": ["/"]}), None, "containerDefinitions[0].workingDirectory"),
    ({"taskDefinition": "x"}, None, "taskDefinition must be a JSON object"),
    ({"containerDefinitions": [rendered("runner")["containerDefinitions"][0]] * 2}, None, "names a container twice"),
    (_with(), {"containerOverrides": [{"name": "flowrig-runner", "environment": [{"value": "x"}]}]},
     "is not a valid environment variable name"),
    (_with(), {"overrides": "x"}, "overrides must be a JSON object"),
]


@pytest.mark.parametrize("definition, overrides, words", MALFORMED, ids=[str(i) for i in range(len(MALFORMED))])
def test_every_malformed_input_is_one_line_exit_2_before_docker(tmp_path, definition, overrides, words):
    path = tmp_path / "task.json"
    path.write_text(json.dumps(definition))
    args = [str(path)] + (["--overrides", json.dumps(overrides)] if overrides is not None else [])
    env = {**os.environ, "DOCKER_HOST": "unix:///nonexistent/docker.sock"}  # no engine may be asked
    done = subprocess.run([*FLOWRIG, "ecs", "run-local", *args, "--secrets-dir", str(tmp_path)],
                          capture_output=True, text=True, cwd=tmp_path, timeout=60, env=env)
    assert done.returncode == 2, done.stderr
    [line] = done.stderr.strip().splitlines()
    assert line.startswith("flowrig: error: ") and words in line, line
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize(
    "content, words",
    [(b"\xff\xfe binary", "is not UTF-8 text"), (b"a\x00b\n", "holds a NUL byte, which no environment variable can")],
)
def test_a_secret_file_an_environment_cannot_hold_is_one_line_exit_2(tmp_path, content, words):
    (tmp_path / "token").write_bytes(content)
    path = tmp_path / "task.json"
    path.write_text(json.dumps(_with({"secrets": [{"name": "TOKEN", "valueFrom": "/ci/token"}]})))
    env = {**os.environ, "DOCKER_HOST": "unix:///nonexistent/docker.sock"}
    done = subprocess.run([*FLOWRIG, "ecs", "run-local", str(path), "--secrets-dir", str(tmp_path)],
                          capture_output=True, text=True, cwd=tmp_path, timeout=60, env=env)
    assert done.returncode == 2, done.stderr
    [line] = done.stderr.strip().splitlines()
    assert words in line and "TOKEN" in line


def test_a_document_nested_past_the_json_parsers_depth_is_one_line_exit_2(tmp_path):
    path = tmp_path / "deep.json"
    path.write_text("[" * 100000 + "]" * 100000)
    done = subprocess.run([*FLOWRIG, "ecs", "run-local", str(path)], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "DOCKER_HOST": "unix:///nonexistent/docker.sock"})
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip().splitlines() == [
        "flowrig: error: the task definition is nested too deeply to be a task definition or overrides"]


def test_a_network_name_docker_cannot_take_is_bad_input():
    with pytest.raises(BadInput, match="is not a Docker network name"):
        run_local.plan_run(rendered("runner"), run_id="r1", network="no spaces")


# --- hardening and users (the plan; then real containers) ------------------------------------
def test_every_container_gets_the_docker_backends_hardening():
    from flowrig.backends.docker.plans import hardening

    [task] = run_local.plan_run(rendered("runner"), run_id="r2")
    plan = run_local.container_plan(task, {}, "net")
    docker_backend = hardening("worker")
    assert plan.read_only is True and plan.read_only == docker_backend["read_only"]
    assert plan.cap_drop == ("ALL",) and plan.security_opt == ("no-new-privileges:true",)
    assert dict(plan.tmpfs) == docker_backend["tmpfs"] and "noexec" in plan.tmpfs["/tmp"]
    assert plan.pids_limit == 1024
    assert plan.environment["PREFECT_HOME"] == "/tmp/prefect"
    assert plan.stdin_open is False


@pytest.mark.docker
def test_run_local_containers_are_hardened_and_never_root(docker_client, seed_image, tmp_path):
    from tests.docker_support import test_base_image

    probe = ("id -u; grep -E '^(CapEff|NoNewPrivs)' /proc/self/status; "
             "touch /etc/probe 2>/dev/null && echo root-writable || echo root-read-only; "
             "cp /bin/true /tmp/t && (/tmp/t 2>/dev/null && echo tmp-exec || echo tmp-noexec); "
             "cat /sys/fs/cgroup/pids/pids.max /sys/fs/cgroup/pids.max 2>/dev/null; exit 0")
    definition = {"family": "harden", "containerDefinitions": [
        # The flowrig image runs as its own user; the base image would run as root.
        {"name": "seed", "image": seed_image, "entryPoint": ["sh", "-c"], "command": [probe], "essential": False},
        {"name": "base", "image": test_base_image(), "entryPoint": ["sh", "-c"], "command": ["sleep 2; " + probe]},
    ]}
    plans = run_local.plan_run(taskdoc.load_task_definition(definition), run_id=uuid.uuid4().hex[:8])
    out, err = io.StringIO(), io.StringIO()
    assert run_local.run(plans, out=out, err=err, client=docker_client) == 0
    lines = out.getvalue().splitlines()
    for name, uid in (("seed", "10001"), ("base", "65534")):
        seen = [line.split(" | ", 1)[1].strip() for line in lines if line.startswith(f"{name} | ")]
        assert seen[0] == uid, lines
        assert "CapEff:\t0000000000000000" in seen and "NoNewPrivs:\t1" in seen, seen
        assert "root-read-only" in seen and "tmp-noexec" in seen and "1024" in seen, seen
    assert err.getvalue().strip() == (
        f"flowrig: container base: image {test_base_image()} runs as root, so run-local runs it as 65534:65534 "
        "(nobody); set 'user' in the task definition to choose another non-root user")
    assert containers_of(docker_client) == [] or all(
        c.labels.get(run_local.LABEL_FAMILY) != "harden" for c in containers_of(docker_client))


@pytest.mark.docker
def test_a_user_name_the_image_maps_to_root_is_refused_and_nothing_is_left(docker_client, tmp_path):
    from tests.docker_support import test_base_image

    tag = f"flowrig-test-rootalias:{uuid.uuid4().hex[:8]}"
    (tmp_path / "Dockerfile").write_text(
        f"FROM {test_base_image()}\nRUN echo 'admin:x:0:0:admin:/root:/bin/sh' >> /etc/passwd\n")
    subprocess.run(["docker", "build", "-q", "-t", tag, str(tmp_path)], check=True, capture_output=True, timeout=300)
    try:
        definition = {"family": "rootalias", "containerDefinitions": [
            {"name": "probe", "image": tag, "user": "admin", "command": ["sh", "-c", "echo ran"]}]}
        path = tmp_path / "task.json"
        path.write_text(json.dumps(definition))
        done = subprocess.run([*FLOWRIG, "ecs", "run-local", str(path)], capture_output=True, text=True, timeout=120)
        assert done.returncode == 2, done.stderr
        [line] = done.stderr.strip().splitlines()
        assert "would run as 'admin', which image" in line and "maps to uid 0 (root)" in line
        assert "ran" not in done.stdout
        assert [c for c in containers_of(docker_client) if c.labels.get(run_local.LABEL_FAMILY) == "rootalias"] == []
    finally:
        docker_client.images.remove(tag, force=True)
