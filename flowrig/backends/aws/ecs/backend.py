"""``ecs`` and ``fargate``: one run's cluster as ECS tasks of the run's image.

The scheduler and the workers are ECS tasks that flowrig starts, watches and stops
itself (:class:`~flowrig.backends.aws.ecs.launcher.ECSLauncher` in a
:class:`~flowrig.backends.pool.cluster.PoolCluster`), on distributed's public cluster API. The
AWS resources the tasks need are created for the run when the project names none:
tagged with the run id, the security group admitting only the VPC (the dashboard only
when asked), and all of it deleted by :meth:`StartedCluster.close`
(:class:`~flowrig.backends.aws.resources.RunResources`). The execution role is the one
run makes for itself (the one reader of the run's secret), unless the project names one.

Mutual TLS uses the run's certificates: they go into one Secrets Manager secret of the
run, which the task definitions flowrig registers name in ``secrets``; ECS hands it to
the containers, whose entry point installs it in memory and names the files in the
Dask flags. Task definitions of the project's own get flags naming the files baked into
the image instead. The runner's client gets the run's
:class:`distributed.security.Security`. Distributed does not check host names on
``tls://`` connections (its TLS context sets ``check_hostname = False``; trust is the
run's CA alone), so the leaf need not name the addresses ECS gives the tasks.

The start is :class:`~flowrig.backends.pool.backend.PoolBackend`'s, the one every cloud
backend shares; :class:`ECSRun` fills it in: resources and lease (``prepare``), the
run's secret (``store_certificates``), task definitions and the launcher (``launcher``).

RunTask overrides carry commands only: the workers' environment and the project's
``environment`` and ``secrets`` are in their task definition.

Why not dask-cloudprovider's ``ECSCluster``: its start waits without a deadline, drops
the reason a task stopped for, polls without pause, starts workers one RunTask at a
time with blind retries, and opens the Dask ports to the internet by default; bending
it meant patching its private state. Its helpers are still used where they fit.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Mapping

from flowrig.backends.aws.ecs import defaults
from flowrig.backends.aws.ecs.group_launch import GROUP_OPTIONS
from flowrig.backends.aws.ecs.infrastructure import Infrastructure, infrastructure
from flowrig.backends.aws.ecs.options import ECSOptions
from flowrig.backends.base import ClusterSpec
from flowrig.backends.pool.backend import CloudRun, PoolBackend
from flowrig.errors import BadInput
from flowrig.roles.commands import with_resource

if TYPE_CHECKING:
    from flowrig.backends.aws.ecs.group_launch import GroupLaunch
    from flowrig.backends.aws.ecs.launcher import ECSLauncher
    from flowrig.backends.aws.ecs.taskdefs import RoleSize
    from flowrig.backends.aws.lease import LeaseRenewer
    from flowrig.backends.aws.resources import RunResources
    from flowrig.backends.aws.session import Session
    from flowrig.backends.markets import SpotSetting
    from flowrig.backends.preflight import Check, PreflightPlan


@dataclass(frozen=True)
class _Launch:
    """How one run's tasks launch: Fargate or not, sizes, and command flags."""

    fargate_scheduler: bool
    fargate_workers: bool
    sizes: dict[str, "RoleSize"]
    scheduler_args: list[str]
    worker_args: list[str]
    #: Roles whose task definition flowrig registers for the run: their certificates
    #: arrive from the run's secret, and their environment is in the definition.
    own_definitions: frozenset[str]
    #: The workers' market: on-demand (false), Fargate Spot (true), or Spot first ("fallback").
    spot: "SpotSetting" = False
    #: The task definitions' ``cpu_architecture``: the option's, else the image's
    #: (decided by :meth:`ECSRun.check`).
    cpu_architecture: str = "X86_64"
    #: Each worker group's launch (``[[cluster.worker_groups]]``), in the project's order.
    groups: tuple["GroupLaunch", ...] = ()


