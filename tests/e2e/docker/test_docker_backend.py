"""The ``docker`` backend: rendering (no Docker), then real containers of the seed image.

Docker tests put every container on a network they made themselves, reach a container
from the host only through a port published on 127.0.0.1, and label everything with a
run id, so each test removes exactly what it made.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from pathlib import Path

import pytest

from flowrig import containers
from flowrig import errors as dk_errors
from flowrig.backends import docker as dk
from flowrig.backends.docker.leftovers import group_by_run, render_text
from flowrig.cli.docker import app as docker_app
from flowrig.containers import engine
from flowrig.errors import BadInput
from flowrig.project import defaults as project_defaults
from flowrig.run import in_container
from tests.docker_support import derived_image, docker_run_env, listed
from tests.run_support import FLOWRIG_SCRIPT

REPO = Path(__file__).resolve().parents[3]
SEED = REPO / "examples" / "seed"
TEN = "x=[0,1,2,3,4,5,6,7,8,9]"

#: A project for derived images: a task that naps, then fails for negative x.
PROBE_FLOW = """
    import time
    from prefect import flow, task

    @task
    def step(x: int, nap: float) -> int:
        time.sleep(nap)
        if x < 0:
            raise ValueError(f"cannot handle {x}")
        return x * 2

    @flow
    def main(x: int = 1, nap: float = 0.0) -> int:
        return step.submit(x, nap).result()
