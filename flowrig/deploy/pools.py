"""Work pool types a flowrig image runs on, their base job templates, and the job
variables of a deployment on each (pure: data in, data out).

Each pool type starts the image with its entry point, which runs the baked project as
the worker's flow run (``prefect flow-run execute``, ``PREFECT__FLOW_RUN_ID`` set) on a
cluster of its own:

- ``docker``: the Prefect Docker worker starts the image. The container runs with the
  docker backend's runner hardening: no capabilities, ``no-new-privileges``, a
  read-only root with a ``noexec`` ``/tmp`` in memory (Prefect's home moves there), a
  process limit.
- ``process``: the Prefect process worker runs a command on its host; the command is
  ``docker run`` of the image with the same hardening, so the worker's host needs the
  Docker CLI and nothing of the flow. Only named variables reach the container
  (``-e NAME``: the flow run id, the API URL and credentials, the deployment's own
  ``env``), never the rest of the worker's environment; SIGTERM to the worker's child
  (a cancelled run) is forwarded by ``docker run`` to the container, which tears its
  cluster down. It joins the host's network by default, so that it reaches the Prefect
  API at the same address the worker does (a server on the worker's loopback too).
- ``ecs``: the Prefect ECS worker registers and runs the runner task definition that
  ``flowrig ecs task-definitions`` renders (sizes, roles, logs, architecture, init
  process), through the variables of flowrig's ECS pool template, and starts it in the
  project's subnets and security groups.

Every deployment carries what its runs need in its own job variables, so it runs the
same on a pool made from Prefect's default template (process, docker) and on one made
from :func:`pool_template`; an ECS pool needs flowrig's template (its task definition
has the runner's shape).
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass, field
from typing import Any, Mapping

from flowrig.backends.aws.ecs import defaults as ecs_defaults
from flowrig.backends.docker.plans import PIDS_LIMIT, PREFECT_HOME, SCRATCH
from flowrig.errors import BadInput

#: Work pool types flowrig renders job variables for.
POOL_TYPES = ("process", "docker", "ecs")
#: What every pool type sends to the image; its entry point runs the baked project as
#: the worker's flow run.
ENGINE_COMMAND = "prefect flow-run execute"
#: Image pull policies, in Prefect's Docker vocabulary -> ``docker run --pull``.
PULL_POLICIES = {"IfNotPresent": "missing", "Always": "always", "Never": "never"}
DEFAULT_PULL_POLICY = "IfNotPresent"
#: Variables a process pool's ``docker run`` hands from the worker to the container
#: when they are set: what the run needs of the worker and nothing else.
PROCESS_PASSTHROUGH_ENV = (
    "PREFECT__FLOW_RUN_ID",
    "PREFECT_API_URL",
    "PREFECT_API_KEY",
    "PREFECT_API_AUTH_STRING",
    "PREFECT_LOGGING_LEVEL",
)
#: The network a process pool's container joins unless ``--network`` names another.
PROCESS_NETWORK = "host"
#: The runner container's hardening, as the Docker SDK (and the docker worker's
#: ``container_create_kwargs``) takes it: the docker backend's, for a runner.
RUNNER_HARDENING: Mapping[str, Any] = {
    "read_only": True,
    "tmpfs": dict(SCRATCH),
    "cap_drop": ["ALL"],
    "security_opt": ["no-new-privileges:true"],
    "pids_limit": PIDS_LIMIT["runner"],
}
#: Environment the runner container needs with a read-only root.
RUNNER_ENV: Mapping[str, str] = {"PREFECT_HOME": PREFECT_HOME}
#: How an ECS pool's worker may start the runner task.
ECS_LAUNCH_TYPES = ("FARGATE", "FARGATE_SPOT", "EC2", "EXTERNAL")
#: Variables only flowrig's ECS template has: a pool without them cannot give the
#: runner's task definition its shape.
ECS_TEMPLATE_VARIABLES = ("log_configuration", "cpu_architecture", "secrets")


@dataclass(frozen=True)
class JobInputs:
    """What a deployment's job variables are made of.

    Parameters
    ----------
    image
        The image reference the workers start.
    pull_policy
        ``IfNotPresent``, ``Always`` or ``Never`` (docker and process pools).
    network
        Docker network of the runner container (docker: ``networks``, or
        ``network_mode`` for ``host``; process: ``docker run --network``).
    env
        Variables of the runner container (docker, process) or the runner task (ecs).
    pass_env
        Names of a process worker's own variables its container gets (process).
    ecs_runner
        The runner's task definition (``RegisterTaskDefinition`` parameters, as
        :mod:`flowrig.backends.aws.ecs.taskdefs` renders it), for an ECS pool.
    ecs_cluster, ecs_vpc, ecs_subnets, ecs_security_groups, ecs_public_ip, ecs_launch_type
        Where an ECS pool's worker starts the runner task.
    """

    image: str
    pull_policy: str = DEFAULT_PULL_POLICY
    network: str | None = None
    env: Mapping[str, str] = field(default_factory=dict)
    pass_env: tuple[str, ...] = ()
    ecs_runner: Mapping[str, Any] | None = None
    ecs_cluster: str | None = None
    ecs_vpc: str | None = None
    ecs_subnets: tuple[str, ...] = ()
    ecs_security_groups: tuple[str, ...] = ()
    ecs_public_ip: bool = False
    ecs_launch_type: str = "FARGATE"


def check_pool_type(pool_type: str) -> str:
    """``pool_type`` when flowrig renders jobs for it.

    Raises
    ------
    BadInput
        For other types (kubernetes and the like), naming the supported ones.
    """
    if pool_type not in POOL_TYPES:
        raise BadInput(
            f"work pool type {pool_type!r} is not one flowrig deploys to: use one of {', '.join(POOL_TYPES)}"
        )
    return pool_type


def check_pull_policy(policy: str) -> str:
    """``policy`` when it is one of :data:`PULL_POLICIES`."""
    if policy not in PULL_POLICIES:
        raise BadInput(f"--pull-policy {policy!r} is not an image pull policy: use one of {', '.join(PULL_POLICIES)}")
    return policy


# --- job variables ---------------------------------------------------------------------


def process_command(image: str, *, pull_policy: str = DEFAULT_PULL_POLICY, network: str | None = None,
                    env_names: tuple[str, ...] = ()) -> str:
    """The process worker's command: ``docker run`` of the image, hardened, as the
    worker's flow run."""
    args = ["docker", "run", "--rm", "--pull", PULL_POLICIES[check_pull_policy(pull_policy)],
            "--network", network or PROCESS_NETWORK, "--read-only"]
    for path, options in sorted(SCRATCH.items()):
        args += ["--tmpfs", f"{path}:{options}"]
    args += ["--cap-drop", "ALL", "--security-opt", "no-new-privileges:true",
             "--pids-limit", str(PIDS_LIMIT["runner"])]
    for name, value in sorted(RUNNER_ENV.items()):
        args += ["-e", f"{name}={value}"]
    # Names only: docker takes each value from the worker's environment of the command.
    for name in [*PROCESS_PASSTHROUGH_ENV, *sorted(set(env_names) - set(PROCESS_PASSTHROUGH_ENV))]:
        args += ["-e", name]
    args += [image, *ENGINE_COMMAND.split()]
    return shlex.join(args)


