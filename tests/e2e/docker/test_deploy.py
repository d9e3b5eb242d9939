"""``flowrig deploy`` against a real Prefect server (``prefect server start``): what the
server holds after a deploy, that the same inputs write nothing the second time, that a
change writes only what changed, that bad input is exit 2 with one line, and that the
prefect.yaml it writes makes the same deployment through ``prefect deploy``."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from flowrig.deploy import pool_templates, pools
from tests.docker_support import SEED_PROJECT
from tests.run_support import FLOWRIG

pytestmark = pytest.mark.docker

FLOW = "dask-cloud-provider-test"


def run_deploy(server: str | None, *args: str, cwd: Path | None = None, extra_env: dict | None = None):
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(PREFECT_SERVER_ANALYTICS_ENABLED="false", **(extra_env or {}))
    if server:
        env["PREFECT_API_URL"] = server
    return subprocess.run([*FLOWRIG, "deploy", *args], capture_output=True, text=True,
                          env=env, cwd=cwd, timeout=300)


def deploy_json(server: str, *args: str) -> dict:
    done = run_deploy(server, *args, "--output", "json")
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def client(prefect_server):
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings(updates={PREFECT_API_URL: prefect_server}):
        with get_client(sync_client=True) as api:
            yield api


@pytest.fixture(scope="module")
def docker_pool(client) -> str:
    return make_pool(client, "docker")


def make_pool(client, pool_type: str, template: dict | None = None) -> str:
    from prefect.client.schemas.actions import WorkPoolCreate

    name = f"{pool_type}-{uuid.uuid4().hex[:6]}"
    client.create_work_pool(WorkPoolCreate(name=name, type=pool_type,
                                           base_job_template=template or pool_templates.pool_template(pool_type)))
    return name


def scheduled_run_ids(client, deployment_id) -> set:
    from prefect.client.schemas.filters import (
        DeploymentFilter,
        DeploymentFilterId,
        FlowRunFilter,
        FlowRunFilterState,
        FlowRunFilterStateType,
    )
    from prefect.client.schemas.objects import StateType

    runs = client.read_flow_runs(
        deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment_id])),
        flow_run_filter=FlowRunFilter(state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.SCHEDULED]))),
    )
    return {run.id for run in runs}


def test_a_deploy_is_what_the_server_holds_and_a_second_one_writes_nothing(prefect_server, seed_image, client):
    pool = make_pool(client, "docker")
    name = f"nightly-{uuid.uuid4().hex[:6]}"
    args = [str(SEED_PROJECT), "--image", seed_image, "--pool", pool, "--name", name, "--param", "x=[1,2,3]",
            "--cron", "0 6 * * *", "--interval", "2h", "--timezone", "Europe/Berlin", "--tag", "nightly",
            "--tag", "etl", "--env", "MODE=prod", "--pull-policy", "Never", "--description", "Doubles x."]
    first = deploy_json(prefect_server, *args)
    assert first["action"] == "created" and first["deployment"] == f"{FLOW}/{name}"
    assert first["work_pool"] == {"name": pool, "type": "docker"}

    deployment = client.read_deployment_by_name(f"{FLOW}/{name}")
    assert str(deployment.id) == first["deployment_id"]
    assert deployment.parameters == {"x": [1, 2, 3]}
    assert deployment.tags == ["etl", "nightly"]
    assert deployment.description == "Doubles x."
    assert deployment.entrypoint == "flow.py:dask_cloud_provider_test"
    assert deployment.enforce_parameter_schema is True and deployment.paused is False
    schema = deployment.parameter_openapi_schema
    assert schema["properties"]["x"]["type"] == "array" and schema["required"] == ["x"]
    assert deployment.job_variables == pools.job_variables(
        "docker", pools.JobInputs(image=seed_image, pull_policy="Never", env={"MODE": "prod"}))
    kinds = sorted((type(s.schedule).__name__, s.schedule.timezone, s.active) for s in deployment.schedules)
    assert kinds == [("CronSchedule", "Europe/Berlin", True), ("IntervalSchedule", "Europe/Berlin", True)]
    # The version is Prefect's own for the flow file: its hash.
    assert deployment.version and len(deployment.version) == 32

    # Runs the schedules planned already (the server's scheduler plans a new or changed
    # deployment's within seconds): a schedule written again would delete them.
    deadline = time.monotonic() + 120
    while len(planned := scheduled_run_ids(client, deployment.id)) < 2 and time.monotonic() < deadline:
        time.sleep(1)
    assert len(planned) >= 2, "the server's scheduler planned no runs"
    second = deploy_json(prefect_server, *args)
    assert second["action"] == "unchanged" and second["changed"] == []
    again = client.read_deployment_by_name(f"{FLOW}/{name}")
    assert again.updated == deployment.updated
    assert {s.id for s in again.schedules} == {s.id for s in deployment.schedules}
    assert planned <= scheduled_run_ids(client, deployment.id)

    # One schedule less, one parameter changed: only those are written; the schedule kept stays.
    cron_id = next(s.id for s in deployment.schedules if type(s.schedule).__name__ == "CronSchedule")
    changed_args = [a for a in args if a not in ("--interval", "2h")]
    changed_args[changed_args.index("x=[1,2,3]")] = "x=[5]"
    third = deploy_json(prefect_server, *changed_args)
    assert third["action"] == "updated" and third["changed"] == ["parameters", "schedules"]
    updated = client.read_deployment_by_name(f"{FLOW}/{name}")
    assert updated.parameters == {"x": [5]} and [s.id for s in updated.schedules] == [cron_id]

    paused = deploy_json(prefect_server, *changed_args, "--paused")
    assert paused["changed"] == ["paused"] and client.read_deployment(deployment.id).paused is True
    text = run_deploy(prefect_server, *changed_args)
    assert text.returncode == 0 and text.stdout.strip() == (
        f"deployment {FLOW}/{name} on work pool {pool} (docker) is up to date: nothing written")


def ci_deploy_part(recipe: str) -> tuple[dict[str, str], str]:
    """The environment and the ``flowrig deploy`` command of a CI recipe of examples/ci."""
    import yaml

    text = (Path(__file__).resolve().parents[3] / "examples" / "ci" / f"{recipe}.yml").read_text()
    if recipe == "github-actions":
        (job,) = yaml.safe_load(text)["jobs"].values()
        (step,) = [s for s in job["steps"] if s.get("name") == "Deploy the flow"]
        env, lines = dict(job["env"]), step["run"].splitlines()
    else:
        pipeline = yaml.safe_load(text)
        env, lines = dict(pipeline["variables"]), pipeline["flow-deploy"]["script"]
    command = "\n".join(line for line in lines if "pip install" not in line)
    assert command.lstrip().startswith("flowrig deploy"), command
    return {k: str(v) for k, v in env.items()}, command


@pytest.mark.parametrize("recipe", ["github-actions", "gitlab-ci"])
def test_the_ci_recipes_deploy_step_makes_a_scheduled_deployment(prefect_server, seed_image, client, recipe):
    """The recipe's own command, with this machine's image and a pool, and the seed's
    required parameter (the recipe's project has none)."""
    env, command = ci_deploy_part(recipe)
    pool = make_pool(client, "docker")
    image, sha = seed_image.rsplit(":", 1)
    env.update(PROJECT=str(SEED_PROJECT), IMAGE=image, POOL=pool, GITHUB_SHA=sha, CI_COMMIT_SHA=sha,
               PREFECT_API_URL=prefect_server, PREFECT_SERVER_ANALYTICS_ENABLED="false",
               PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}", HOME=os.environ.get("HOME", "/root"))
    done = subprocess.run(["bash", "-euc", command + " --param 'x=[1,2]'"], env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout.strip().splitlines()[-1])
    # Both recipes name the deployment after the flow: the second one updates the first.
    assert report["action"] in ("created", "updated") and report["image"]["reference"] == seed_image
    deployment = client.read_deployment(report["deployment_id"])
    assert deployment.tags == ["nightly"] and deployment.work_pool_name == pool
    [schedule] = deployment.schedules
    assert (schedule.schedule.cron, schedule.schedule.timezone) == ("0 6 * * *", "UTC")


def test_a_process_pool_deployment_starts_the_image_with_docker(prefect_server, seed_image, client):
    pool = make_pool(client, "process")
    report = deploy_json(prefect_server, str(SEED_PROJECT), "--image", seed_image, "--pool", pool,
                         "--param", "x=[1]", "--env", "MODE=prod", "--pass-env", "AWS_PROFILE")
    deployment = client.read_deployment(report["deployment_id"])
    assert deployment.name == FLOW  # the flow's name, without --name
    command = deployment.job_variables["command"]
    assert command == pools.process_command(seed_image, env_names=("AWS_PROFILE", "MODE"))
    assert deployment.job_variables["env"] == {"MODE": "prod"}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.parametrize("args, words", [
    (["--pool", "no-such-pool"], "work pool 'no-such-pool' does not exist"),
    (["--cron", "61 * * * *"], "--cron '61 * * * *'"),
    (["--interval", "0"], "--interval '0' must be longer than zero"),
    (["--rrule", "FREQ=SOMETIMES"], "--rrule 'FREQ=SOMETIMES'"),
    (["--cron", "0 6 * * *", "--timezone", "Mars/Olympus"], "is not an IANA time zone"),
    (["--param", "y=1"], "unknown parameter 'y'"),
    (["--param", 'x=[1,"two"]'], "invalid parameter for flow 'dask-cloud-provider-test'"),
    (["--cron", "0 6 * * *", "--param", "x=[1]", "--params-file", "/nonexistent.json"], "does not exist"),
    (["--name", "a/b"], "deployment name 'a/b' is not valid"),
    (["--env", "DB_PASSWORD=hunter2"], "--env DB_PASSWORD looks like a secret"),
    (["--env", "DATABASE_URL=postgres://app:hunter2@db/prod"], "--env DATABASE_URL looks like a secret"),
    (["--pull-policy", "Sometimes"], "is not an image pull policy"),
])
def test_bad_input_is_exit_2_with_one_line(prefect_server, seed_image, client, docker_pool, args, words):
    # A later --pool or --param wins over the one given first.
    base = [str(SEED_PROJECT), "--image", seed_image, "--pool", docker_pool, "--param", "x=[1]"]
    done = run_deploy(prefect_server, *base, *args)
    assert done.returncode == 2, done.stderr
    assert done.stdout == "" and len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert words in done.stderr


def test_a_scheduled_deployment_needs_its_required_parameters(prefect_server, seed_image, client):
    pool = make_pool(client, "docker")
    done = run_deploy(prefect_server, str(SEED_PROJECT), "--image", seed_image, "--pool", pool, "--cron", "0 6 * * *")
    assert done.returncode == 2 and "requires parameter 'x', which scheduled runs would not get" in done.stderr


def test_a_missing_or_foreign_image_is_exit_2(prefect_server, seed_image, client, docker_client, tmp_path):
    pool = make_pool(client, "docker")
    missing = run_deploy(prefect_server, str(SEED_PROJECT), "--image", "flowrig-missing:none", "--pool", pool,
                         "--param", "x=[1]")
    assert missing.returncode == 2 and len(missing.stderr.strip().splitlines()) == 1
    assert "image 'flowrig-missing:none' not found" in missing.stderr
    # The base image is no flowrig image: its entry point says so.
    from tests.docker_support import test_base_image

    foreign = run_deploy(prefect_server, str(SEED_PROJECT), "--image", test_base_image(), "--pool", pool,
                         "--param", "x=[1]")
    assert foreign.returncode == 2 and "is not a flowrig image" in foreign.stderr
    # The seed's image for a project whose flow is another.
    project = tmp_path / "other"
    project.mkdir()
    (project / "flowrig.toml").write_text('flow = "other.py:other"\n')
    (project / "other.py").write_text("from prefect import flow\n@flow\ndef other():\n    pass\n")
    other = run_deploy(prefect_server, str(project), "--image", seed_image, "--pool", pool)
    assert other.returncode == 2 and len(other.stderr.strip().splitlines()) == 1
    assert f"image {seed_image!r} carries flow flow.py:dask_cloud_provider_test" in other.stderr
    # The seed project with a parameter the image's flow does not have yet.
    changed = tmp_path / "seed"
    changed.mkdir()
    (changed / "flowrig.toml").write_text((SEED_PROJECT / "flowrig.toml").read_text())
    (changed / "flow.py").write_text((SEED_PROJECT / "flow.py").read_text().replace(
        "def dask_cloud_provider_test(x: list[int])", "def dask_cloud_provider_test(x: list[int], y: int = 0)"))
    stale = run_deploy(prefect_server, str(changed), "--image", seed_image, "--pool", pool, "--param", "x=[1]")
    assert stale.returncode == 2 and "was built before the parameters" in stale.stderr
    assert "flowrig build PROJECT --tag" in stale.stderr


def test_an_api_that_is_not_there(seed_image):
    nowhere = run_deploy(None, str(SEED_PROJECT), "--image", seed_image, "--pool", "p", "--param", "x=[1]")
    assert nowhere.returncode == 2 and "set PREFECT_API_URL" in nowhere.stderr
    port = _free_port()
    closed = run_deploy(f"http://127.0.0.1:{port}/api", str(SEED_PROJECT), "--image", seed_image, "--pool", "p",
                        "--param", "x=[1]")
    assert closed.returncode == 3, closed.stderr
    assert len(closed.stderr.strip().splitlines()) == 1 and f"127.0.0.1:{port}" in closed.stderr


def test_an_ecs_pool_of_prefects_stock_template_is_refused_with_the_fix(prefect_server, seed_image, client):
    from prefect_aws.workers.ecs_worker import ECSWorker

    pool = make_pool(client, "ecs", ECSWorker.get_default_base_job_template())
    done = run_deploy(prefect_server, str(SEED_PROJECT), "--image", seed_image, "--pool", pool, "--param", "x=[1]",
                      "--allow-local-runner", "--region", "us-east-1", "--execution-role-arn",
                      "arn:aws:iam::123456789012:role/x")
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1
    assert f"flowrig deploy --pool-template ecs > ecs.json && prefect work-pool update {pool}" in done.stderr


def test_an_ecs_deployment_of_a_local_project_needs_the_flag_and_its_inputs(prefect_server, seed_image, client):
    pool = make_pool(client, "ecs")
    base = [str(SEED_PROJECT), "--image", seed_image, "--pool", pool, "--param", "x=[1]"]
    local = run_deploy(prefect_server, *base, extra_env={"AWS_REGION": "", "AWS_DEFAULT_REGION": ""})
    assert local.returncode == 2 and "backend is local" in local.stderr and "--allow-local-runner" in local.stderr
    missing = run_deploy(prefect_server, *base, "--allow-local-runner",
                         extra_env={"AWS_REGION": "", "AWS_DEFAULT_REGION": ""})
    assert missing.returncode == 2 and len(missing.stderr.strip().splitlines()) == 1
    assert "missing --region" in missing.stderr and "; --execution-role-arn" in missing.stderr
    report = deploy_json(prefect_server, *base, "--allow-local-runner", "--region", "eu-west-1",
                         "--execution-role-arn", "arn:aws:iam::123456789012:role/x", "--runner-cpu", "2048",
                         "--runner-memory", "4096")
    variables = client.read_deployment(report["deployment_id"]).job_variables
    assert variables["image"] == seed_image and variables["container_name"] == "flowrig-runner"
    assert (variables["cpu"], variables["memory"]) == (2048, 4096)
    assert variables["log_configuration"]["options"]["awslogs-region"] == "eu-west-1"


def test_the_prefect_yaml_it_writes_makes_the_same_deployment(prefect_server, seed_image, client, tmp_path):
    pool = make_pool(client, "docker")
    project = tmp_path / "seed"
    project.mkdir()
    for name in ("flowrig.toml", "flow.py"):
        (project / name).write_text((SEED_PROJECT / name).read_text())
    yaml_path = project / "prefect.yaml"
    yaml_path.write_text(
        "# kept: a comment of the team's\nname: seed\nprefect-version: 3.0.0\ndeployments:\n"
        "  - name: other\n    entrypoint: flow.py:dask_cloud_provider_test\n    work_pool:\n      name: elsewhere\n"
    )
    name = f"from-yaml-{uuid.uuid4().hex[:6]}"
    args = [str(project), "--image", seed_image, "--pool", pool, "--name", name, "--param", "x=[1,2]",
            "--cron", "*/5 * * * *", "--rrule", "FREQ=DAILY;BYHOUR=6", "--interval", "90m", "--timezone", "Europe/Paris",
            "--tag", "t1"]
    written = deploy_json(prefect_server, *args, "--write", str(yaml_path))
    assert written["action"] == "written" and written["file"] == str(yaml_path)
    text = yaml_path.read_text()
    assert text.startswith("# kept: a comment of the team's") and "name: other" in text
    again = deploy_json(prefect_server, *args, "--write", str(yaml_path))
    assert again["action"] == "unchanged" and yaml_path.read_text() == text
    # Offline: the pool's type given, no API asked.
    offline = run_deploy(None, *args, "--write", str(tmp_path / "offline.yaml"), "--pool-type", "docker")
    assert offline.returncode == 0, offline.stderr

    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(PREFECT_API_URL=prefect_server, PREFECT_SERVER_ANALYTICS_ENABLED="false")
    done = subprocess.run([sys.executable, "-m", "prefect", "--no-prompt", "deploy", "--name", name], cwd=project,
                          capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    # What prefect deploy made of the file is what flowrig deploy makes.
    same = deploy_json(prefect_server, *args)
    assert same["action"] == "unchanged", same