"""


# --- rendering and pure helpers (no Docker) ----------------------------------------


HARDENED = {
    "stdin_open": True, "read_only": True, "cap_drop": ("ALL",), "security_opt": ("no-new-privileges:true",),
}


def _assert_hardened(plan):
    for field, value in HARDENED.items():
        assert getattr(plan, field) == value, field
    assert plan.tmpfs == {"/tmp": "rw,nosuid,nodev,noexec"} and plan.pids_limit > 0
    assert plan.binds == {} and plan.group_add == ()
    assert plan.environment["FLOWRIG_TLS_FROM"] == "stdin" and "FLOWRIG_TLS_DIR" not in plan.environment


def test_runner_plan_holds_no_socket_no_parameters_and_no_credentials():
    environ = {
        "PREFECT_API_URL": "http://prefect.example:4200/api", "PREFECT_API_KEY": "pnu_secret",
        "AWS_SECRET_ACCESS_KEY": "x", "HOME": "/root",
    }
    plan = dk.render_runner("r1", "img:1", output="json", environ=environ)
    assert plan.name == "flowrig-r1-runner"
    assert plan.network == "flowrig-r1"
    assert plan.command == ("run", "--backend", "docker", "--output", "json")
    assert plan.labels == {"flowrig.run-id": "r1", "flowrig.role": "runner"}
    _assert_hardened(plan)
    env = plan.environment
    assert env["FLOWRIG_DOCKER_CONTROL"] == "claimed-stdout-hmac"
    assert env["FLOWRIG_DOCKER_NETWORK"] == "flowrig-r1"
    assert env["FLOWRIG_RUNNER_HOST"] == "flowrig-r1-runner"
    assert env["FLOWRIG_IMAGE"] == "img:1"
    assert env["FLOWRIG_RUN_ID"] == "r1"
    assert env["PREFECT_API_URL"] == "http://prefect.example:4200/api"
    # Parameters and credentials travel over stdin; nothing else crosses from the host.
    assert "FLOWRIG_PARAMETERS" not in env and "PREFECT_API_KEY" not in env
    assert "AWS_SECRET_ACCESS_KEY" not in env and "HOME" not in env


def test_the_runner_gets_the_strictness_the_host_decided_on_its_command_line():
    base = ("run", "--backend", "docker", "--output", "text")
    assert dk.render_runner("r1", "img", output="text", environ={}, strict=True).command == (*base, "--strict")
    assert dk.render_runner("r1", "img", output="text", environ={}, strict=False).command == (*base, "--no-strict")
    # Not decided on the host: the image's project decides, whatever the host's environment says.
    plan = dk.render_runner("r1", "img", output="text", environ={"FLOWRIG_STRICT": "1"}, strict=None)
    assert plan.command == base and "FLOWRIG_STRICT" not in plan.environment


def test_only_a_backend_that_asks_for_it_runs_its_runner_in_a_container():
    from flowrig.backends import BACKENDS, get_backend

    assert {name for name in BACKENDS if get_backend(name).runner_in_container} == {"docker"}


def test_scheduler_and_worker_plans():
    sched = dk.render_scheduler("r2", "img", "net")
    assert sched.name == "flowrig-r2-scheduler"
    assert sched.aliases == ("scheduler",)
    assert sched.command[0] == "scheduler" and "--dashboard-address" in sched.command
    # The dashboard answers the run's certificate only, on the host's 127.0.0.1.
    assert ("--preload", "flowrig.roles.private_http") in zip(sched.command, sched.command[1:])
    assert sched.publish == (8787,)
    assert dk.render_scheduler("r2", "img", "net", publish=True).publish == (8786, 8787)
    _assert_hardened(sched)
    worker = dk.render_worker("r2", "img", "net", 3, threads=2, environment={"A": "1"}, memory="1g")
    assert worker.name == "flowrig-r2-worker-3"
    assert worker.command == (
        "worker", "tls://flowrig-r2-scheduler:8786", "--name", "3", "--nthreads", "2", "--no-dashboard",
        # Its HTTP server (/metrics, /health) on the container's own loopback only.
        "--dashboard-address", "127.0.0.1:0",
        "--memory-limit", "1GiB", "--preload", "prefect.task_engine", "--preload", "prefect_dask",
    )
    assert [dk.plans.dask_memory_limit(m) for m in ("400m", "2G", "512kb", 1048576, "1.5g")] == [
        "400MiB", "2GiB", "512KiB", "1048576B", "1.5GiB"
    ]
    bare = dk.render_worker("r2", "img", "net", 0, preload=())
    assert bare.command[-5:] == (
        "--nthreads", str(project_defaults.WORKER_THREADS), "--no-dashboard", "--dashboard-address", "127.0.0.1:0",
    )
    assert worker.labels["flowrig.role"] == "worker"
    assert worker.environment["A"] == "1"
    assert worker.memory == "1g" and worker.publish == ()
    _assert_hardened(worker)


def test_control_failures_come_back_as_the_error_they_were_on_the_host():
    from flowrig.backends.docker import control

    with pytest.raises(BadInput, match="bad options"):
        control.raise_failure({"op": "failed", "kind": "bad_input", "message": "bad options"})
    with pytest.raises(dk_errors.InfrastructureError, match="no engine"):
        control.raise_failure({"op": "failed", "kind": "infrastructure", "message": "no engine"})


def test_the_log_pump_runs_the_runners_stdout_through_its_filter_to_the_end():
    import io

    from flowrig.backends.docker import control

    key = control.new_key()
    message = control.sign(key, "close", 1)
    taken = []

    class Container:  # what the pump reads: a stream of chunks
        def logs(self, **_kwargs):
            return iter([b"one\ntw", b"o\n" + message + b"50% done" + message.rstrip(b"\n")])

    out = io.BytesIO()
    target = io.TextIOWrapper(out, encoding="utf-8")
    demux = control.Demux(lambda payload: taken.append(control.open_message(key, payload)["op"]))
    containers.engine.LogPump()._copy(Container(), "runner", target, True, False, demux)
    target.flush()
    assert out.getvalue() == b"one\ntwo\n50% done"
    assert taken == ["close", "close"]


def test_leftovers_are_grouped_by_run():
    owner = '{"boot":1,"host":"h","pid":7,"started":1.0}'
    containers = [
        {"Names": ["/flowrig-b-worker-0"], "Labels": {"flowrig.run-id": "b", "flowrig.role": "worker"}, "State": "exited"},
        {"Names": ["/flowrig-a-runner"], "Labels": {"flowrig.run-id": "a", "flowrig.role": "runner"}, "State": "running"},
        {"Names": ["/flowrig-b-scheduler"], "Labels": {"flowrig.run-id": "b", "flowrig.role": "scheduler", "flowrig.owner": owner},
         "State": "running"},
        {"Names": ["/unrelated"], "Labels": {}, "State": "running"},
    ]
    networks = [{"Name": "flowrig-b", "Labels": {"flowrig.run-id": "b", "flowrig.role": "network"}}, {"Name": "x", "Labels": None}]
    runs = group_by_run(containers, networks)
    assert [r.run_id for r in runs] == ["a", "b"]
    assert runs[1].containers == [("flowrig-b-scheduler", "scheduler", "running"), ("flowrig-b-worker-0", "worker", "exited")]
    assert runs[1].networks == ["flowrig-b"]
    assert runs[1].owners == [owner] and runs[0].owners == []
    assert runs[0].networks == []
    text = render_text(runs)
    assert "run b:" in text and "container flowrig-b-worker-0 (worker, exited)" in text and "network flowrig-b" in text
    assert render_text([]) == "no leftovers of docker-backend runs"


def test_options_and_run_ids_are_checked():
    with pytest.raises(BadInput, match="n_workers not known to the docker backend"):
        dk._check_options({"n_workers": 3})
    with pytest.raises(BadInput, match="start_timeout"):
        dk._check_options({"start_timeout": 0})
    with pytest.raises(BadInput, match="environment must be a table"):
        dk._check_options({"environment": "A=1"})
    assert dk._check_options({"worker_memory": "2g", "environment": {"A": 1}})["environment"] == {"A": "1"}
    with pytest.raises(BadInput, match="cannot name Docker containers"):
        dk.check_run_id("bad id/with slash")
    assert dk.check_run_id("abc-123.x_y") == "abc-123.x_y"


def test_prefect_api_listens_on_the_run_network_only_in_a_runner_container(monkeypatch):
    backend = dk.DockerBackend()
    monkeypatch.delenv("FLOWRIG_DOCKER_NETWORK", raising=False)
    assert backend.prefect_api_hosts() == ("127.0.0.1", "127.0.0.1")
    monkeypatch.setenv("FLOWRIG_DOCKER_NETWORK", "flowrig-r3")
    monkeypatch.setenv("FLOWRIG_RUNNER_HOST", "flowrig-r3-runner")
    assert backend.prefect_api_hosts() == ("0.0.0.0", "flowrig-r3-runner")


def test_log_tail_folds_the_last_lines():
    assert engine.log_tail("a\n\nb\nc\nd\ne\nf\n") == "b | c | d | e | f"
    assert engine.log_tail("") == "no output"
    assert engine.log_tail("x" * 1000, width=50).startswith("...")


def test_host_side_rejects_bad_input_before_touching_docker(tmp_path, monkeypatch):
    monkeypatch.setenv("DOCKER_HOST", "tcp://127.0.0.1:9")  # would fail as exit 3 if reached
    from flowrig.project import load_project
    from flowrig.run.launch import RunInputs

    seed = load_project(SEED)
    with pytest.raises(BadInput, match="malformed JSON"):
        in_container.run_in_container(RunInputs(SEED, image="img", params=("x=[1,2",)), seed)
    with pytest.raises(BadInput, match="needs an image"):
        in_container.run_in_container(RunInputs(SEED, params=(TEN,)), seed)
    with pytest.raises(BadInput, match="does not exist"):
        in_container.run_in_container(RunInputs(tmp_path / "missing"), None)


# --- real containers -----------------------------------------------------------------


def _tag() -> str:
    return "t" + uuid.uuid4().hex[:9]


def _launch(client, plan: containers.ContainerPlan):
    container = engine.create_container(client, plan)
    engine.start_container(container)
    return container


def _plan(run_id: str, role: str, image: str, network: str, command, **kwargs) -> containers.ContainerPlan:
    return containers.ContainerPlan(
        name=dk.container_name(run_id, role, kwargs.pop("worker", None)),
        image=image,
        command=tuple(command),
        labels=dk.labels(run_id, role),
        environment=kwargs.pop("environment", {}),
        network=network,
        **kwargs,
    )


def _leftovers(client, run_id: str) -> list[str]:
    label = {"label": f"flowrig.run-id={run_id}"}
    return [*listed(client, label)] + [
        n.name for n in client.networks.list(filters=label)
    ]


def _last_json(text: str) -> dict:
    return json.loads(text.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def roles_network(docker_client, seed_image):
    """A network of the test's own with a Prefect API container that roles share.

    Without a reachable API every worker would start a temporary Prefect server of its
    own; the API runs from the same image, on the database template baked into it.
    """
    run_id = _tag()
    network = dk.network_name(run_id)
    engine.create_network(docker_client, network, run_id)
    serve = textwrap.dedent(
        """
        import time
        from flowrig.api import EmbeddedPrefectAPI
        api = EmbeddedPrefectAPI("0.0.0.0", "prefect", port=4200, auth_string="roles-test-token").start()
        api.wait_ready()
        print("prefect api ready", flush=True)
        time.sleep(3600)
        """
    )
    try:
        api = _launch(docker_client, _plan(run_id, "api", seed_image, network, ["python", "-c", serve], aliases=("prefect",)))
        # The shared API is authenticated: the test's own containers get its token.
        yield {"run_id": run_id, "network": network, "api": api, "api_url": "http://prefect:4200/api",
               "api_env": {"PREFECT_API_URL": "http://prefect:4200/api", "PREFECT_API_AUTH_STRING": "roles-test-token"}}
    finally:
        engine.remove_run(docker_client, run_id)


def _start_cluster(client, image, roles_network, run_id, n_workers, *, alias=None, publish=()):
    network = roles_network["network"]
    scheduler = _launch(
        client,
        _plan(run_id, "scheduler", image, network, ["scheduler"], aliases=(alias,) if alias else (), publish=publish),
    )
    address = f"tls://{alias or scheduler.name}:8786"
    env = dict(roles_network["api_env"])
    workers = [
        _launch(client, _plan(run_id, "worker", image, network, ["worker", address], worker=i, environment=env))
        for i in range(n_workers)
    ]
    return scheduler, workers, address


def _stop_seconds(container) -> tuple[float, int]:
    started = time.monotonic()
    container.stop(timeout=10)
    elapsed = time.monotonic() - started
    container.reload()
    return elapsed, container.attrs["State"]["ExitCode"]


@pytest.mark.docker
def test_docker_stop_ends_every_role_within_3_seconds(docker_client, probe_image, roles_network):
    run_id = _tag()
    try:
        scheduler, (worker,), address = _start_cluster(docker_client, probe_image, roles_network, run_id, 1)
        engine.wait_for_log(roles_network["api"], "prefect api ready", 120, "prefect api")
        runner = _launch(
            docker_client,
            _plan(
                run_id, "runner", probe_image, roles_network["network"],
                ["run", "--scheduler-address", address, "--param", "nap=120"],
                environment=dict(roles_network["api_env"]),
            ),
        )
        # Mid-run: the flow is connected to the cluster and its task naps on the worker.
        engine.wait_for_log(runner, "Beginning flow run", 180, "runner")
        time.sleep(3)
        stops = {}
        for container in (runner, worker, scheduler):
            container.reload()
            assert container.status == "running", engine.container_logs_tail(container)
            stops[container.labels["flowrig.role"]] = _stop_seconds(container)
        # All three measured first, so a failure shows every role's time and exit code.
        assert all(elapsed < 3 and code in (0, 143) for elapsed, code in stops.values()), stops
    finally:
        engine.remove_run(docker_client, run_id, network=False)


@pytest.fixture(scope="module")
def probe_project(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("probe")
    (root / "flow.py").write_text(textwrap.dedent(PROBE_FLOW))
    (root / "flowrig.toml").write_text('flow = "flow.py:main"\n\n[cluster]\nbackend = "docker"\nn_workers = 1\n')
    return root


@pytest.fixture(scope="module")
def probe_image(docker_client, seed_image, probe_project):
    """The seed image with the probe project in place of the seed's (one small layer)."""
    with derived_image(docker_client, seed_image, probe_project, "flowrig-probe") as tag:
        yield tag


