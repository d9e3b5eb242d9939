"""``ecs`` and ``fargate``: one run's cluster as ECS tasks, through dask-cloudprovider.

dask-cloudprovider starts and scales the tasks. flowrig creates the AWS resources it
would otherwise create itself, because its own are unsafe or outlive the run: its
security group opens the Dask ports to the whole internet, its task definitions, roles
and clusters are only removed when the Python process exits, its log group is shared
and never removed, and its stale-resource sweep deletes other people's resources. Here
every resource is tagged with the run id, the security group admits only the VPC, and
:meth:`StartedCluster.close` deletes all of it.

Mutual TLS reaches the containers only through the command line: the scheduler and
worker commands carry ``--tls-*`` flags naming the files baked into the image, and the
runner's client gets the run's :class:`distributed.security.Security`.
"""

from __future__ import annotations

import asyncio
import functools
import importlib
import logging
import os
import socket
import time
import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Mapping

from flowrig import defaults
from flowrig.backends._util import N_WORKERS_FIX, CloseOnce, one_line, positive_seconds
from flowrig.backends.base import Backend, ClusterSpec, StartedCluster
from flowrig.errors import BadInput, FlowrigError, InfrastructureError

if TYPE_CHECKING:
    from flowrig.ecs.aws import RunResources

logger = logging.getLogger("flowrig.ecs")

#: ``[cluster.options]`` keys flowrig reads itself; they never reach dask-cloudprovider.
FLOWRIG_OPTIONS = ("provision_timeout", "cleanup_timeout")
#: Options decided elsewhere in flowrig, so a project cannot set them here.
_REFUSED_OPTIONS = {
    "n_workers": N_WORKERS_FIX,
    "image": "pass the image with --image or build one with flowrig build",
    "security": "mutual TLS is always on and comes from the run's certificates",
    "worker_gpu": "the flowrig image runs CPU workers only",
}
_INSTALL_HINT = "pip install 'flowrig[aws]'"


def _import_cloudprovider(backend: str, class_name: str) -> type:
    try:
        module = importlib.import_module("dask_cloudprovider.aws")
    except ImportError:
        raise BadInput(f"the {backend} backend needs dask-cloudprovider: {_INSTALL_HINT}") from None
    return getattr(module, class_name)


def _int_option(options: Mapping[str, Any], key: str, default: int) -> int:
    value = options.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int):
        raise BadInput(f"[cluster.options] {key} = {value!r}: use a whole number")
    return value


def _str_list(options: Mapping[str, Any], key: str) -> list[str]:
    value = options.get(key) or []
    if not isinstance(value, (list, tuple)) or not all(isinstance(item, str) for item in value):
        raise BadInput(f"[cluster.options] {key} must be a list of strings, got {value!r}")
    return list(value)


def _str_dict(options: Mapping[str, Any], key: str) -> dict[str, str]:
    value = options.get(key) or {}
    if not isinstance(value, Mapping):
        raise BadInput(f"[cluster.options] {key} must be a table of strings, got {value!r}")
    return {str(k): str(v) for k, v in value.items()}


@functools.lru_cache(maxsize=None)
def _bounded(base: type) -> type:
    """``base`` whose start gives up at a deadline instead of waiting forever.

    dask-cloudprovider waits for a task to leave PENDING without any time limit. The
    subclass also hands itself to the caller before starting, so a start that fails
    half-way can still be torn down.
    """

    class Bounded(base):  # type: ignore[misc, valid-type]
        def __init__(self, *, flowrig_deadline: float, flowrig_hold: list, **kwargs: Any) -> None:
            self._flowrig_deadline = flowrig_deadline
            flowrig_hold.append(self)
            super().__init__(**kwargs)

        async def _start(self) -> None:
            remaining = max(self._flowrig_deadline - time.monotonic(), 0.0)
            await asyncio.wait_for(super()._start(), remaining)

    Bounded.__name__ = Bounded.__qualname__ = base.__name__
    return Bounded


