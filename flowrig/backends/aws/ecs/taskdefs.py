"""ECS task definitions for the runner, scheduler and worker roles, rendered as data.

Everything here is pure: settings in, ``RegisterTaskDefinition`` parameters out, the
same bytes for the same input. Writing files and calling AWS happen elsewhere
(:mod:`flowrig.cli.ecs`, :mod:`flowrig.backends.aws.ecs.register`).

The scheduler and worker containers are named ``dask-scheduler`` and ``dask-worker``,
the names dask-cloudprovider overrides when it starts tasks, so these task definitions
can be handed to it as ``scheduler_task_definition_arn`` / ``worker_task_definition_arn``.
A worker task definition started on its own needs the scheduler's address: either a
command override (what dask-cloudprovider sends) or ``DASK_SCHEDULER_ADDRESS`` in its
environment.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any, Mapping

from flowrig import roles
from flowrig.backends.aws.ecs import defaults
from flowrig.backends.aws.ecs.validate import ROLES, check_role
from flowrig.roles import DASHBOARD_PORT, SCHEDULER_PORT, scheduler_command, worker_command

CONTAINER_NAMES: Mapping[str, str] = {
    "runner": defaults.RUNNER_CONTAINER,
    "scheduler": defaults.SCHEDULER_CONTAINER,
    "worker": defaults.WORKER_CONTAINER,
}

#: Health check of the scheduler: its TLS port accepts TCP connections. Plain TCP is
#: enough to tell a live scheduler from a dead one, and needs no certificate.
SCHEDULER_HEALTH_COMMAND = (
    "CMD",
    "python",
    "-c",
    f"import socket; socket.create_connection(('127.0.0.1', {SCHEDULER_PORT}), 3).close()",
)
#: Health check of a worker: a ``distributed.cli.dask_worker`` process is alive. The
#: check skips its own process, whose command line contains the same words.
WORKER_HEALTH_COMMAND = (
    "CMD",
    "python",
    "-c",
    "import glob, os, sys; me = '/proc/%d/cmdline' % os.getpid(); "
    "sys.exit(0 if any(b'dask_worker' in open(p, 'rb').read() "
    "for p in glob.glob('/proc/[0-9]*/cmdline') if p != me) else 1)",
)


@dataclass(frozen=True)
class RoleSize:
    """CPU units (1024 = one vCPU) and memory (MiB) of one role's tasks."""

    cpu: int
    memory: int


def default_sizes() -> dict[str, RoleSize]:
    """Task size of every role from :mod:`flowrig.backends.aws.ecs.defaults`."""
    return {
        "runner": RoleSize(defaults.RUNNER_CPU, defaults.RUNNER_MEMORY),
        "scheduler": RoleSize(defaults.SCHEDULER_CPU, defaults.SCHEDULER_MEMORY),
        "worker": RoleSize(defaults.WORKER_CPU, defaults.WORKER_MEMORY),
    }