@pytest.mark.docker
def test_flowrig_run_docker_gives_90_and_removes_everything(docker_client, seed_image):
    run_id = _tag()
    done = subprocess.run(
        [FLOWRIG_SCRIPT, "run", str(SEED), "--backend", "docker", "--image", seed_image, "--param", TEN, "--output", "json"],
        env=docker_run_env(run_id), capture_output=True, text=True, timeout=300,
    )
    try:
        assert done.returncode == 0, done.stderr[-3000:]
        outcome = _last_json(done.stdout)
        assert outcome["result"] == 90
        assert outcome["state"] == "Completed"
        assert outcome["backend"] == "docker"
        assert outcome["run_id"] == run_id
        assert outcome["n_workers"] == 2
        assert outcome["scheduler_address"] == f"tls://flowrig-{run_id}-scheduler:8786"
        # The host owns the cluster, yet the runner's timeline sees its workers join.
        timings = outcome["timings"]
        assert 0 < timings["first_worker_joined"] <= timings["all_workers_joined"] < timings["flow_finished"]
        assert _leftovers(docker_client, run_id) == []
    finally:
        engine.remove_run(docker_client, run_id)


@pytest.mark.docker
def test_a_failing_flow_exits_1_and_removes_everything(docker_client, probe_image, probe_project):
    run_id = _tag()
    done = subprocess.run(
        [FLOWRIG_SCRIPT, "run", str(probe_project), "--backend", "docker", "--image", probe_image, "--param", "x=-1", "--output", "json"],
        env=docker_run_env(run_id), capture_output=True, text=True, timeout=300,
    )
    try:
        assert done.returncode == 1, done.stderr[-3000:]
        outcome = _last_json(done.stdout)
        assert outcome["state"] == "Failed"
        assert "cannot handle -1" in outcome["message"]
        assert _leftovers(docker_client, run_id) == []
    finally:
        engine.remove_run(docker_client, run_id)


