"""Work pools a team keeps in git, and each deployment's job variables: checked against
the installed Prefect workers' own models (process, prefect-docker, prefect-aws), and the
template ``flowrig deploy --pool-template`` prints. The ECS worker against a real moto
server is in tests/e2e/aws/test_deploy_pools.py."""

from __future__ import annotations

import asyncio
import json
import shlex

import jsonschema
import pytest

from flowrig.deploy import pool_templates, pools
from flowrig.errors import BadInput
from tests.run_support import invoke

EXEC_ROLE = "arn:aws:iam::123456789012:role/flowrig/flowrig-ecs-execution"
RUNNER_ROLE = "arn:aws:iam::123456789012:role/flowrig-runner"
IMAGE = "123456789012.dkr.ecr.us-east-1.amazonaws.com/seed:1.0"


def _worker(pool_type: str):
    if pool_type == "process":
        from prefect.workers.process import ProcessWorker

        return ProcessWorker
    if pool_type == "docker":
        from prefect_docker.worker import DockerWorker

        return DockerWorker
    from prefect_aws.workers.ecs_worker import ECSWorker

    return ECSWorker


def _configuration(pool_type: str, template: dict, variables: dict):
    """What the worker of ``pool_type`` makes of a template and a deployment's variables."""

    class NoBlocks:  # the templates hold no block or variable references to resolve
        pass

    model = _worker(pool_type).job_configuration
    return asyncio.run(model.from_template_and_values(template, variables, client=NoBlocks()))


def _ecs_runner(**changes):
    from flowrig.backends.aws.ecs import definitions, taskdefs

    request = definitions.TaskDefinitionRequest(
        image=IMAGE, roles=("runner",), region="us-east-1", execution_role_arn=EXEC_ROLE,
        runner_task_role_arn=RUNNER_ROLE, allow_local_runner=True, **changes,
    )
    settings, _ = definitions.task_definition_settings(request, None, {})
    return taskdefs.render_task_definition("runner", settings)


def job_inputs(pool_type: str) -> pools.JobInputs:
    if pool_type == "ecs":
        return pools.JobInputs(image=IMAGE, env={"MODE": "prod"}, ecs_runner=_ecs_runner(), ecs_vpc="vpc-1",
                               ecs_subnets=("subnet-1",), ecs_security_groups=("sg-1",))
    return pools.JobInputs(image=IMAGE, pull_policy="Never", env={"MODE": "prod"})


@pytest.mark.parametrize("pool_type", pools.POOL_TYPES)
def test_templates_fit_the_installed_workers(pool_type):
    template = pool_templates.pool_template(pool_type)
    worker = _worker(pool_type)
    stock = worker.get_default_base_job_template()
    fields = set(worker.job_configuration.model_fields)
    # Every key of the job configuration is one the worker's model knows.
    assert set(template["job_configuration"]) <= fields
    # The variables are a valid JSON schema, and each default fits it.
    jsonschema.Draft202012Validator.check_schema(template["variables"])
    defaults = {k: v["default"] for k, v in template["variables"]["properties"].items() if "default" in v}
    jsonschema.validate(defaults, template["variables"])
    # Variables the stock template has keep its names and types, so deployments made
    # for a stock pool fit flowrig's and the other way round.
    for name, prop in template["variables"]["properties"].items():
        if name in stock["variables"]["properties"]:
            theirs = stock["variables"]["properties"][name]
            assert prop.get("type") == theirs.get("type"), name
    # The worker builds its configuration from the template and a deployment's variables.
    variables = pools.job_variables(pool_type, job_inputs(pool_type))
    jsonschema.validate(variables, template["variables"])
    configuration = _configuration(pool_type, template, variables)
    assert configuration.env["MODE"] == "prod"


@pytest.mark.parametrize("pool_type", ["process", "docker"])
def test_deployments_run_the_same_on_a_stock_pool(pool_type):
    stock = _worker(pool_type).get_default_base_job_template()
    variables = pools.job_variables(pool_type, job_inputs(pool_type))
    pools.check_job_variables("stock", pool_type, variables, stock)
    ours = _configuration(pool_type, pool_templates.pool_template(pool_type), variables)
    theirs = _configuration(pool_type, stock, variables)
    assert ours.model_dump() == theirs.model_dump()


def test_an_ecs_pool_needs_flowrigs_template():
    from prefect_aws.workers.ecs_worker import ECSWorker

    variables = pools.job_variables("ecs", job_inputs("ecs"))
    with pytest.raises(BadInput) as info:
        pools.check_job_variables("mine", "ecs", variables, ECSWorker.get_default_base_job_template())
    message = str(info.value)
    assert "cpu_architecture" in message and "log_configuration" in message
    assert "flowrig deploy --pool-template ecs" in message and "prefect work-pool update mine" in message


def test_the_process_command_starts_the_image_hardened_with_names_only():
    from prefect.utilities.processutils import command_from_string

    command = pools.process_command(IMAGE, pull_policy="Never", env_names=("MODE", "PREFECT_API_URL"))
    args = command_from_string(command)
    assert args == shlex.split(command)
    assert args[:3] == ["docker", "run", "--rm"] and args[-4:] == [IMAGE, "prefect", "flow-run", "execute"]
    flags = " ".join(args)
    for expected in ("--pull never", "--network host", "--read-only", "--tmpfs /tmp:rw,nosuid,nodev,noexec",
                     "--cap-drop ALL", "--security-opt no-new-privileges:true", "--pids-limit 1024",
                     "-e PREFECT_HOME=/tmp/prefect"):
        assert expected in flags
    passed = [args[i + 1] for i, arg in enumerate(args) if arg == "-e"]
    # The worker's variables reach the container by name, each once; values never
    # enter the command (nor the deployment).
    assert passed.count("PREFECT_API_URL") == 1 and "MODE" in passed and "PREFECT__FLOW_RUN_ID" in passed
    assert all("=" not in name for name in passed if name != "PREFECT_HOME=/tmp/prefect")
    assert "--network my-net" in pools.process_command(IMAGE, network="my-net")


def test_the_docker_job_runs_the_entry_point_hardened():
    variables = pools.job_variables("docker", pools.JobInputs(image=IMAGE, network="host"))
    configuration = _configuration("docker", pool_templates.pool_template("docker"), variables)
    assert configuration.image == IMAGE and configuration.command == "prefect flow-run execute"
    assert configuration.image_pull_policy == "IfNotPresent" and configuration.network_mode == "host"
    assert configuration.container_create_kwargs == {
        "read_only": True, "tmpfs": {"/tmp": "rw,nosuid,nodev,noexec"}, "cap_drop": ["ALL"],
        "security_opt": ["no-new-privileges:true"], "pids_limit": 1024,
    }
    assert configuration.env["PREFECT_HOME"] == "/tmp/prefect"
    assert pools.job_variables("docker", pools.JobInputs(image=IMAGE, network="net"))["networks"] == ["net"]


@pytest.mark.parametrize("bad, words", [
    (lambda: pools.check_pool_type("kubernetes"), "use one of process, docker, ecs"),
    (lambda: pools.check_pull_policy("Sometimes"), "use one of IfNotPresent, Always, Never"),
])
def test_bad_pool_inputs(bad, words):
    with pytest.raises(BadInput) as info:
        bad()
    assert words in str(info.value)


def test_pool_template_is_printed_as_json_for_prefect():
    done = invoke("deploy", "--pool-template", "ecs")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == pool_templates.pool_template("ecs")
    bad = invoke("deploy", "--pool-template", "k8s")
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1
