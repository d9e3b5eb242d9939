"""``flowrig ecs task-definitions``: rendered task definitions are valid ECS input
(checked with botocore's own model), stable byte for byte, and bad input ends with
one line and the right exit code. Registration goes to a real moto server."""

from __future__ import annotations

import json
import os
import subprocess

import pytest
from typer.testing import CliRunner

from flowrig import roles
from flowrig.backends.aws.ecs import taskdefs, validate
from flowrig.cli.ecs import app
from flowrig.errors import BadInput
from tests.aws_support import aws_env_without_credentials
from tests.run_support import invoke

EXEC_ROLE = "arn:aws:iam::123456789012:role/ecsTaskExecutionRole"
BASE_ARGS = ["--image", "registry.example.com/team/seed:1.0", "--region", "us-east-1", "--execution-role-arn", EXEC_ROLE]


def settings(**changes) -> taskdefs.TaskDefinitionSettings:
    values = dict(
        image="registry.example.com/team/seed:1.0",
        name="seed",
        region="eu-west-1",
        log_group="/flowrig/seed",
        execution_role_arn=EXEC_ROLE,
        environment={"PREFECT_LOGGING_LEVEL": "INFO"},
        secrets={"PREFECT_API_KEY": "arn:aws:secretsmanager:eu-west-1:123456789012:secret:prefect-key"},
        tags={"team": "data"},
    )
    values.update(changes)
    return taskdefs.TaskDefinitionSettings(**values)


def botocore_input_shape():
    import botocore.session

    model = botocore.session.get_session().get_service_model("ecs")
    return model.operation_model("RegisterTaskDefinition").input_shape


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """``flowrig ecs ARGS`` in process; ``env``, when given, is the whole environment."""
    whole = None if env is None else {**dict.fromkeys(os.environ), **env}
    return invoke("ecs", *args, env=whole)


# --- rendering -------------------------------------------------------------------
@pytest.mark.parametrize("role", validate.ROLES)
def test_rendered_definitions_pass_botocore_validation(role):
    from botocore.validate import validate_parameters

    params = taskdefs.render_task_definition(role, settings())
    # Raises ParamValidationError on any unknown key, wrong type or missing member.
    validate_parameters(params, botocore_input_shape())
    validate.check_task_definition(params)


def test_validation_rejects_what_ecs_would():
    params = taskdefs.render_task_definition("worker", settings())
    params["containerDefinitions"][0]["healthCheck"]["interval"] = "30"
    params["networkmode"] = "awsvpc"
    with pytest.raises(BadInput) as info:
        validate.check_task_definition(params)
    message = str(info.value)
    assert "\n" not in message
    assert "networkmode" in message and "interval" in message


def test_roles_get_the_shape_the_backends_and_ecs_need():
    docs = taskdefs.render_task_definitions(settings())
    assert list(docs) == ["runner", "scheduler", "worker"]
    tls = ["--tls-ca-file", "/etc/flowrig/tls/ca.crt", "--tls-cert", "/etc/flowrig/tls/tls.crt",
           "--tls-key", "/etc/flowrig/tls/tls.key"]
    for role, params in docs.items():
        [container] = params["containerDefinitions"]
        assert params["family"] == f"flowrig-seed-{role}"
        assert params["networkMode"] == "awsvpc"
        assert params["requiresCompatibilities"] == ["FARGATE"]
        assert params["executionRoleArn"] == EXEC_ROLE
        assert "taskRoleArn" not in params
        assert container["image"] == "registry.example.com/team/seed:1.0"
        assert container["linuxParameters"] == {"initProcessEnabled": True}
        assert container["logConfiguration"]["logDriver"] == "awslogs"
        assert container["logConfiguration"]["options"]["awslogs-region"] == "eu-west-1"
        assert container["logConfiguration"]["options"]["awslogs-group"] == "/flowrig/seed"
        # The standard execution policy cannot create log groups: not asked for by default.
        assert "awslogs-create-group" not in container["logConfiguration"]["options"]
        assert container["environment"] == [{"name": "PREFECT_LOGGING_LEVEL", "value": "INFO"}]
        assert container["secrets"][0]["name"] == "PREFECT_API_KEY"
        tags = {tag["key"]: tag["value"] for tag in params["tags"]}
        assert tags == {"team": "data", "flowrig-role": role}
    runner, scheduler, worker = (docs[r]["containerDefinitions"][0] for r in validate.ROLES)
    assert (runner["name"], scheduler["name"], worker["name"]) == ("flowrig-runner", "dask-scheduler", "dask-worker")
    assert runner["command"] == ["run"] and "healthCheck" not in runner
    assert scheduler["command"] == ["dask-scheduler", "--protocol", "tls", *tls]
    assert worker["command"][0] == "dask-worker" and worker["command"][-6:] == tls
    assert "8786" in " ".join(scheduler["healthCheck"]["command"])
    assert "dask_worker" in " ".join(worker["healthCheck"]["command"])
    assert [m["containerPort"] for m in scheduler["portMappings"]] == [8786, 8787]


