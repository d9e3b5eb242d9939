"""How an ``ecs``/``fargate`` run's launcher starts its tasks (:class:`TaskSettings`), from
the run's checked options, launch plan and resources."""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING, Any, Mapping

from flowrig.backends.aws.ecs.launcher import TaskSettings

if TYPE_CHECKING:
    from flowrig.backends.aws.ecs.options import ECSOptions
    from flowrig.backends.aws.resources import RunResources
    from flowrig.backends.base import ClusterSpec


def task_settings(
    spec: "ClusterSpec", options: "ECSOptions", launch: Any, infra: Any, definitions: Mapping[str, str],
    tags: Mapping[str, str], started_by: str, resources: "RunResources", scheduler_command: list[str],
) -> TaskSettings:
    """How the launcher starts the run's scheduler and worker tasks."""
    return TaskSettings(
        cluster_arn=infra.cluster_arn,
        scheduler_task_definition=definitions["scheduler"],
        # With worker groups, each group's (``worker:GROUP``) instead.
        worker_task_definition=definitions.get("worker", ""),
        subnets=infra.subnets,
        security_groups=infra.security_groups,
        started_by=started_by,
        scheduler_command=scheduler_command,
        dashboard=options.dashboard,
        worker_args=launch.worker_args,
        worker_threads=spec.worker_threads,
        fargate=launch.fargate_workers,
        scheduler_fargate=launch.fargate_scheduler,
        spot=launch.spot,
        public_ip=not options.fargate_use_private_ip,
        tags={k: v for k, v in tags.items() if k != "createdBy"},
        # In the worker task definition when flowrig registers it; RunTask
        # overrides (visible to DescribeTasks) carry commands only.
        environment={} if "worker" in launch.own_definitions else dict(spec.worker_env),
        scheduler_task_kwargs=options.scheduler_task_kwargs,
        worker_task_kwargs=options.worker_task_kwargs,
        # Only flowrig's own definitions are known to log there (stop reasons quote them).
        log_group=infra.log_group if launch.own_definitions == {"scheduler", "worker"} else "",
        log_stream_prefix=infra.stream_prefix,
        role_propagation_until=resources.role_propagation_until,
        shapes={role: shape for role, shape in (("scheduler", (options.scheduler_cpu, options.scheduler_mem)),
                                                ("worker", (options.worker_cpu, options.worker_mem)))
                if role in launch.own_definitions},
        cpu_architecture=launch.cpu_architecture,
        capacity_provider=options.capacity_provider or "",
        spot_capacity_provider=options.spot_capacity_provider or "",
        # A worker task definition of the project's own is not read: its shape is not known.
        groups={group.name: replace(group.kind(definitions[f"worker:{group.name}"]),
                                    shape=None if "worker" not in launch.own_definitions else (
                                        group.size.cpu, group.size.memory))
                for group in launch.groups},
    )