@pytest.mark.docker
def test_sigterm_to_the_host_process_mid_run_removes_everything(docker_client, probe_image, probe_project):
    run_id = _tag()
    process = subprocess.Popen(
        [FLOWRIG_SCRIPT, "run", str(probe_project), "--backend", "docker", "--image", probe_image, "--param", "nap=120"],
        env=docker_run_env(run_id), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(process.stderr), daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + 240
        # The runner announces the cluster once a worker has joined; then the flow starts.
        while not any("scheduler at" in line for line in lines):
            assert process.poll() is None, "".join(lines)[-3000:]
            assert time.monotonic() < deadline, "".join(lines)[-3000:]
            time.sleep(0.5)
        time.sleep(2)
        roles = {c.labels["flowrig.role"] for c in docker_client.containers.list(filters={"label": f"flowrig.run-id={run_id}"})}
        assert roles == {"runner", "scheduler", "worker"}
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) == 143
        assert _leftovers(docker_client, run_id) == []
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        engine.remove_run(docker_client, run_id)


@pytest.mark.docker
def test_docker_cluster_from_the_host_with_its_own_network_and_certificates(docker_client, seed_image, tls):
    from distributed import Client

    cluster = dk.DockerCluster(seed_image, n_workers=0, tls=tls, client=docker_client)
    run_id = cluster.run_id
    try:
        assert cluster.scheduler_address.startswith("tls://127.0.0.1:")
        # Workers come only from adapting: new containers from the cluster's worker spec.
        cluster.adapt(minimum=1, maximum=2)
        cluster.wait_for_first_workers(1, 120)
        with Client(cluster, security=tls.to_security()) as client:
            assert client.submit(sum, [1, 2, 3]).result(timeout=60) == 6
        names = {c.name for c in docker_client.containers.list(filters={"label": f"flowrig.run-id={run_id}"})}
        assert names == {f"flowrig-{run_id}-scheduler", f"flowrig-{run_id}-worker-0"}
        cluster.close()
        assert _leftovers(docker_client, run_id) == []
    finally:
        engine.remove_run(docker_client, run_id)