def test_the_worker_health_check_finds_the_process_the_worker_role_runs():
    # The image's worker role runs roles.WORKER_MODULE (the nanny, in exec form); the
    # health check looks for its words in a command line.
    marker = b"dask_worker"
    assert marker.decode() in " ".join(taskdefs.WORKER_HEALTH_COMMAND)
    assert marker.decode() in roles.WORKER_MODULE


def test_a_schedulers_no_client_timeout_is_the_lifetime_preloads_option(tmp_path):
    from flowrig.certs import TLSMaterial
    from flowrig.roles import command_for, scheduler_command

    command = scheduler_command(90, ["--protocol", "tls"])
    assert command == ["dask-scheduler", "--no-client-timeout", "90", "--protocol", "tls"]
    # The image's entry point puts the preload first, so the option reaches it.
    TLSMaterial.ephemeral().write_to_dir(tmp_path)
    full = command_for("scheduler", command[1:], tmp_path)
    at = full.index("--preload")
    assert full[at + 1] == roles.LIFETIME_PRELOAD and full.index("--no-client-timeout") > at
    assert "--idle-timeout" not in full


def test_log_group_creation_is_opt_in():
    [container] = taskdefs.render_task_definition("runner", settings(create_log_group=True))["containerDefinitions"]
    assert container["logConfiguration"]["options"]["awslogs-create-group"] == "true"
    result = CliRunner().invoke(app, ["task-definitions", *BASE_ARGS, "--role", "runner", "--create-log-group"])
    options = json.loads(result.stdout)["runner"]["containerDefinitions"][0]["logConfiguration"]["options"]
    assert options["awslogs-create-group"] == "true"


@pytest.mark.parametrize("cpu", sorted(validate.FARGATE_MEMORY))
def test_every_documented_fargate_size_is_accepted_and_neighbours_are_not(cpu):
    allowed = validate.FARGATE_MEMORY[cpu]
    for memory in allowed:
        validate.check_fargate_size("worker", cpu, memory)
    for memory in (allowed[0] - 512, allowed[-1] + 1024):
        with pytest.raises(BadInput) as info:
            validate.check_fargate_size("worker", cpu, memory)
        assert ", ".join(map(str, allowed)) in str(info.value)


def test_fargate_sizes_follow_the_aws_table():
    assert validate.FARGATE_MEMORY[256] == (512, 1024, 2048)
    assert validate.FARGATE_MEMORY[1024] == (2048, 3072, 4096, 5120, 6144, 7168, 8192)
    assert validate.FARGATE_MEMORY[4096][0] == 8192 and validate.FARGATE_MEMORY[4096][-1] == 30720
    assert validate.FARGATE_MEMORY[8192][1] - validate.FARGATE_MEMORY[8192][0] == 4096
    assert validate.FARGATE_MEMORY[16384][-1] == 122880


def test_project_name_comes_from_the_image_repository():
    assert taskdefs.project_name_from_image("registry.example.com:5000/team/seed:1.0") == "seed"
    assert taskdefs.project_name_from_image("seed@sha256:" + "a" * 64) == "seed"
    assert taskdefs.project_name_from_image("my.flow_v2") == "my-flow_v2"


# --- stable output ---------------------------------------------------------------
def test_same_input_gives_the_same_bytes(tmp_path):
    first, second = tmp_path / "a", tmp_path / "b"
    extra = ["--env", "B=2", "--env", "A=1", "--tag", "z=1", "--tag", "a=2"]
    reordered = ["--tag", "a=2", "--env", "A=1", "--tag", "z=1", "--env", "B=2"]
    assert cli("task-definitions", *BASE_ARGS, *extra, "--out", str(first)).returncode == 0
    assert cli("task-definitions", *BASE_ARGS, *reordered, "--out", str(second)).returncode == 0
    names = sorted(path.name for path in first.iterdir())
    assert names == ["runner.json", "scheduler.json", "worker.json"]
    for name in names:
        data = (first / name).read_bytes()
        assert data == (second / name).read_bytes()
        assert data.endswith(b"}\n") and not data.endswith(b"\n\n")
        document = json.loads(data)
        assert data.decode() == json.dumps(document, sort_keys=True, indent=2) + "\n"
        validate.check_task_definition(document)