class ECSRun(CloudRun):
    """One run's AWS resources, lease and task definitions (see the module's docstring)."""

    provider = "AWS"

    def __init__(
        self, backend: "_ECSBase", spec: ClusterSpec, options: ECSOptions, launch: _Launch,
        session: "Session", tags: Mapping[str, str], resources: "RunResources", renewer: "LeaseRenewer",
    ) -> None:
        self.backend = backend
        self.spec = spec
        self.options = options
        self.launch = launch
        self.session = session
        self.tags = tags
        self.resources = resources
        self.renewer = renewer
        self.infra: Infrastructure | None = None

    @property
    def needs_certificates(self) -> bool:
        """Task definitions flowrig registers read the run's secret; the project's own
        use the image's baked files."""
        return bool(self.launch.own_definitions)

    def check(self) -> None:
        """The image's architecture, Fargate Spot and the capacity provider's instance
        types checked against the workers' shape (read-only calls); the run's
        ``cpu_architecture`` decided."""
        from dataclasses import replace

        from flowrig.backends.aws.ecs import shapes

        arch = shapes.check_run(self.session, self.options, self.options.cluster_arn or "", self.spec.image or "",
                                self.launch.fargate_workers, self.launch.groups)
        self.launch = replace(self.launch, cpu_architecture=arch)

    def prepare(self) -> None:
        # While the run lives its lease is renewed, so `flowrig aws leftovers` leaves it alone.
        self.renewer.start()
        self.infra = infrastructure(self.spec.run_id, self.options, self.resources, self.launch.own_definitions)

    def store_certificates(self, line: str) -> str | None:
        """The run's secret holding its certificates (only the execution role may read
        it); its ARN."""
        from flowrig.backends.aws import policies as iam

        assert self.infra is not None
        # A role the project named exists already: the secret's policy may name it.
        return self.resources.create_run_secret(
            iam.secret_name(self.spec.run_id), line, self.infra.execution_role_arn,
            grant=not self.infra.own_execution_role,
        )

    def launcher(self, secret_ref: str | None, deadline: float) -> "ECSLauncher":
        from flowrig.backends.aws.ecs.launcher import ECSLauncher

        assert self.infra is not None
        definitions = self.backend._task_definitions(
            self.spec, self.options, self.resources, self.session.region_name, self.launch, self.infra, secret_ref
        )
        started_by = f"{defaults.FAMILY_PREFIX}-{self.spec.run_id}"[:128]
        # Whatever happens to the cluster object, teardown finds the run's tasks by this.
        self.resources.track_tasks(self.infra.cluster_arn, started_by)
        from flowrig.backends.aws.ecs.task_settings import task_settings

        return ECSLauncher(self.session, task_settings(
            self.spec, self.options, self.launch, self.infra, definitions, self.tags, started_by,
            self.resources, self.backend._scheduler_command(self.spec, self.options, self.launch),
        ))

    def close(self) -> list[str]:
        """Delete the run's AWS resources (its tasks first). The lease is renewed until the
        end, so `flowrig aws leftovers` leaves a slow teardown alone."""
        try:
            return self.resources.delete()
        finally:
            self.renewer.stop()

    def network_description(self) -> str:
        return "the VPC"


