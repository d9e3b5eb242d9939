"""``[cluster.options]`` of the ``ecs`` and ``fargate`` backends, as a strict model."""

from __future__ import annotations

from typing import Any, ClassVar, Mapping

from pydantic import Field, StrictBool, StrictInt, StrictStr

from flowrig.backends.base import N_WORKERS_FIX, Options, Seconds, StringMap
from flowrig.backends.ecs import defaults


class ECSOptions(Options):
    """What a project may set for its ECS tasks; everything else is decided by flowrig.

    Resources named here are the project's and are left as they are; those left out
    are created for the run (tagged with its id) and deleted with it.
    """

    refused: ClassVar[Mapping[str, str]] = {
        "n_workers": N_WORKERS_FIX,
        "image": "pass the image with --image or build one with flowrig build",
        "security": "mutual TLS is always on and comes from the run's certificates",
        "worker_gpu": "the flowrig image runs CPU workers only",
        "task_role_policies": (
            "flowrig attaches no policy a project names: create the task role with what the "
            "flow needs and set task_role_arn"
        ),
    }

    # --- time limits -------------------------------------------------------------------
    provision_timeout: Seconds = Field(
        defaults.PROVISION_TIMEOUT, description="seconds from the first AWS call until the first worker joined"
    )
    cleanup_timeout: Seconds = Field(
        defaults.CLEANUP_TIMEOUT, description="seconds teardown keeps retrying while AWS releases resources"
    )
    scheduler_timeout: Seconds | None = Field(
        None, description="seconds a scheduler lives once no client is connected (its runner was lost); "
        "default: [cluster] no_client_timeout, else 60"
    )

    # --- where the tasks run ------------------------------------------------------------
    region_name: StrictStr | None = None
    aws_access_key_id: StrictStr | None = None
    aws_secret_access_key: StrictStr | None = None
    cluster_arn: StrictStr | None = None
    fargate_scheduler: StrictBool | None = None
    fargate_workers: StrictBool | None = None
    fargate_spot: StrictBool = False
    vpc: StrictStr | None = None
    subnets: list[StrictStr] | None = None
    security_groups: list[StrictStr] | None = None
    fargate_use_private_ip: StrictBool = True
    scheduler_address: StrictStr | None = None
    dashboard: StrictBool = Field(
        False, description="open the scheduler's dashboard port to the VPC (it is closed otherwise)"
    )

    # --- roles, logs ----------------------------------------------------------------------
    execution_role_arn: StrictStr | None = None
    task_role_arn: StrictStr | None = None
    create_roles: StrictBool = Field(
        True,
        description="every run makes its own execution role (the one reader of its secret); "
        "false, a role shared by runs, is refused",
    )
    cloudwatch_logs_group: StrictStr | None = None
    cloudwatch_logs_stream_prefix: StrictStr | None = None

    # --- the tasks themselves ---------------------------------------------------------------
    scheduler_cpu: StrictInt = defaults.SCHEDULER_CPU
    scheduler_mem: StrictInt = defaults.SCHEDULER_MEMORY
    worker_cpu: StrictInt = defaults.WORKER_CPU
    worker_mem: StrictInt = defaults.WORKER_MEMORY
    cpu_architecture: StrictStr = defaults.CPU_ARCHITECTURE
    scheduler_task_definition_arn: StrictStr | None = None
    worker_task_definition_arn: StrictStr | None = None
    scheduler_extra_args: list[StrictStr] = Field(default_factory=list)
    worker_extra_args: list[StrictStr] = Field(default_factory=list)
    environment: StringMap = Field(
        default_factory=dict, description="plain variables of the workers, put in their task definition"
    )
    secrets: StringMap = Field(
        default_factory=dict,
        description="variable -> valueFrom (Secrets Manager or SSM ARN) the workers get from ECS",
    )
    tags: StringMap = Field(default_factory=dict)
    volumes: list[dict[str, Any]] = Field(default_factory=list)
    mount_points: list[dict[str, Any]] = Field(default_factory=list)
    mount_volumes_on_scheduler: StrictBool = False
    scheduler_task_kwargs: dict[str, Any] = Field(default_factory=dict)
    worker_task_kwargs: dict[str, Any] = Field(default_factory=dict)