def test_stdout_holds_every_role_and_files_are_ready_for_the_aws_cli(tmp_path):
    runner = CliRunner()
    result = runner.invoke(app, ["task-definitions", *BASE_ARGS, "--role", "worker", "--role", "runner"])
    assert result.exit_code == 0, result.output
    documents = json.loads(result.stdout)
    assert list(documents) == ["runner", "worker"]
    result = runner.invoke(app, ["task-definitions", *BASE_ARGS, "--role", "worker", "--out", str(tmp_path)])
    assert result.exit_code == 0
    assert json.loads((tmp_path / "worker.json").read_text()) == documents["worker"]


# --- bad input -------------------------------------------------------------------
@pytest.mark.parametrize(
    "args, words",
    [
        (["--region", "us-east-1", "--execution-role-arn", EXEC_ROLE], "missing --image"),
        ([*BASE_ARGS, "--role", "driver"], "unknown role 'driver'"),
        ([*BASE_ARGS, "--worker-cpu", "1024", "--worker-memory", "1024"],
         "use one of 2048, 3072, 4096, 5120, 6144, 7168, 8192"),
        ([*BASE_ARGS, "--scheduler-cpu", "3000"], "scheduler cpu 3000 is not a Fargate size"),
        (["--image", "x:1", "--region", "us-east-1"], "--execution-role-arn"),
        ([*BASE_ARGS, "--task-role-arn", "admin"], "not an IAM role ARN"),
        ([*BASE_ARGS, "--env", "NOEQUALS"], "is not NAME=VALUE"),
        ([*BASE_ARGS, "--project", "bad name!"], "family"),
    ],
)
def test_bad_input_exits_2_with_one_line(args, words):
    done = cli("task-definitions", *args)
    assert done.returncode == 2, done.stderr
    assert done.stdout == ""
    assert len(done.stderr.strip().splitlines()) == 1
    assert words in done.stderr


def test_missing_region_is_bad_input(tmp_path):
    env = aws_env_without_credentials(tmp_path)
    env.pop("AWS_DEFAULT_REGION")
    done = cli("task-definitions", "--image", "x:1", "--execution-role-arn", EXEC_ROLE, env=env)
    assert done.returncode == 2 and "--region" in done.stderr


def test_no_credentials_exits_2_with_one_line(tmp_path):
    done = cli("task-definitions", *BASE_ARGS, "--register", env=aws_env_without_credentials(tmp_path))
    assert done.returncode == 2, done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
    assert "credentials" in done.stderr


# --- from a project -----------------------------------------------------------------
SECRET_ARN = "arn:aws:secretsmanager:eu-west-1:123456789012:secret:api-token"
PROJECT_TOML = f'''
flow = "flow.py:main"

[cluster]
backend = "fargate"
worker_threads = 2
no_client_timeout = 90

[cluster.options]
region_name = "eu-west-1"
execution_role_arn = "{EXEC_ROLE}"
task_role_arn = "arn:aws:iam::123456789012:role/flow-tasks"
cloudwatch_logs_group = "/team/flows"
worker_cpu = 2048
worker_mem = 8192
scheduler_cpu = 512
scheduler_mem = 1024
environment = {{ MODE = "prod" }}
secrets = {{ API_TOKEN = "{SECRET_ARN}" }}
worker_extra_args = ["--memory-limit", "6GiB"]
tags = {{ team = "data" }}
'''


def write_project(tmp_path, toml: str = PROJECT_TOML, name: str = "etl"):
    project = tmp_path / name
    project.mkdir()
    (project / "flowrig.toml").write_text(toml)
    (project / "flow.py").write_text("from prefect import flow\n@flow\ndef main():\n    pass\n")
    return project


