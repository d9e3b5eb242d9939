"""The base job templates of the work pool types flowrig deploys to (pure: data out),
for ``prefect work-pool create NAME --type TYPE --base-job-template FILE``.

Each template's variables have flowrig's defaults (the runner's hardening on docker,
the runner task's shape on ecs); a deployment's own job variables
(:mod:`~flowrig.deploy.pools`) fill them in.
"""

from __future__ import annotations

from typing import Any, Mapping

from flowrig.backends.aws.ecs import defaults as ecs_defaults
from flowrig.deploy.pools import (
    DEFAULT_PULL_POLICY,
    ECS_LAUNCH_TYPES,
    ENGINE_COMMAND,
    PULL_POLICIES,
    RUNNER_ENV,
    RUNNER_HARDENING,
    check_pool_type,
    copy_json,
)


def _nullable(kind: str | dict[str, Any]) -> dict[str, Any]:
    schema = {"type": kind} if isinstance(kind, str) else kind
    return {"anyOf": [schema, {"type": "null"}]}


def _var(title: str, description: str, schema: dict[str, Any], default: Any = None, **extra: Any) -> dict[str, Any]:
    prop = {"title": title, "description": description, **schema, **extra}
    if default is not None or "anyOf" in schema:
        prop["default"] = default
    return prop


_ENV = {"type": "object", "additionalProperties": _nullable("string")}
_LABELS = {"type": "object", "additionalProperties": {"type": "string"}}


def _common(command_default: str | None, command_help: str, env_default: Mapping[str, str]) -> dict[str, Any]:
    return {
        "name": _var("Name", "Name given to infrastructure created by the worker.", _nullable("string")),
        "env": _var("Environment Variables", "Environment variables of the runner.", _ENV,
                    default=dict(env_default) or None),
        "labels": _var("Labels", "Labels applied to infrastructure created by the worker.", _LABELS),
        "command": _var("Command", command_help, _nullable("string"), default=command_default),
    }


def _process_template() -> dict[str, Any]:
    variables = _common(
        None,
        "Set per deployment by flowrig deploy: docker run of the deployment's image (hardened, with the "
        "flow run's variables passed through by name) running `prefect flow-run execute`, which the "
        "image's entry point runs as the flow run on its own cluster.",
        {},
    )
    variables["stream_output"] = _var("Stream Output", "Stream the runner's output to the worker's.",
                                      {"type": "boolean"}, default=True)
    variables["working_dir"] = _var("Working Directory", "Directory the command runs in (default: a temporary one).",
                                    _nullable({"type": "string", "format": "path"}))
    return {
        "job_configuration": {key: "{{ " + key + " }}" for key in variables},
        "variables": {"type": "object", "properties": variables},
    }


def _docker_template() -> dict[str, Any]:
    variables = _common(
        ENGINE_COMMAND,
        "What the image runs: its entry point takes `prefect flow-run execute` as the flow run on its own cluster.",
        RUNNER_ENV,
    )
    variables.update({
        "image": _var("Image", "The flowrig image (flowrig build PROJECT --tag TAG); set per deployment.",
                      {"type": "string"}),
        "image_pull_policy": _var(
            "Image Pull Policy", "When the worker pulls the image.",
            _nullable({"type": "string", "enum": list(PULL_POLICIES) + ["IfPossible"]}), default=DEFAULT_PULL_POLICY,
        ),
        "networks": _var("Networks", "Docker networks the runner joins.",
                         {"type": "array", "items": {"type": "string"}}),
        "network_mode": _var("Network Mode", "host, bridge, ...; not with networks.", _nullable("string")),
        "auto_remove": _var("Auto Remove", "Remove the runner container once it ended.", {"type": "boolean"},
                            default=True),
        "volumes": _var("Volumes", "Volumes mounted into the runner.", {"type": "array", "items": {"type": "string"}}),
        "stream_output": _var("Stream Output", "Stream the runner's output to the worker's.", {"type": "boolean"},
                              default=True),
        "mem_limit": _var("Memory Limit", "Memory of the runner container, its cluster included on the local "
                          "backend (e.g. 4g).", _nullable("string")),
        "memswap_limit": _var("Memory Swap Limit", "Memory and swap of the runner container.", _nullable("string")),
        "privileged": _var("Privileged", "Never needed by flowrig.", {"type": "boolean"}, default=False),
        "container_create_kwargs": _var(
            "Container Configuration", "Docker SDK options of the runner container: the docker backend's hardening.",
            _nullable({"type": "object", "additionalProperties": True}), default=copy_json(RUNNER_HARDENING),
        ),
    })
    return {
        "job_configuration": {key: "{{ " + key + " }}" for key in variables},
        "variables": {"type": "object", "properties": variables},
    }