def _ecs_variables(inputs: JobInputs) -> dict[str, Any]:
    runner = inputs.ecs_runner
    if runner is None:
        raise BadInput("an ecs work pool needs the runner's task definition")
    [container] = runner["containerDefinitions"]
    variables: dict[str, Any] = {
        "image": inputs.image,
        "container_name": container["name"],
        "family": runner["family"],
        "cpu": int(runner["cpu"]),
        "memory": int(runner["memory"]),
        "execution_role_arn": runner.get("executionRoleArn"),
        "task_role_arn": runner.get("taskRoleArn"),
        "cpu_architecture": runner["runtimePlatform"]["cpuArchitecture"],
        "log_configuration": container["logConfiguration"],
        "secrets": list(container.get("secrets", [])),
        "command": ENGINE_COMMAND,
        "launch_type": inputs.ecs_launch_type,
        "env": dict(inputs.env),
        # The worker reuses the family's latest revision when it is the same, instead
        # of registering a revision per flow run.
        "match_latest_revision_in_family": True,
    }
    if inputs.ecs_cluster:
        variables["cluster"] = inputs.ecs_cluster
    if inputs.ecs_subnets:
        if not inputs.ecs_vpc:
            raise BadInput("subnets of the runner task need their VPC: set vpc in [cluster.options] or pass --vpc")
        variables["vpc_id"] = inputs.ecs_vpc
        network: dict[str, Any] = {
            "subnets": list(inputs.ecs_subnets),
            "assignPublicIp": "ENABLED" if inputs.ecs_public_ip else "DISABLED",
        }
        if inputs.ecs_security_groups:
            network["securityGroups"] = list(inputs.ecs_security_groups)
        variables["network_configuration"] = network
    elif inputs.ecs_vpc:
        variables["vpc_id"] = inputs.ecs_vpc
    return {key: value for key, value in variables.items() if value not in (None, [], {})}


