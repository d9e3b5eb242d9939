"""A project's task definitions: ``flowrig ecs task-definitions`` and the runner of a
deployment on an ECS work pool.

The project's ``flowrig.toml`` is the source (``[cluster] worker_threads`` and
``no_client_timeout``, and of ``[cluster.options]`` the task sizes, roles, region, log
group, architecture, extra flags, volumes, tags, and the workers' ``environment`` and
``secrets``); the command line only overrides it (:class:`TaskDefinitionRequest`).
Every input that is missing is named in one error, so one fix-up round is enough.
Rendering stays in :mod:`~flowrig.backends.aws.ecs.taskdefs`; this module decides what goes
into it and checks it, and calls no AWS API.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Mapping

from flowrig.backends.aws.ecs import defaults, taskdefs, validate
from flowrig.errors import BadInput

if TYPE_CHECKING:
    from flowrig.backends.aws.ecs.options import ECSOptions
    from flowrig.project import Project

#: Backends whose runner may run in an ECS task: its cluster is made of ECS tasks too.
RUNNER_BACKENDS = ("ecs", "fargate")
#: The flag that lets a project of another backend run its whole cluster in the runner task.
ALLOW_LOCAL_RUNNER = "--allow-local-runner"


@dataclass(frozen=True)
class TaskDefinitionRequest:
    """What a command line asks for; ``None`` means "from the project, else the default".

    Parameters
    ----------
    image
        The image every role runs.
    roles
        Roles to render (default: all three).
    name
        Name in families (``flowrig-NAME-ROLE``); default: the project's name, else the
        image's repository.
    sizes
        ``role -> (cpu, memory)`` overrides; either may be ``None``.
    worker_threads
        Threads per worker; default ``[cluster] worker_threads``.
    execution_role_arn, task_role_arn, runner_task_role_arn
        Roles; ``task_role_arn`` is every container's (default: the project's, for
        scheduler and workers), ``runner_task_role_arn`` the runner's alone.
    region, log_group, create_log_group, cpu_architecture
        As in :class:`~flowrig.backends.aws.ecs.taskdefs.TaskDefinitionSettings`.
    environment, secrets, tags
        For every container (every task definition), over the project's.
    allow_local_runner
        Render a runner for a project whose backend is not ``ecs`` or ``fargate``: its
        whole cluster then runs inside the runner's one task.
    local_runner_fix
        What else a user of a local project may do, in the refusal of its runner.
    runner_role_flag
        The flag that gives the runner's task role, when it is required: the runner of
        an ``ecs``/``fargate`` project starts its cluster with it (a deployment's
        runner task). ``None``: not required.
    """

    image: str | None = None
    roles: tuple[str, ...] | None = None
    name: str | None = None
    sizes: Mapping[str, tuple[int | None, int | None]] = field(default_factory=dict)
    worker_threads: int | None = None
    execution_role_arn: str | None = None
    task_role_arn: str | None = None
    runner_task_role_arn: str | None = None
    region: str | None = None
    log_group: str | None = None
    create_log_group: bool = False
    cpu_architecture: str | None = None
    environment: Mapping[str, str] = field(default_factory=dict)
    secrets: Mapping[str, str] = field(default_factory=dict)
    tags: Mapping[str, str] = field(default_factory=dict)
    allow_local_runner: bool = False
    runner_role_flag: str | None = None
    local_runner_fix: str = "render --role scheduler --role worker only, "


def family_safe(name: str) -> str:
    """``name`` with what a task definition family cannot hold replaced by ``-``."""
    return re.sub(r"[^A-Za-z0-9_-]+", "-", name).strip("-") or "project"


def project_options(project: "Project | None") -> "ECSOptions | None":
    """The project's ``[cluster.options]`` as ECS options, when its backend is ECS's."""
    if project is None or project.cluster.backend not in RUNNER_BACKENDS:
        return None
    from flowrig.backends import get_backend

    return get_backend(project.cluster.backend).parse_options(project.cluster.options)


def check_runner_backend(project: "Project | None", allow_local_runner: bool, fix: str = "") -> None:
    """Refuse a runner task for a project whose cluster would not be ECS tasks.

    Raises
    ------
    BadInput
        For the ``docker`` backend (an ECS task has no Docker engine), and for
        ``local`` unless ``allow_local_runner``.
    """
    if project is None:
        return
    backend = project.cluster.backend
    if backend == "docker":
        raise BadInput(
            f"project {project.name}'s backend is docker, which needs a Docker engine an ECS task does not have: "
            'set backend = "fargate" (or "ecs") in [cluster] of flowrig.toml'
        )
    if backend == "local" and not allow_local_runner:
        raise BadInput(
            f"project {project.name}'s backend is local: its runner task would run the whole cluster inside "
            'that one task; set backend = "fargate" (or "ecs") in [cluster] of flowrig.toml, '
            f"{fix}or pass {ALLOW_LOCAL_RUNNER} to run it in one task"
        )


def _sizes(request: TaskDefinitionRequest, options: "ECSOptions | None") -> dict[str, taskdefs.RoleSize]:
    base = taskdefs.default_sizes()
    if options is not None:
        base["scheduler"] = taskdefs.RoleSize(options.scheduler_cpu, options.scheduler_mem)
        base["worker"] = taskdefs.RoleSize(options.worker_cpu, options.worker_mem)
    sizes = {}
    for role, size in base.items():
        cpu, memory = request.sizes.get(role, (None, None))
        sizes[role] = taskdefs.RoleSize(size.cpu if cpu is None else cpu, size.memory if memory is None else memory)
    return sizes


def task_definition_settings(
    request: TaskDefinitionRequest,
    project: "Project | None" = None,
    environ: Mapping[str, str] | None = None,
) -> tuple[taskdefs.TaskDefinitionSettings, tuple[str, ...]]:
    """Decide and check the settings of a project's task definitions.

    Returns
    -------
    (settings, roles)
        The settings, and the roles to render in ECS's order.

    Raises
    ------
    BadInput
        Everything missing at once (image, region, execution role), else the first
        invalid input: a role, a family, a Fargate size, a role ARN, a variable name, a
        secret-looking plain variable, or a runner for a local or docker project.
    """
    environ = os.environ if environ is None else environ
    asked = {validate.check_role(role) for role in (request.roles or validate.ROLES)}
    roles = tuple(role for role in validate.ROLES if role in asked)
    if "runner" in roles:
        check_runner_backend(project, request.allow_local_runner, fix=request.local_runner_fix)
    options = project_options(project)
    region, execution_role_arn = _required(request, project, options, roles, environ)
    default_name = project.name if project is not None else taskdefs.project_name_from_image(request.image)
    name = validate.check_family(request.name or family_safe(default_name))
    sizes = _sizes(request, options)
    for role in roles:
        validate.check_fargate_size(role, sizes[role].cpu, sizes[role].memory)
    task_role_arn = request.task_role_arn or (options.task_role_arn if options else None)
    validate.check_role_arn("--execution-role-arn", execution_role_arn)
    validate.check_role_arn("--task-role-arn", task_role_arn)
    validate.check_role_arn("--runner-task-role-arn", request.runner_task_role_arn)
    validate.check_user_environment(request.environment, request.secrets)
    worker_environment = dict(options.environment) if options else {}
    worker_secrets = dict(options.secrets) if options else {}
    validate.check_user_environment(worker_environment, worker_secrets)
    # Workers on Fargate Spot hand their work over on its notice, as a run's own do.
    spot = bool(options and options.worker_spot())
    worker_environment.update(taskdefs.spot_environment(spot))
    threads, worker_args, no_client_timeout = _cluster_settings(request, project, options)
    settings = taskdefs.TaskDefinitionSettings(
        image=request.image,
        name=name,
        region=region,
        log_group=request.log_group or (options.cloudwatch_logs_group if options else None)
        or defaults.LOG_GROUP.format(name=name),
        log_stream_prefix=options.cloudwatch_logs_stream_prefix if options else None,
        create_log_group=request.create_log_group,
        execution_role_arn=execution_role_arn,
        task_role_arn=task_role_arn,
        runner_task_role_arn=request.runner_task_role_arn,
        sizes=sizes,
        cpu_architecture=(request.cpu_architecture or (options.cpu_architecture if options else None)
                          or defaults.CPU_ARCHITECTURE).upper(),
        environment=dict(request.environment),
        secrets=dict(request.secrets),
        worker_environment=worker_environment,
        worker_secrets=worker_secrets,
        tags={"flowrig-project": name, **(dict(options.tags) if options else {}), **request.tags},
        scheduler_no_client_timeout=None if no_client_timeout is None else float(no_client_timeout),
        worker_threads=threads,
        # Task definitions rendered ahead of a run use the image's baked certificates.
        scheduler_args=tuple((list(options.scheduler_extra_args) if options else []) + taskdefs.scheduler_extra_args()),
        worker_args=tuple(worker_args + taskdefs.worker_extra_args()),
        volumes=tuple(options.volumes) if options else (),
        mount_points=tuple(options.mount_points) if options else (),
        mount_on_scheduler=bool(options and options.mount_volumes_on_scheduler),
        worker_stop_timeout=defaults.SPOT_STOP_TIMEOUT if spot else None,
        # GPU workers run on EC2 capacity (a capacity provider of GPU instances).
        worker_gpu=options.worker_gpu if options else 0,
        compatibilities=("EC2",) if options and options.worker_gpu else ("FARGATE",),
    )
    if settings.cpu_architecture not in ("X86_64", "ARM64"):
        raise BadInput(f"cpu architecture {settings.cpu_architecture!r} is not one ECS runs: use X86_64 or ARM64")
    return settings, roles


def render_project_task_definitions(
    request: TaskDefinitionRequest,
    project: "Project | None" = None,
    environ: Mapping[str, str] | None = None,
) -> tuple[taskdefs.TaskDefinitionSettings, dict[str, dict[str, Any]]]:
    """The settings of :func:`task_definition_settings` and the task definitions of its
    roles (``role -> RegisterTaskDefinition`` parameters), each checked against the ECS
    API model."""
    settings, roles = task_definition_settings(request, project, environ)
    documents = taskdefs.render_task_definitions(settings, roles)
    if "worker" in documents and project is not None and project.cluster.worker_groups:
        del documents["worker"]
        documents.update(_group_documents(settings, project))
    for params in documents.values():
        validate.check_task_definition(params)
    return settings, documents


def _group_documents(settings: taskdefs.TaskDefinitionSettings, project: "Project") -> dict[str, dict[str, Any]]:
    """``worker-GROUP`` -> the worker task definition of each of the project's worker
    groups (its shape, market and Dask resources), as a run registers them."""
    from flowrig.backends import get_backend
    from flowrig.backends.aws.ecs.group_launch import group_launches, group_settings, group_task_definition
    from flowrig.backends.base import WorkerGroupSpec
    from flowrig.common.routes import worker_resources

    options = project_options(project)
    assert options is not None  # a project of groups here is an ecs/fargate one
    backend = project.cluster.backend
    fargate = backend == "fargate" if options.fargate_workers is None else options.fargate_workers
    specs = []
    for group in project.cluster.worker_groups:
        threads = group.worker_threads or settings.worker_threads
        specs.append(WorkerGroupSpec(
            group.name, group.size, threads, worker_resources(group.name, threads, group.resources, group.gpu),
            cpu=None if group.cpu is None else float(group.cpu), memory_mib=group.memory_mib, gpu=group.gpu,
            market=group.market, options=dict(group.options)))
    get_backend(backend).check_worker_groups(project.cluster.worker_groups, project.cluster.options)
    tls = taskdefs.worker_extra_args()
    args = list(settings.worker_args or ())
    launches = group_launches(backend, options, specs, fargate_workers=fargate, spot=options.worker_spot(),
                              base_args=args[: len(args) - len(tls)], tls_args=tls)
    # The run's Spot settings are each group's to decide.
    plain = {k: v for k, v in settings.worker_environment.items() if k not in taskdefs.spot_environment(True)}
    return {
        f"worker-{launch.name}": group_task_definition(taskdefs.render_task_definition("worker", replace(
            group_settings(settings, launch, settings.environment), worker_environment=plain)), settings.name, launch)
        for launch in launches
    }


def _required(
    request: TaskDefinitionRequest,
    project: "Project | None",
    options: "ECSOptions | None",
    roles: tuple[str, ...],
    environ: Mapping[str, str],
) -> tuple[str, str]:
    """The region and the execution role, refusing everything missing at once."""
    region = (
        request.region or (options.region_name if options else None)
        or environ.get("AWS_REGION") or environ.get("AWS_DEFAULT_REGION")
    )
    execution_role_arn = request.execution_role_arn or (options.execution_role_arn if options else None)
    runner_role_missing = bool(
        request.runner_role_flag and "runner" in roles and not request.runner_task_role_arn
        and project is not None and project.cluster.backend in RUNNER_BACKENDS
    )
    missing = [
        text for text, absent in (
            ("--image (the image every role runs, e.g. --image registry/project:1.0)", not request.image),
            ("--region (or AWS_REGION, or region_name in [cluster.options])", not region),
            ("--execution-role-arn (or execution_role_arn in [cluster.options]; Fargate tasks that log to "
             "CloudWatch need one: arn:aws:iam::ACCOUNT:role/NAME, e.g. AWS's ecsTaskExecutionRole)",
             not execution_role_arn),
            (f"{request.runner_role_flag} (the runner's task role: it starts the run's ECS tasks; "
             "flowrig aws iam-policy --backend ecs prints what it needs)", runner_role_missing),
        ) if absent
    ]
    if missing:
        raise BadInput(f"missing {'; '.join(missing)}")
    assert request.image and region and execution_role_arn
    return region, execution_role_arn


def _cluster_settings(
    request: TaskDefinitionRequest, project: "Project | None", options: "ECSOptions | None"
) -> tuple[int, list[str], Any]:
    """The workers' threads and arguments, and the scheduler's no-client timeout."""
    cluster = project.cluster if project is not None else None
    threads = request.worker_threads if request.worker_threads is not None else (
        cluster.worker_threads if cluster is not None else 1
    )
    if threads < 1:
        raise BadInput(f"--worker-threads {threads} is not a number of threads: use 1 or more")
    worker_args = list(options.worker_extra_args) if options else []
    if not any(arg.startswith(("--dashboard", "--no-dashboard")) for arg in worker_args):
        # Nothing would reach a worker's dashboard; it would only show its tasks to the VPC.
        worker_args.append("--no-dashboard")
    no_client_timeout = options.scheduler_timeout if options and options.scheduler_timeout is not None else (
        cluster.no_client_timeout if cluster is not None else None
    )
    return threads, worker_args, no_client_timeout