def test_a_projects_settings_are_rendered(tmp_path):
    project = write_project(tmp_path)
    result = CliRunner().invoke(app, ["task-definitions", str(project), "--image", "reg/etl:1"], env={"AWS_REGION": ""})
    assert result.exit_code == 0, result.output
    docs = json.loads(result.stdout)
    runner, scheduler, worker = (docs[role] for role in validate.ROLES)
    [w] = worker["containerDefinitions"]
    nthreads = w["command"][w["command"].index("--nthreads") + 1]
    assert nthreads == "2"
    assert (worker["cpu"], worker["memory"]) == ("2048", "8192") and (w["cpu"], w["memory"]) == (2048, 8192)
    assert (scheduler["cpu"], scheduler["memory"]) == ("512", "1024")
    assert "--memory-limit" in w["command"] and "--no-dashboard" in w["command"]
    assert w["environment"] == [{"name": "MODE", "value": "prod"}]
    assert w["secrets"] == [{"name": "API_TOKEN", "valueFrom": SECRET_ARN}]
    for other in (runner, scheduler):
        assert "environment" not in other["containerDefinitions"][0] and "secrets" not in other["containerDefinitions"][0]
    [s] = scheduler["containerDefinitions"]
    assert s["command"][:3] == ["dask-scheduler", "--no-client-timeout", "90"]
    for params in docs.values():
        assert params["family"].startswith("flowrig-etl-")
        assert params["executionRoleArn"] == EXEC_ROLE
        options = params["containerDefinitions"][0]["logConfiguration"]["options"]
        assert (options["awslogs-group"], options["awslogs-region"]) == ("/team/flows", "eu-west-1")
        assert {t["key"]: t["value"] for t in params["tags"]}["team"] == "data"
        validate.check_task_definition(params)


def test_flags_override_the_project(tmp_path):
    project = write_project(tmp_path)
    result = CliRunner().invoke(app, [
        "task-definitions", str(project), "--image", "reg/etl:1", "--role", "worker", "--worker-cpu", "4096",
        "--worker-memory", "16384", "--worker-threads", "4", "--region", "us-west-2", "--env", "MODE=test",
        "--task-role-arn", "arn:aws:iam::123456789012:role/other",
    ])
    assert result.exit_code == 0, result.output
    worker = json.loads(result.stdout)["worker"]
    [w] = worker["containerDefinitions"]
    assert (worker["cpu"], worker["memory"]) == ("4096", "16384")
    assert w["command"][w["command"].index("--nthreads") + 1] == "4"
    assert w["environment"] == [{"name": "MODE", "value": "test"}]
    assert w["logConfiguration"]["options"]["awslogs-region"] == "us-west-2"
    assert worker["taskRoleArn"] == "arn:aws:iam::123456789012:role/other"


def test_every_missing_input_is_named_in_one_line(tmp_path):
    project = write_project(tmp_path, 'flow = "flow.py:main"\n[cluster]\nbackend = "fargate"\n')
    env = aws_env_without_credentials(tmp_path)
    env.pop("AWS_DEFAULT_REGION")
    done = cli("task-definitions", str(project), env=env)
    assert done.returncode == 2, done.stderr
    [line] = done.stderr.strip().splitlines()
    assert "missing --image" in line and "; --region" in line and "; --execution-role-arn" in line


def test_a_local_projects_runner_needs_to_be_asked_for(tmp_path):
    project = write_project(tmp_path, 'flow = "flow.py:main"\n')
    base = [str(project), "--image", "reg/etl:1", "--region", "eu-west-1", "--execution-role-arn", EXEC_ROLE]
    refused = cli("task-definitions", *base)
    assert refused.returncode == 2 and len(refused.stderr.strip().splitlines()) == 1
    assert "backend is local" in refused.stderr and "--allow-local-runner" in refused.stderr
    assert 'backend = "fargate"' in refused.stderr
    assert CliRunner().invoke(app, ["task-definitions", *base, "--allow-local-runner"]).exit_code == 0
    only = CliRunner().invoke(app, ["task-definitions", *base, "--role", "scheduler", "--role", "worker"])
    assert only.exit_code == 0 and list(json.loads(only.stdout)) == ["scheduler", "worker"]
    docker = write_project(tmp_path, 'flow = "flow.py:main"\n[cluster]\nbackend = "docker"\n', name="dock")
    done = cli("task-definitions", str(docker), *base[1:], "--allow-local-runner")
    assert done.returncode == 2 and "needs a Docker engine" in done.stderr


def test_a_secret_looking_project_variable_is_refused(tmp_path):
    toml = PROJECT_TOML.replace('environment = { MODE = "prod" }', 'environment = { MODE = "prod", DB_PASSWORD = "x" }')
    project = write_project(tmp_path, toml)
    done = cli("task-definitions", str(project), "--image", "reg/etl:1")
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1