def _close_cluster(cluster: Any, timeout: float) -> None:
    """Close a dask-cloudprovider cluster whatever state its start left it in."""
    from distributed.core import Status

    if getattr(cluster, "status", None) in (None, Status.closed):
        # None: the constructor failed before the cluster had a state or an event loop.
        return
    # A start that was interrupted leaves the status at "starting", which close() skips.
    if cluster.status in (Status.created, Status.starting):
        cluster.status = Status.failed
    # Workers whose start was cancelled never reached "running"; close() asserts that
    # every worker it made is closed or failed, and the AWS sweep stops their tasks.
    for worker in list(getattr(cluster, "_created", ())):
        if worker.status == Status.created:
            worker.status = Status.failed
    try:
        cluster.close(timeout=timeout)
    except Exception as exc:  # the AWS sweep that follows stops whatever is left
        logger.warning("closing the dask cluster failed: %s", one_line(exc))
    finally:
        # Never leave it for distributed's exit hook, which would try again on a dead loop.
        cluster.status = Status.closed
        runner = getattr(cluster, "_loop_runner", None)
        if runner is not None:
            runner.stop()


def _pending_tasks(cluster: Any) -> str:
    """``scheduler task PENDING`` style summary of what a stuck start waited for."""
    states = []
    for label, task in [("scheduler", getattr(cluster, "scheduler", None))] + [
        ("worker", worker) for worker in getattr(cluster, "_created", ())
    ]:
        info = getattr(task, "task", None)
        if isinstance(info, Mapping) and info.get("lastStatus"):
            states.append(f"{label} task {info['lastStatus']}")
    return ", ".join(sorted(set(states)))


def _close_run(cluster: Any, resources: "RunResources | None", timeout: float) -> None:
    """Close the Dask cluster, then delete the run's AWS resources."""
    if cluster is not None:
        _close_cluster(cluster, timeout)
    if resources is not None:
        leftovers = resources.delete()
        if leftovers:
            logger.error(
                "these AWS resources of the run could not be deleted (they carry its tags): %s",
                "; ".join(leftovers),
            )


@dataclass(frozen=True)
class _Launch:
    """How one run's tasks launch: Fargate or not, sizes, and command flags."""

    fargate_scheduler: bool
    fargate_workers: bool
    sizes: Mapping[str, Any]
    scheduler_args: list[str]
    worker_args: list[str]


@dataclass(frozen=True)
class _Infrastructure:
    """The AWS resources one run's tasks use (given by the project or created)."""

    cluster_arn: str
    execution_role_arn: str
    task_role_arn: str
    log_group: str
    stream_prefix: str
    vpc: str
    security_groups: list[str]