class _ECSBase(PoolBackend):
    """What ``ecs`` and ``fargate`` share; they differ in the launch type only."""

    #: Whether scheduler and workers run on Fargate unless the options say otherwise.
    fargate: ClassVar[bool]
    options_model = ECSOptions
    group_options = GROUP_OPTIONS
    extra = "aws"
    # dask-cloudprovider's aws extra brings botocore.
    sdk_modules = ("botocore", "dask_cloudprovider.aws.helper")
    sdk_name = "dask-cloudprovider"

    def roles_use_image_certificates(self, options: Mapping[str, Any]) -> bool:
        """Task definitions of the project's own, or a scheduler already running, start
        roles with the image's baked files; flowrig's own definitions get the run's."""
        return any(options.get(key) for key in (
            "scheduler_task_definition_arn", "worker_task_definition_arn", "scheduler_address"
        ))

    def prefect_api_hosts(self) -> tuple[str, str]:
        """Inside an ECS task (a runner task), listen on the task's own address (not on
        every interface) so workers in the same VPC reach the run's Prefect API;
        elsewhere stay on loopback, since cloud workers cannot reach a laptop anyway
        (use ``PREFECT_API_URL`` there)."""
        if os.environ.get("ECS_CONTAINER_METADATA_URI_V4"):
            try:
                address = socket.gethostbyname(socket.gethostname())
                return address, address
            except OSError:
                pass
        return "127.0.0.1", "127.0.0.1"

    def open_run(self, spec: ClusterSpec, options: ECSOptions) -> ECSRun:
        """Every option checked (launch types, sizes, environment), the AWS session and the
        run's tags; the first AWS call asks who the caller is, nothing is made yet.

        Raises
        ------
        BadInput
            Invalid options or task sizes, no AWS credentials or region.
        """
        from flowrig.backends.aws import lease
        from flowrig.backends.aws import policies as iam
        from flowrig.backends.aws import resources as aws_resources
        from flowrig.backends.aws import session as aws_session

        # Every option is checked before the first AWS call.
        launch = self._launch(options, spec.allowed_environment, spec.groups)
        session = aws_session.session(
            options.region_name,
            access_key_id=options.aws_access_key_id,
            secret_access_key=options.aws_secret_access_key,
        )
        lease_seconds = lease.lease_seconds()
        # Everything the run makes names its caller as owner: the runner policy lets a
        # caller act only on what names it, so no other run's runner can touch it.
        owner = session.caller().user_id
        tags = {**options.tags, iam.RUN_TAG: spec.run_id, "createdBy": "flowrig",
                **lease.initial_tags(lease_seconds), iam.OWNER_TAG: owner}
        resources = aws_resources.RunResources(session, tags, float(options.cleanup_timeout))
        renewer = lease.LeaseRenewer(resources, lease_seconds)
        return ECSRun(self, spec, options, launch, session, tags, resources, renewer)

    def cloud_preflight(self, plan: "PreflightPlan", options: ECSOptions) -> "list[Check]":
        """The image, network, rights, Fargate quotas and the workers' capacity provider a
        run of ``plan`` needs (read-only)."""
        from flowrig.backends.aws import session as aws_session
        from flowrig.backends.aws.ecs.preflight import capacity_preflight, ecs_target
        from flowrig.backends.aws.preflight import aws_checks

        launch = self._launch(options, plan.allowed_environment, tuple(plan.groups))
        session = aws_session.session(options.region_name, access_key_id=options.aws_access_key_id,
                                      secret_access_key=options.aws_secret_access_key)
        return aws_checks(session, ecs_target(self.name, plan, options, launch)) + capacity_preflight(
            session, plan, options, launch.fargate_workers)

    # --- steps of start -----------------------------------------------------------
    def _launch(self, options: ECSOptions, allowed: frozenset[str] = frozenset(), groups: tuple = ()) -> _Launch:
        """Launch types, task sizes and command flags (each worker group's too), checked
        before anything is created."""
        from flowrig.backends.aws.ecs import shapes, taskdefs, validate
        from flowrig.backends.aws.ecs.group_launch import group_launches

        if not options.create_roles:
            raise BadInput(
                "create_roles = false (runs sharing the execution role of `flowrig ecs bootstrap`) is no longer "
                "possible: a shared role would let one run read another's certificates. Drop create_roles "
                "(every run makes its own), or set execution_role_arn to a role of yours"
            )
        fargate_scheduler = self.fargate if options.fargate_scheduler is None else options.fargate_scheduler
        fargate_workers = self.fargate if options.fargate_workers is None else options.fargate_workers
        if self.fargate and not (fargate_scheduler and fargate_workers):
            raise BadInput(
                "the fargate backend runs everything on Fargate: drop fargate_scheduler/"
                "fargate_workers from [cluster.options], or use the ecs backend"
            )
        if not options.cluster_arn and not (fargate_scheduler and fargate_workers):
            raise BadInput(
                f"the {self.name} backend needs an existing cluster: set cluster_arn in "
                "[cluster.options], or use the fargate backend to get one per run"
            )
        if groups and options.worker_gpu:
            raise BadInput("[cluster.options] worker_gpu beside [[cluster.worker_groups]]: set gpu on the groups "
                           "whose workers need GPUs, and drop worker_gpu")
        shapes.check_options(self.name, options, fargate_workers, bool(groups))
        sizes = {
            "runner": taskdefs.default_sizes()["runner"],
            "scheduler": taskdefs.RoleSize(options.scheduler_cpu, options.scheduler_mem),
            "worker": taskdefs.RoleSize(options.worker_cpu, options.worker_mem),
        }
        if fargate_scheduler:
            validate.check_fargate_size("scheduler", sizes["scheduler"].cpu, sizes["scheduler"].memory)
        if fargate_workers:
            validate.check_fargate_size("worker", sizes["worker"].cpu, sizes["worker"].memory)
        # With groups, each group's market is checked against where it runs (group_launch).
        spot = validate.check_spot(options, fargate_workers or bool(groups))
        validate.check_user_environment(options.environment, options.secrets, allowed)
        if options.worker_task_definition_arn and (options.environment or options.secrets):
            raise BadInput(
                "environment and secrets go into the worker task definition flowrig registers, and "
                "worker_task_definition_arn names one of yours: put them in that task definition"
            )
        own = frozenset(
            role for role, given in (("scheduler", options.scheduler_task_definition_arn),
                                     ("worker", options.worker_task_definition_arn)) if not given
        )
        worker_args = list(options.worker_extra_args)
        if not any(arg.startswith(("--dashboard", "--no-dashboard")) for arg in worker_args):
            # Nothing would reach a worker's dashboard; it would only show its tasks to the VPC.
            worker_args.append("--no-dashboard")
        if options.worker_gpu:
            worker_args = with_resource(worker_args, "GPU", options.worker_gpu)
        tls_args = taskdefs.worker_extra_args(delivered="worker" in own)
        launches = group_launches(self.name, options, groups, fargate_workers=fargate_workers, spot=spot,
                                  base_args=worker_args, tls_args=tls_args)
        return _Launch(
            fargate_scheduler=fargate_scheduler,
            fargate_workers=fargate_workers,
            sizes=sizes,
            scheduler_args=list(options.scheduler_extra_args)
            + taskdefs.scheduler_extra_args(delivered="scheduler" in own),
            worker_args=worker_args + tls_args,
            own_definitions=own,
            spot=spot,
            cpu_architecture=options.cpu_architecture or defaults.CPU_ARCHITECTURE,
            groups=launches,
        )

    @staticmethod
    def _no_client_timeout(spec: ClusterSpec, options: ECSOptions) -> float | None:
        """The option, else the project's ``[cluster] no_client_timeout``, else the image's default."""
        if options.scheduler_timeout is not None:
            return float(options.scheduler_timeout)
        return spec.no_client_timeout

    def _scheduler_command(self, spec: ClusterSpec, options: ECSOptions, launch: _Launch) -> list[str]:
        from flowrig.roles import scheduler_command

        return scheduler_command(self._no_client_timeout(spec, options), launch.scheduler_args)

    def _task_definitions(
        self,
        spec: ClusterSpec,
        options: ECSOptions,
        resources: "RunResources",
        region: str,
        launch: _Launch,
        infra: Infrastructure,
        tls_secret: str | None,
    ) -> dict[str, str]:
        """Register the scheduler and worker task definitions the options do not name.

        Their containers get the run's certificates from ``tls_secret`` (ECS reads it
        with the execution role); the workers' also get the run's environment and the
        project's ``environment`` and ``secrets``.

        Returns ``{"scheduler": arn, "worker": arn}``; with worker groups, ``worker:GROUP``
        for each group's instead of ``worker`` (:mod:`~flowrig.backends.aws.ecs.group_launch`).
        """
        from flowrig.backends.aws.ecs import taskdefs, validate
        from flowrig.certs import delivery

        given = {"scheduler": options.scheduler_task_definition_arn, "worker": options.worker_task_definition_arn}
        arns = {}
        for role, on_fargate in (("scheduler", launch.fargate_scheduler), ("worker", launch.fargate_workers)):
            if given[role]:
                arns[role] = str(given[role])
                continue
            environment = {delivery.FROM_ENV: "secret"}
            secrets = {delivery.SECRET_ENV: str(tls_secret)}
            if role == "worker":
                environment = {**dict(spec.worker_env), **options.environment, **environment}
                secrets = {**options.secrets, **secrets}
            settings = taskdefs.TaskDefinitionSettings(
                image=spec.image or "",
                name=spec.run_id,
                region=region,
                log_group=infra.log_group,
                log_stream_prefix=infra.stream_prefix,
                execution_role_arn=infra.execution_role_arn,
                task_role_arn=infra.task_role_arn or None,
                sizes=launch.sizes,
                cpu_architecture=launch.cpu_architecture,
                compatibilities=("FARGATE",) if on_fargate else ("EC2",),
                worker_gpu=options.worker_gpu,
                tags=dict(resources.tags),
                scheduler_no_client_timeout=self._no_client_timeout(spec, options),
                worker_threads=spec.worker_threads,
                # The registered commands are the ones the tasks are started with.
                scheduler_args=tuple(launch.scheduler_args),
                worker_args=tuple(launch.worker_args),
                volumes=tuple(options.volumes),
                mount_points=tuple(options.mount_points),
                mount_on_scheduler=options.mount_volumes_on_scheduler,
                environment={**environment, **(taskdefs.spot_environment(launch.spot) if role == "worker" else {})},
                secrets=secrets,
                worker_stop_timeout=defaults.SPOT_STOP_TIMEOUT if launch.spot and role == "worker" else None,
            )
            for key, params in self._render(role, settings, launch, environment, spec.run_id):
                validate.check_task_definition(params)
                arns[key] = resources.register_task_definition(params)
        if given["worker"]:
            arns.update({f"worker:{group.name}": arns["worker"] for group in launch.groups})
        return arns

    @staticmethod
    def _render(role: str, settings: Any, launch: _Launch, environment: Mapping[str, str],
                run_id: str) -> list[tuple[str, dict[str, Any]]]:
        """``(key, RegisterTaskDefinition parameters)`` of ``role``: one worker definition
        per worker group (``worker:GROUP``) when the run has groups."""
        from flowrig.backends.aws.ecs import group_launch, taskdefs

        if role != "worker" or not launch.groups:
            return [(role, taskdefs.render_task_definition(role, settings))]
        return [(f"worker:{group.name}", group_launch.group_task_definition(taskdefs.render_task_definition(
            "worker", group_launch.group_settings(settings, group, environment)), run_id, group))
            for group in launch.groups]


class ECSBackend(_ECSBase):
    """``ecs``: tasks on an existing ECS cluster (``cluster_arn`` in ``[cluster.options]``)."""

    name = "ecs"
    fargate = False


class FargateBackend(_ECSBase):
    """``fargate``: a new Fargate cluster per run, removed with everything else after it."""

    name = "fargate"
    fargate = True