def _ecs_template_variables() -> dict[str, Any]:
    """The ecs pool type's variables: the runner task's image, size, roles and network."""
    variables = _common(
        ENGINE_COMMAND,
        "What the runner task runs: the image's entry point takes `prefect flow-run execute` as the flow run.",
        {},
    )
    string = _nullable("string")
    variables.update({
        "task_definition_arn": _var("Task Definition ARN", "A registered runner task definition to use instead.",
                                    string),
        "cluster": _var("Cluster", "ECS cluster the runner task starts in (default: the account's default).", string),
        "family": _var("Family", "Family of the runner task definition (flowrig-NAME-runner).", string),
        "launch_type": _var("Launch Type", "How the runner task runs.",
                            {"type": "string", "enum": list(ECS_LAUNCH_TYPES)},
                            default="FARGATE"),
        "image": _var("Image", "The flowrig image; set per deployment.", string),
        "cpu": _var("CPU", "CPU units of the runner task (1024 = 1 vCPU).", _nullable("integer"),
                    default=ecs_defaults.RUNNER_CPU),
        "memory": _var("Memory", "Memory of the runner task (MiB).", _nullable("integer"),
                       default=ecs_defaults.RUNNER_MEMORY),
        "container_name": _var("Container Name", "The runner's container.", string,
                               default=ecs_defaults.RUNNER_CONTAINER),
        "cpu_architecture": _var("CPU Architecture", "X86_64 or ARM64, as the image was built.",
                                 {"type": "string", "enum": ["X86_64", "ARM64"]},
                                 default=ecs_defaults.CPU_ARCHITECTURE),
        "log_configuration": _var("Log Configuration", "The runner container's logConfiguration (awslogs).",
                                  _nullable({"type": "object", "additionalProperties": True})),
        "secrets": _var("Secrets", "The runner container's secrets: {name, valueFrom} (Secrets Manager or SSM).",
                        {"type": "array", "items": {"type": "object", "additionalProperties": {"type": "string"}}}),
        "prefect_api_key_secret_arn": _var("Prefect API Key Secret ARN",
                                           "A secret holding PREFECT_API_KEY, instead of a plain variable.", string),
        "prefect_api_auth_string_secret_arn": _var(
            "Prefect API Auth String Secret ARN", "A secret holding PREFECT_API_AUTH_STRING.", string),
        "task_role_arn": _var("Task Role ARN", "The runner's role: for an ecs/fargate project one holding "
                              "`flowrig ecs iam-policy`.", string),
        "execution_role_arn": _var("Execution Role ARN", "Pulls the image and writes the logs.", string),
        "vpc_id": _var("VPC ID", "VPC of the runner task (default: the default VPC).", string),
        "network_configuration": _var(
            "Network Configuration", "awsvpcConfiguration of the runner task: subnets, securityGroups, assignPublicIp.",
            {"type": "object", "additionalProperties": True},
        ),
        "auto_deregister_task_definition": _var("Auto Deregister Task Definition",
                                                "Deregister the task definition after the run.", {"type": "boolean"},
                                                default=False),
        "match_latest_revision_in_family": _var(
            "Match Latest Revision In Family", "Reuse the family's latest revision when it is the same.",
            {"type": "boolean"}, default=True),
    })
    return variables


def _ecs_task_definition() -> dict[str, Any]:
    """The runner's task definition, filled in from the variables."""
    return {
        "family": "{{ family }}",
        "cpu": "{{ cpu }}",
        "memory": "{{ memory }}",
        "executionRoleArn": "{{ execution_role_arn }}",
        "taskRoleArn": "{{ task_role_arn }}",
        "networkMode": "awsvpc",
        "requiresCompatibilities": ["FARGATE"],
        "runtimePlatform": {"cpuArchitecture": "{{ cpu_architecture }}", "operatingSystemFamily": "LINUX"},
        "containerDefinitions": [{
            "name": "{{ container_name }}",
            "image": "{{ image }}",
            "essential": True,
            # The task's only container gets all of it (EC2 launch types need these set).
            "cpu": "{{ cpu }}",
            "memory": "{{ memory }}",
            # ECS runs a small init as PID 1: it reaps and forwards signals even when a
            # user swaps the image's entry point.
            "linuxParameters": {"initProcessEnabled": True},
            "logConfiguration": "{{ log_configuration }}",
            "secrets": "{{ secrets }}",
        }],
    }


def _ecs_task_run_request() -> dict[str, Any]:
    """How the worker runs the runner task, filled in from the variables."""
    return {
        "launchType": "{{ launch_type }}",
        "cluster": "{{ cluster }}",
        "overrides": {
            "containerOverrides": [{
                "name": "{{ container_name }}",
                "command": "{{ command }}",
                "environment": "{{ env }}",
                "cpu": "{{ cpu }}",
                "memory": "{{ memory }}",
            }],
            "cpu": "{{ cpu }}",
            "memory": "{{ memory }}",
            "taskRoleArn": "{{ task_role_arn }}",
        },
        "tags": "{{ labels }}",
        "taskDefinition": "{{ task_definition_arn }}",
    }


def _ecs_template() -> dict[str, Any]:
    passed = ("command", "env", "labels", "name", "network_configuration", "vpc_id", "container_name", "cluster",
              "auto_deregister_task_definition", "match_latest_revision_in_family", "prefect_api_key_secret_arn",
              "prefect_api_auth_string_secret_arn", "execution_role_arn")
    job_configuration: dict[str, Any] = {key: "{{ " + key + " }}" for key in passed}
    job_configuration["task_definition"] = _ecs_task_definition()
    job_configuration["task_run_request"] = _ecs_task_run_request()
    variables = _ecs_template_variables()
    return {"job_configuration": job_configuration, "variables": {"type": "object", "properties": variables}}


def pool_template(pool_type: str) -> dict[str, Any]:
    """A base job template for a work pool of ``pool_type`` with flowrig's defaults,
    for ``prefect work-pool create NAME --type TYPE --base-job-template FILE``."""
    renderers = {"process": _process_template, "docker": _docker_template, "ecs": _ecs_template}
    return renderers[check_pool_type(pool_type)]()