@dataclass(frozen=True)
class TaskDefinitionSettings:
    """What the task definitions of one project (or one run) are made of.

    Parameters
    ----------
    image
        The flowrig image every role runs.
    name
        Project name or run id; goes into family names, tags and the log stream prefix.
    region
        AWS region of the CloudWatch log group.
    log_group
        CloudWatch log group (``awslogs``); it must exist unless ``create_log_group``.
    execution_role_arn
        Role ECS uses to pull the image and write logs (required by Fargate with awslogs).
    task_role_arn
        Role the containers themselves act as; none means no AWS permissions at all.
    sizes
        :class:`RoleSize` per role.
    cpu_architecture
        ``X86_64`` or ``ARM64``, matching the image.
    compatibilities
        ``("FARGATE",)``, or ``("EC2",)`` for tasks on an ECS cluster's own instances.
    environment
        Variables every container gets.
    secrets
        ``NAME -> valueFrom`` (Secrets Manager or SSM ARN) every container gets.
    worker_environment, worker_secrets
        Variables and secrets of the worker container only (a project's
        ``environment`` and ``secrets``); ``environment`` and ``secrets`` win over them.
    runner_task_role_arn
        The runner's task role, when it is not ``task_role_arn``: a runner of an
        ``ecs``/``fargate`` project needs the rights that start its cluster, which the
        flow's tasks should not get.
    tags
        Tags on every task definition (``flowrig-role`` is added per role).
    scheduler_no_client_timeout
        Seconds a scheduler lives once no client is connected (``None``: the image's
        default, :mod:`flowrig.roles.lifetime`).
    worker_threads
        ``--nthreads`` of each worker.
    log_stream_prefix
        ``awslogs-stream-prefix``; defaults to ``name``.
    scheduler_args, worker_args
        Flags after the scheduler's and workers' own; default: the baked TLS files.
    volumes, mount_points
        Task volumes and the containers' mount points (workers always, the scheduler
        when ``mount_on_scheduler``), as in the ECS API.
    create_log_group
        Let ECS create the log group on first use; the execution role then needs
        ``logs:CreateLogGroup``, which AWS's standard execution policy does not grant.
    worker_stop_timeout
        Seconds from SIGTERM to SIGKILL of the worker container (``stopTimeout``; at
        most 120 on Fargate); ``None``: ECS's default (30 s on Fargate).
    worker_gpu
        GPUs of the worker container (``resourceRequirements``; EC2 capacity only). The
        ECS agent hands them to the container (``NVIDIA_VISIBLE_DEVICES``).
    """

    image: str
    name: str
    region: str
    log_group: str
    execution_role_arn: str | None = None
    task_role_arn: str | None = None
    sizes: Mapping[str, RoleSize] = field(default_factory=default_sizes)
    cpu_architecture: str = defaults.CPU_ARCHITECTURE
    compatibilities: tuple[str, ...] = ("FARGATE",)
    environment: Mapping[str, str] = field(default_factory=dict)
    secrets: Mapping[str, str] = field(default_factory=dict)
    worker_environment: Mapping[str, str] = field(default_factory=dict)
    worker_secrets: Mapping[str, str] = field(default_factory=dict)
    runner_task_role_arn: str | None = None
    tags: Mapping[str, str] = field(default_factory=dict)
    scheduler_no_client_timeout: float | None = None
    worker_threads: int = 1
    log_stream_prefix: str | None = None
    scheduler_args: tuple[str, ...] | None = None
    worker_args: tuple[str, ...] | None = None
    volumes: tuple[Mapping[str, Any], ...] = ()
    mount_points: tuple[Mapping[str, Any], ...] = ()
    mount_on_scheduler: bool = False
    create_log_group: bool = False
    worker_stop_timeout: int | None = None
    worker_gpu: int = 0


def spot_environment(spot: Any) -> dict[str, str]:
    """What a Spot worker's container adds to its environment: it runs under the drain
    supervisor (:mod:`flowrig.roles.drain`) and, on Fargate Spot's notice, hands its work
    over within :data:`~flowrig.backends.aws.ecs.defaults.SPOT_STOP_TIMEOUT`."""
    return {roles.NOTICE_ENV: "ecs", roles.DRAIN_ENV: str(defaults.SPOT_DRAIN_SECONDS)} if spot else {}


def scheduler_extra_args(delivered: bool = False) -> list[str]:
    """What follows ``dask-scheduler [--no-client-timeout S]``: listen on TLS only, with the
    baked files, or (``delivered``) with those the run delivers, which the role's
    entry point names itself once they are in memory."""
    return ["--protocol", "tls", *([] if delivered else roles.tls_flags(require_files=False))]


def worker_extra_args(delivered: bool = False) -> list[str]:
    """What follows a worker's own flags: the baked TLS files (none when ``delivered``,
    as for :func:`scheduler_extra_args`)."""
    return [] if delivered else roles.tls_flags(require_files=False)


def family_name(name: str, role: str) -> str:
    """``flowrig-<name>-<role>``."""
    return f"{defaults.FAMILY_PREFIX}-{name}-{role}"


def project_name_from_image(image: str) -> str:
    """A family-safe name from an image reference: ``reg:5000/team/seed:1.0`` -> ``seed``."""
    ref = image.split("@", 1)[0]
    last = ref.rsplit("/", 1)[-1]
    repo = last.split(":", 1)[0]
    return re.sub(r"[^A-Za-z0-9_-]+", "-", repo).strip("-") or "project"


def _health_check(command: tuple[str, ...]) -> dict[str, Any]:
    return {
        "command": list(command),
        "interval": defaults.HEALTH_INTERVAL,
        "timeout": defaults.HEALTH_TIMEOUT,
        "retries": defaults.HEALTH_RETRIES,
        "startPeriod": defaults.HEALTH_START_PERIOD,
    }


def _args(args: tuple[str, ...] | None) -> list[str] | None:
    return None if args is None else list(args)


def _pairs(mapping: Mapping[str, str], key: str, value: str) -> list[dict[str, str]]:
    # Sorted, so the output does not depend on the order options were given in.
    return [{key: k, value: mapping[k]} for k in sorted(mapping)]


