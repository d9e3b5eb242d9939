"""Work pool types a flowrig image runs on, and the job variables of a deployment on
each (pure: data in, data out); their base job templates are in
:mod:`~flowrig.deploy.pool_templates`.

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
from :func:`~flowrig.deploy.pool_templates.pool_template`; an ECS pool needs flowrig's template (its task definition
has the runner's shape).
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass, field
from typing import Any, Mapping

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
            "container_create_kwargs": {key: copy_json(value) for key, value in RUNNER_HARDENING.items()},
        }
        if inputs.network == "host":
            variables["network_mode"] = "host"
        elif inputs.network:
            variables["networks"] = [inputs.network]
        return variables
    return _ecs_variables(inputs)


def copy_json(value: Any) -> Any:
    """A deep copy of JSON-like ``value`` (mappings and sequences as dicts and lists)."""
    if isinstance(value, Mapping):
        return {k: copy_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [copy_json(v) for v in value]
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