def job_variables(pool_type: str, inputs: JobInputs) -> dict[str, Any]:
    """The job variables of a deployment of ``inputs.image`` on a pool of ``pool_type``."""
    check_pool_type(pool_type)
    check_pull_policy(inputs.pull_policy)
    if inputs.pass_env and pool_type != "process":
        raise BadInput("--pass-env hands a process worker's own variables to its container: it is for process pools")
    if inputs.ecs_launch_type not in ECS_LAUNCH_TYPES:
        raise BadInput(f"--launch-type {inputs.ecs_launch_type!r}: use one of {', '.join(ECS_LAUNCH_TYPES)}")
    if pool_type == "process":
        names = tuple(sorted({*inputs.env, *inputs.pass_env}))
        variables: dict[str, Any] = {
            "command": process_command(inputs.image, pull_policy=inputs.pull_policy, network=inputs.network,
                                       env_names=names),
            "stream_output": True,
        }
        if inputs.env:
            variables["env"] = dict(inputs.env)
        return variables
    if pool_type == "docker":
        variables = {
            "image": inputs.image,
            "image_pull_policy": inputs.pull_policy,
            "command": ENGINE_COMMAND,
            "env": {**RUNNER_ENV, **inputs.env},
            "auto_remove": True,
            "stream_output": True,
            "container_create_kwargs": {key: _copy(value) for key, value in RUNNER_HARDENING.items()},
        }
        if inputs.network == "host":
            variables["network_mode"] = "host"
        elif inputs.network:
            variables["networks"] = [inputs.network]
        return variables
    return _ecs_variables(inputs)


def _copy(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: _copy(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_copy(v) for v in value]
    return value


def check_job_variables(pool_name: str, pool_type: str, variables: Mapping[str, Any],
                        template: Mapping[str, Any]) -> None:
    """Refuse job variables the pool's base job template has no variable for: the worker
    would drop them silently.

    Raises
    ------
    BadInput
        Naming the variables and how to give the pool flowrig's template.
    """
    known = set(((template.get("variables") or {}).get("properties") or {}))
    missing = sorted(set(variables) - known)
    if missing:
        raise BadInput(
            f"work pool {pool_name!r} has no job variable {', '.join(missing)}: give it flowrig's template: "
            f"flowrig deploy --pool-template {pool_type} > {pool_type}.json && prefect work-pool update "
            f"{pool_name} --base-job-template {pool_type}.json"
        )


# --- base job templates -----------------------------------------------------------------


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
            _nullable({"type": "object", "additionalProperties": True}), default=_copy(RUNNER_HARDENING),
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


def _ecs_template() -> dict[str, Any]:
    task_definition = {
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
    task_run_request = {
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
    passed = ("command", "env", "labels", "name", "network_configuration", "vpc_id", "container_name", "cluster",
              "auto_deregister_task_definition", "match_latest_revision_in_family", "prefect_api_key_secret_arn",
              "prefect_api_auth_string_secret_arn", "execution_role_arn")
    job_configuration: dict[str, Any] = {key: "{{ " + key + " }}" for key in passed}
    job_configuration["task_definition"] = task_definition
    job_configuration["task_run_request"] = task_run_request
    variables = _ecs_template_variables()
    return {"job_configuration": job_configuration, "variables": {"type": "object", "properties": variables}}


def pool_template(pool_type: str) -> dict[str, Any]:
    """A base job template for a work pool of ``pool_type`` with flowrig's defaults,
    for ``prefect work-pool create NAME --type TYPE --base-job-template FILE``."""
    renderers = {"process": _process_template, "docker": _docker_template, "ecs": _ecs_template}
    return renderers[check_pool_type(pool_type)]()