class _ECSBase(Backend):
    """What ``ecs`` and ``fargate`` share; they differ in the launch type only."""

    #: dask-cloudprovider class the backend wraps.
    cluster_class: ClassVar[str]
    #: Whether scheduler and workers run on Fargate unless the options say otherwise.
    fargate: ClassVar[bool]

    def prefect_api_hosts(self) -> tuple[str, str]:
        """Inside an ECS task (a runner task), listen on the task's address so workers
        in the same VPC reach the run's Prefect API; elsewhere stay on loopback, since
        cloud workers cannot reach a laptop anyway (use ``PREFECT_API_URL`` there)."""
        if os.environ.get("ECS_CONTAINER_METADATA_URI_V4"):
            try:
                return "0.0.0.0", socket.gethostbyname(socket.gethostname())
            except OSError:
                pass
        return "127.0.0.1", "127.0.0.1"

    def start(self, spec: ClusterSpec) -> StartedCluster:
        """Create the run's AWS resources, start the cluster, wait for its first worker.

        Everything happens within ``provision_timeout`` seconds (option; default
        :data:`flowrig.defaults.ECS_PROVISION_TIMEOUT`). On any failure, what was
        created is removed again before the error is raised.

        Raises
        ------
        BadInput
            No image, dask-cloudprovider missing, invalid options or task sizes, no AWS
            credentials or region.
        InfrastructureError
            AWS unreachable or refusing, or the cluster not ready in time.
        """
        from flowrig.ecs import aws

        base_cls = _import_cloudprovider(self.name, self.cluster_class)
        if not spec.image:
            raise BadInput(
                f"the {self.name} backend needs an image: pass --image or build one with flowrig build"
            )
        options = dict(spec.options)
        for key, fix in _REFUSED_OPTIONS.items():
            if key in options:
                raise BadInput(f"[cluster.options] {key} is not accepted by the {self.name} backend: {fix}")
        provision_timeout = positive_seconds(options, "provision_timeout", defaults.ECS_PROVISION_TIMEOUT)
        cleanup_timeout = positive_seconds(options, "cleanup_timeout", defaults.ECS_CLEANUP_TIMEOUT)
        deadline = time.monotonic() + provision_timeout
        # Every option is checked before the first AWS call.
        launch = self._launch(spec, options)

        session = aws.session(
            options.get("region_name"),
            aws_access_key_id=options.get("aws_access_key_id"),
            aws_secret_access_key=options.get("aws_secret_access_key"),
        )
        tags = {**_str_dict(options, "tags"), "flowrig-run-id": spec.run_id, "createdBy": "flowrig"}
        resources = aws.RunResources(session, tags, cleanup_timeout)
        hold: list[Any] = []
        try:
            kwargs = self._provision(spec, options, resources, session.region_name, launch)
            cluster_cls = _bounded(base_cls)
            cluster = self._start_cluster(cluster_cls, kwargs, hold, deadline, provision_timeout)
            self._size(cluster, spec, deadline, provision_timeout)
        except BaseException:
            _close_run(hold[0] if hold else None, resources, defaults.ECS_CLOSE_TIMEOUT)
            raise
        dashboard = None
        try:
            dashboard = cluster.dashboard_link or None
        except Exception:  # the dashboard is optional; a missing one is no failure
            pass
        return StartedCluster(
            scheduler_address=cluster.scheduler_address,
            dashboard_link=dashboard,
            close=CloseOnce(functools.partial(_close_run, cluster, resources, defaults.ECS_CLOSE_TIMEOUT)),
            cluster=cluster,
        )

    # --- steps of start -----------------------------------------------------------
    def _provision(
        self,
        spec: ClusterSpec,
        options: dict[str, Any],
        resources: "RunResources",
        region: str,
        launch: "_Launch",
    ) -> dict[str, Any]:
        """Create what the options do not name; return the cluster class's kwargs."""
        infra = self._infrastructure(spec.run_id, options, resources, launch)
        definitions = self._task_definitions(spec, options, resources, region, launch, infra)
        started_by = f"{defaults.ECS_FAMILY_PREFIX}-{spec.run_id}"[:128]
        # Whatever happens to the cluster object, teardown finds the run's tasks by this.
        resources.track_tasks(infra.cluster_arn, started_by)
        kwargs: dict[str, Any] = {
            # Safe defaults the library lacks; a project may still change them.
            "fargate_use_private_ip": True,
            "skip_cleanup": True,
            "scheduler_timeout": defaults.SCHEDULER_IDLE_TIMEOUT,
            **{k: v for k, v in options.items() if k not in FLOWRIG_OPTIONS},
            # What flowrig created or decided for this run.
            "image": spec.image,
            "region_name": region,
            "cluster_arn": infra.cluster_arn,
            "execution_role_arn": infra.execution_role_arn,
            # "" rather than None: None makes dask-cloudprovider create a role of its own.
            "task_role_arn": infra.task_role_arn,
            "cloudwatch_logs_group": infra.log_group,
            "cloudwatch_logs_stream_prefix": infra.stream_prefix,
            "vpc": infra.vpc,
            "security_groups": infra.security_groups,
            "scheduler_cpu": launch.sizes["scheduler"].cpu,
            "scheduler_mem": launch.sizes["scheduler"].memory,
            "worker_cpu": launch.sizes["worker"].cpu,
            "worker_mem": launch.sizes["worker"].memory,
            "worker_nthreads": spec.worker_threads,
            # The project's flags first; the TLS flags always come last.
            "scheduler_extra_args": launch.scheduler_args,
            "worker_extra_args": launch.worker_args,
            "environment": {**dict(spec.worker_env), **_str_dict(options, "environment")},
            "tags": {k: v for k, v in resources.tags.items() if k != "createdBy"},
            "scheduler_task_kwargs": {**dict(options.get("scheduler_task_kwargs") or {}), "startedBy": started_by},
            "worker_task_kwargs": {**dict(options.get("worker_task_kwargs") or {}), "startedBy": started_by},
            # Workers are added by scale() once the scheduler is up, within the deadline.
            "n_workers": 0,
            "security": spec.tls.to_security(),
            **definitions,
        }
        if self.fargate:
            # FargateCluster sets both itself and refuses them as arguments.
            kwargs.pop("fargate_scheduler", None)
            kwargs.pop("fargate_workers", None)
        else:
            kwargs.update(fargate_scheduler=launch.fargate_scheduler, fargate_workers=launch.fargate_workers)
        if options.get("scheduler_address"):
            # Someone else's scheduler: closing this cluster must not shut it down.
            kwargs.setdefault("shutdown_scheduler", False)
        return kwargs

    def _launch(self, spec: ClusterSpec, options: Mapping[str, Any]) -> "_Launch":
        """Launch types, task sizes and command flags, checked before anything is created."""
        from flowrig.ecs import taskdefs, validate

        fargate_scheduler = bool(options.get("fargate_scheduler", self.fargate))
        fargate_workers = bool(options.get("fargate_workers", self.fargate))
        if self.fargate and not (fargate_scheduler and fargate_workers):
            raise BadInput(
                "the fargate backend runs everything on Fargate: drop fargate_scheduler/"
                "fargate_workers from [cluster.options], or use the ecs backend"
            )
        if not options.get("cluster_arn") and not (fargate_scheduler and fargate_workers):
            raise BadInput(
                f"the {self.name} backend needs an existing cluster: set cluster_arn in "
                "[cluster.options], or use the fargate backend to get one per run"
            )
        sizes = {
            "runner": taskdefs.default_sizes()["runner"],
            "scheduler": taskdefs.RoleSize(
                _int_option(options, "scheduler_cpu", defaults.ECS_SCHEDULER_CPU),
                _int_option(options, "scheduler_mem", defaults.ECS_SCHEDULER_MEMORY),
            ),
            "worker": taskdefs.RoleSize(
                _int_option(options, "worker_cpu", defaults.ECS_WORKER_CPU),
                _int_option(options, "worker_mem", defaults.ECS_WORKER_MEMORY),
            ),
        }
        if fargate_scheduler:
            validate.check_fargate_size("scheduler", sizes["scheduler"].cpu, sizes["scheduler"].memory)
        if fargate_workers:
            validate.check_fargate_size("worker", sizes["worker"].cpu, sizes["worker"].memory)
        return _Launch(
            fargate_scheduler=fargate_scheduler,
            fargate_workers=fargate_workers,
            sizes=sizes,
            scheduler_args=_str_list(options, "scheduler_extra_args") + taskdefs.scheduler_extra_args(),
            worker_args=_str_list(options, "worker_extra_args") + taskdefs.worker_extra_args(),
        )

    def _infrastructure(
        self, run_id: str, options: Mapping[str, Any], resources: "RunResources", launch: "_Launch"
    ) -> "_Infrastructure":
        """The cluster, roles, log group and network the tasks use: the project's, when
        ``[cluster.options]`` names them, else created (tagged) for this run."""
        name = f"{defaults.ECS_FAMILY_PREFIX}-{run_id}"
        cluster_arn = options.get("cluster_arn") or resources.create_cluster(name)
        execution_role_arn = options.get("execution_role_arn") or resources.create_role(
            f"{name}-execution",
            "flowrig: lets ECS pull the image and write logs for one run",
            [f"arn:{_partition(resources)}:iam::aws:{defaults.ECS_EXECUTION_ROLE_POLICY}"],
        )
        # No task role unless asked for: the containers get no AWS permissions by default.
        task_role_arn = options.get("task_role_arn") or ""
        policies = _str_list(options, "task_role_policies")
        if not task_role_arn and policies:
            task_role_arn = resources.create_role(
                f"{name}-task", "flowrig: what one run's containers may do in AWS", policies
            )
        log_group = options.get("cloudwatch_logs_group") or resources.create_log_group(
            defaults.ECS_LOG_GROUP.format(name=run_id)
        )
        vpc = options.get("vpc")
        if not vpc or vpc == "default":
            vpc = resources.default_vpc()
        security_groups = _str_list(options, "security_groups") or [
            resources.create_security_group(name, vpc, resources.vpc_cidrs(vpc))
        ]
        return _Infrastructure(
            cluster_arn=cluster_arn,
            execution_role_arn=execution_role_arn,
            task_role_arn=task_role_arn,
            log_group=log_group,
            stream_prefix=options.get("cloudwatch_logs_stream_prefix") or name,
            vpc=vpc,
            security_groups=security_groups,
        )

    def _task_definitions(
        self,
        spec: ClusterSpec,
        options: Mapping[str, Any],
        resources: "RunResources",
        region: str,
        launch: "_Launch",
        infra: "_Infrastructure",
    ) -> dict[str, str]:
        """Register the scheduler and worker task definitions the options do not name.

        Returns ``{"scheduler_task_definition_arn": ..., "worker_task_definition_arn": ...}``.
        """
        from flowrig.ecs import taskdefs, validate

        arns = {}
        for role, on_fargate in (("scheduler", launch.fargate_scheduler), ("worker", launch.fargate_workers)):
            option = f"{role}_task_definition_arn"
            if options.get(option):
                arns[option] = str(options[option])
                continue
            settings = taskdefs.TaskDefinitionSettings(
                image=spec.image or "",
                name=spec.run_id,
                region=region,
                log_group=infra.log_group,
                log_stream_prefix=infra.stream_prefix,
                execution_role_arn=infra.execution_role_arn,
                task_role_arn=infra.task_role_arn or None,
                sizes=launch.sizes,
                cpu_architecture=str(options.get("cpu_architecture", defaults.ECS_CPU_ARCHITECTURE)).upper(),
                compatibilities=("FARGATE",) if on_fargate else ("EC2",),
                tags=dict(resources.tags),
                scheduler_idle_timeout=str(options.get("scheduler_timeout", defaults.SCHEDULER_IDLE_TIMEOUT)),
                worker_threads=spec.worker_threads,
                # The registered commands carry the flags dask-cloudprovider sends.
                scheduler_args=tuple(launch.scheduler_args),
                worker_args=tuple(launch.worker_args),
                volumes=tuple(options.get("volumes") or ()),
                mount_points=tuple(options.get("mount_points") or ()),
                mount_on_scheduler=bool(options.get("mount_volumes_on_scheduler")),
            )
            params = taskdefs.render_task_definition(role, settings)
            validate.check_task_definition(params)
            arns[option] = resources.register_task_definition(params)
        return arns

    def _start_cluster(
        self,
        cluster_cls: type,
        kwargs: dict[str, Any],
        hold: list[Any],
        deadline: float,
        provision_timeout: float,
    ) -> Any:
        with warnings.catch_warnings():
            # dask-cloudprovider's TLS check compares type(arg) to the string "str", so it
            # always warns that the scheduler has no TLS flags, even when it has.
            warnings.filterwarnings("ignore", message="the cluster was instructed to connect")
            try:
                return cluster_cls(flowrig_deadline=deadline, flowrig_hold=hold, **kwargs)
            except (asyncio.TimeoutError, TimeoutError):
                waiting = _pending_tasks(hold[0]) if hold else ""
                raise InfrastructureError(
                    f"the {self.name} cluster did not start within {provision_timeout:g} s"
                    + (f" ({waiting})" if waiting else "")
                    + "; everything created for the run is being removed"
                ) from None
            except FlowrigError:
                raise
            except TypeError as exc:
                raise BadInput(f"[cluster.options] not accepted by {cluster_cls.__name__}: {one_line(exc)}") from None
            except Exception as exc:
                raise InfrastructureError(f"the {self.name} cluster could not start: {one_line(exc)}") from None

    def _size(self, cluster: Any, spec: ClusterSpec, deadline: float, provision_timeout: float) -> None:
        """Start the first workers and wait until one has joined the scheduler."""
        initial = spec.size.adapt[0] if spec.size.adapt else spec.size.n_workers

        def remaining() -> float:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError
            return left

        try:
            if initial:
                cluster.scale(initial)
                # scale() only schedules the change; wait for the tasks to be RUNNING.
                cluster.sync(cluster._correct_state, callback_timeout=remaining())
            if spec.size.adapt:
                cluster.adapt(minimum=spec.size.adapt[0], maximum=spec.size.adapt[1])
            if initial:
                cluster.wait_for_workers(1, timeout=remaining())
        except (asyncio.TimeoutError, TimeoutError):
            waiting = _pending_tasks(cluster)
            raise InfrastructureError(
                f"the {self.name} cluster had no worker within {provision_timeout:g} s"
                + (f" ({waiting})" if waiting else "")
                + "; everything created for the run is being removed"
            ) from None
        except Exception as exc:
            raise InfrastructureError(f"the {self.name} workers could not start: {one_line(exc)}") from None


def _partition(resources: "RunResources") -> str:
    return resources.aws.get_partition_for_region(resources.aws.region_name)


class ECSBackend(_ECSBase):
    """``ecs``: tasks on an existing ECS cluster (``cluster_arn`` in ``[cluster.options]``)."""

    name = "ecs"
    cluster_class = "ECSCluster"
    fargate = False


class FargateBackend(_ECSBase):
    """``fargate``: a new Fargate cluster per run, removed with everything else after it."""

    name = "fargate"
    cluster_class = "FargateCluster"
    fargate = True