@pytest.mark.docker
def test_backend_errors_are_one_line_and_leave_nothing(docker_client, seed_image, tls, monkeypatch):
    from flowrig.backends.base import ClusterSpec
    from flowrig.errors import InfrastructureError
    from flowrig.project.sizing import ClusterSize

    monkeypatch.delenv("FLOWRIG_DOCKER_NETWORK", raising=False)
    size = ClusterSize(n_workers=1, adapt=None)
    spec = ClusterSpec(run_id=_tag(), size=size, tls=tls, image="flowrig-no-such-image:0")
    with pytest.raises(BadInput, match=r"image 'flowrig-no-such-image:0' not found: build it with flowrig build"):
        dk.DockerBackend().start(spec)

    # No scheduler imports Dask this fast: the start times out, and the partly started
    # cluster (its network and scheduler container) is removed again.
    run_id = _tag()
    spec = ClusterSpec(run_id=run_id, size=size, tls=tls, image=seed_image, options={"scheduler_start_timeout": 0.1})
    try:
        with pytest.raises(InfrastructureError) as caught:
            dk.DockerBackend().start(spec)
        message = str(caught.value)
        assert f"the scheduler container flowrig-{run_id}-scheduler was not ready within" in message
        assert "\n" not in message
        assert _leftovers(docker_client, run_id) == []
    finally:
        engine.remove_run(docker_client, run_id)