def container_definition(role: str, settings: TaskDefinitionSettings) -> dict[str, Any]:
    """The one container of ``role``'s task definition."""
    size = settings.sizes[role]
    container: dict[str, Any] = {
        "name": CONTAINER_NAMES[role],
        "image": settings.image,
        "essential": True,
        # The task's only container gets all of it (EC2 launch types need these set).
        "cpu": size.cpu,
        "memory": size.memory,
        # ECS runs a small init as PID 1: it reaps zombies and forwards signals even
        # when a user swaps the image's entrypoint.
        "linuxParameters": {"initProcessEnabled": True},
        "logConfiguration": {
            "logDriver": "awslogs",
            "options": {
                "awslogs-group": settings.log_group,
                "awslogs-region": settings.region,
                "awslogs-stream-prefix": settings.log_stream_prefix or settings.name,
            },
        },
    }
    if settings.create_log_group:
        container["logConfiguration"]["options"]["awslogs-create-group"] = "true"
    if role == "runner":
        container["command"] = ["run"]
    elif role == "scheduler":
        container["command"] = scheduler_command(
            settings.scheduler_no_client_timeout, _args(settings.scheduler_args)
        )
        container["portMappings"] = [
            {"containerPort": SCHEDULER_PORT, "protocol": "tcp"},
            {"containerPort": DASHBOARD_PORT, "protocol": "tcp"},
        ]
        container["healthCheck"] = _health_check(SCHEDULER_HEALTH_COMMAND)
    else:
        container["command"] = worker_command(settings.worker_threads, _args(settings.worker_args))
        container["healthCheck"] = _health_check(WORKER_HEALTH_COMMAND)
        if settings.worker_stop_timeout is not None:
            container["stopTimeout"] = settings.worker_stop_timeout
        if settings.worker_gpu:
            container["resourceRequirements"] = [{"type": "GPU", "value": str(settings.worker_gpu)}]
    if role in ("scheduler", "worker"):
        limit = defaults.NOFILE_LIMIT
        container["ulimits"] = [{"name": "nofile", "softLimit": limit, "hardLimit": limit}]
    if settings.mount_points and (role == "worker" or (role == "scheduler" and settings.mount_on_scheduler)):
        container["mountPoints"] = [dict(mount) for mount in settings.mount_points]
    environment, secrets = dict(settings.environment), dict(settings.secrets)
    if role == "worker":
        environment = {**settings.worker_environment, **environment}
        secrets = {**settings.worker_secrets, **secrets}
    if environment:
        container["environment"] = _pairs(environment, "name", "value")
    if secrets:
        container["secrets"] = _pairs(secrets, "name", "valueFrom")
    return container


def render_task_definition(role: str, settings: TaskDefinitionSettings) -> dict[str, Any]:
    """``RegisterTaskDefinition`` parameters of one role.

    Parameters
    ----------
    role
        ``runner``, ``scheduler`` or ``worker``.
    settings
        Image, names, sizes and roles; see :class:`TaskDefinitionSettings`.

    Returns
    -------
    dict
        Ready for ``aws ecs register-task-definition --cli-input-json`` or boto3's
        ``register_task_definition(**params)``. Not validated: see
        :func:`flowrig.backends.aws.ecs.validate.check_task_definition`.
    """
    check_role(role)
    size = settings.sizes[role]
    tags = {**settings.tags, "flowrig-role": role}
    params: dict[str, Any] = {
        "family": family_name(settings.name, role),
        "networkMode": "awsvpc",
        "requiresCompatibilities": list(settings.compatibilities),
        "cpu": str(size.cpu),
        "memory": str(size.memory),
        "runtimePlatform": {
            "cpuArchitecture": settings.cpu_architecture,
            "operatingSystemFamily": "LINUX",
        },
        "containerDefinitions": [container_definition(role, settings)],
        "tags": _pairs(tags, "key", "value"),
    }
    if settings.volumes and (role == "worker" or (role == "scheduler" and settings.mount_on_scheduler)):
        params["volumes"] = [dict(volume) for volume in settings.volumes]
    if settings.execution_role_arn:
        params["executionRoleArn"] = settings.execution_role_arn
    task_role_arn = (settings.runner_task_role_arn if role == "runner" else None) or settings.task_role_arn
    if task_role_arn:
        params["taskRoleArn"] = task_role_arn
    return params


def render_task_definitions(
    settings: TaskDefinitionSettings, roles: tuple[str, ...] | list[str] = ROLES
) -> dict[str, dict[str, Any]]:
    """:func:`render_task_definition` for each of ``roles``, keyed by role."""
    return {role: render_task_definition(role, settings) for role in roles}


def to_json(document: Any) -> str:
    """Stable JSON text: sorted keys, two-space indent, one trailing newline."""
    return json.dumps(document, sort_keys=True, indent=2, ensure_ascii=False) + "\n"