@pytest.mark.docker
def test_leftovers_command_lists_and_removes_a_killed_runs_remains(docker_client, seed_image):
    from typer.testing import CliRunner

    run_id = _tag()
    network = dk.network_name(run_id)
    # Made by a process that has ended since, as a killed run's host has.
    maker = textwrap.dedent(
        f"""
        from flowrig.backends import docker as dk
        from flowrig.containers import ContainerPlan, engine
        client = engine.connect()
        engine.create_network(client, {network!r}, {run_id!r})
        engine.create_container(client, ContainerPlan(
            name="flowrig-{run_id}-worker-0", image={seed_image!r}, command=("info",),
            labels=dk.labels({run_id!r}, "worker"), environment={{}}, network={network!r},
        ))
        """
    )
    try:
        made = subprocess.run([sys.executable, "-c", maker], capture_output=True, text=True, timeout=120)
        assert made.returncode == 0, made.stderr
        listed = CliRunner().invoke(docker_app, ["leftovers", "--run-id", run_id, "--output", "json"])
        assert listed.exit_code == 0, listed.output
        [left] = json.loads(listed.stdout)
        assert left["run_id"] == run_id and left["networks"] == [network]
        assert left["containers"] == [[f"flowrig-{run_id}-worker-0", "worker", "created"]]
        assert "has gone" in left["why"]
        removed = CliRunner().invoke(docker_app, ["leftovers", "--run-id", run_id, "--remove"])
        assert removed.exit_code == 0, removed.output
        assert _leftovers(docker_client, run_id) == []
    finally:
        engine.remove_run(docker_client, run_id)


@pytest.mark.docker
def test_dashboard_link_opens_from_the_host(docker_client, probe_image, probe_project):
    """The link the run prints is the run's dashboard proxy on the host's 127.0.0.1: it
    opens with the link's token (then a cookie), and not without it; the scheduler's
    own published dashboard port answers only the run's certificate."""
    import http.cookiejar
    import urllib.error
    import urllib.request

    run_id = _tag()
    process = subprocess.Popen(
        [FLOWRIG_SCRIPT, "run", str(probe_project), "--backend", "docker", "--image", probe_image, "--param", "nap=60"],
        env=docker_run_env(run_id), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    lines: list[str] = []
    threading.Thread(target=lambda: lines.extend(process.stderr), daemon=True).start()
    try:
        deadline = time.monotonic() + 240
        while not any("dashboard at http" in line for line in lines):
            assert process.poll() is None, "".join(lines)[-3000:]
            assert time.monotonic() < deadline, "".join(lines)[-3000:]
            time.sleep(0.5)
        [line] = [line for line in lines if "dashboard at http" in line]
        link = line.rsplit("dashboard at ", 1)[1].strip()
        assert re.fullmatch(r"http://127\.0\.0\.1:\d+/status\?flowrig-token=[\w-]+", link), link
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(link.split("?")[0], timeout=30)
        assert refused.value.code == 403
        opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar()))
        with opener.open(link, timeout=30) as response:
            assert response.status == 200 and response.url.endswith("/status")
            assert b"Dask" in response.read()
        [scheduler] = engine.run_containers(docker_client, run_id, roles=("scheduler",))
        published = engine.published_port(scheduler, 8787)
        with pytest.raises((urllib.error.URLError, ConnectionError, OSError)):
            urllib.request.urlopen(f"http://127.0.0.1:{published}/status", timeout=10)
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) == 143
        assert _leftovers(docker_client, run_id) == []
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        engine.remove_run(docker_client, run_id)
