"""``[cluster.options]`` of the ``ecs`` and ``fargate`` backends, as a strict model."""

from __future__ import annotations

from typing import Any, ClassVar, Literal, Mapping

from pydantic import Field, StrictBool, StrictInt, StrictStr, field_validator

from flowrig.backends.aws.ecs import defaults
from flowrig.backends.base import N_WORKERS_FIX, CloudOptions, Seconds, StringMap
from flowrig.errors import BadInput


class ECSOptions(CloudOptions):
    """What a project may set for its ECS tasks; everything else is decided by flowrig.

    Resources named here are the project's and are left as they are; those left out
    are created for the run (tagged with its id) and deleted with it.
    """

    refused: ClassVar[Mapping[str, str]] = {
        "n_workers": N_WORKERS_FIX,
        "image": "pass the image with --image or build one with flowrig build",
        "security": "mutual TLS is always on and comes from the run's certificates",
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
    region_name: StrictStr | None = Field(
        None, description="AWS region of the run; default: `AWS_REGION`, else the profile's"
    )
    aws_access_key_id: StrictStr | None = Field(
        None,
        description="access key of another AWS identity than the runner's own (Python API only: `flowrig.toml` "
        "refuses credentials)",
    )
    aws_secret_access_key: StrictStr | None = Field(
        None,
        description="secret key going with `aws_access_key_id` (Python API only: `flowrig.toml` refuses credentials)",
    )
    cluster_arn: StrictStr | None = Field(
        None,
        description="an ECS cluster of yours to run the tasks in (`ecs` needs one); default on `fargate`: a cluster "
        "made for the run",
    )
    fargate_scheduler: StrictBool | None = Field(
        None, description="run the scheduler on Fargate; default: true on `fargate`, false on `ecs`"
    )
    fargate_workers: StrictBool | None = Field(
        None, description="run the workers on Fargate; default: true on `fargate`, false on `ecs`"
    )
    spot: StrictBool | Literal["fallback"] = Field(
        False,
        description="start the workers on Fargate Spot, or with fargate_workers = false on `spot_capacity_provider` "
        "(cheaper; an interrupted worker is replaced, on Spot first); "
        '`"fallback"`: on Spot, and on on-demand Fargate when Spot has no capacity. The scheduler is never on Spot',
    )
    fargate_spot: StrictBool = Field(
        False, description="the older name of `spot = true` (set one of the two)"
    )
    vpc: StrictStr | None = Field(None, description="VPC of the tasks; default: the region's default VPC")
    subnets: list[StrictStr] | None = Field(None, description="subnets of the tasks; default: every subnet of the VPC")
    security_groups: list[StrictStr] | None = Field(
        None,
        description="security groups of the tasks; default: one made for the run (its tasks reach each other, the VPC"
        " reaches the scheduler port)",
    )
    fargate_use_private_ip: StrictBool = Field(
        True, description="give the tasks private addresses only; false: public ones too"
    )
    scheduler_address: StrictStr | None = Field(
        None, description="a running scheduler (`tls://host:port`) to use: no scheduler task is started"
    )
    dashboard: StrictBool = Field(
        False, description="open the scheduler's dashboard port to the VPC (it is closed otherwise)"
    )

    # --- roles, logs ----------------------------------------------------------------------
    execution_role_arn: StrictStr | None = Field(
        None,
        description="an execution role of yours (pulls the image, reads `secrets`); default: one made for the run, "
        "the one reader of its secret",
    )
    task_role_arn: StrictStr | None = Field(
        None,
        description="the role the containers act as (what the flow may do in AWS); default: none, so no AWS rights",
    )
    create_roles: StrictBool = Field(
        True,
        description="every run makes its own execution role (the one reader of its secret); "
        "false, a role shared by runs, is refused",
    )
    cloudwatch_logs_group: StrictStr | None = Field(
        None, description="a log group of yours, kept after the run; default: one made for the run and deleted with it"
    )
    cloudwatch_logs_stream_prefix: StrictStr | None = Field(
        None, description="prefix of the tasks' log streams; default: `flowrig-RUNID`"
    )

    # --- the tasks themselves ---------------------------------------------------------------
    scheduler_cpu: StrictInt = Field(
        defaults.SCHEDULER_CPU, description="CPU units of the scheduler task (1024 = one vCPU)"
    )
    scheduler_mem: StrictInt = Field(defaults.SCHEDULER_MEMORY, description="memory of the scheduler task, in MiB")
    worker_cpu: StrictInt = Field(defaults.WORKER_CPU, description="CPU units of each worker task (1024 = one vCPU)")
    worker_mem: StrictInt = Field(defaults.WORKER_MEMORY, description="memory of each worker task, in MiB")
    cpu_architecture: Literal["X86_64", "ARM64"] | None = Field(
        None,
        description="CPU architecture of the task definitions: `X86_64` or `ARM64`; default: the image's (read from "
        "its manifest in ECR, else from the local engine), else `X86_64`. One the image does not hold is refused",
    )
    worker_gpu: StrictInt = Field(
        0, ge=0,
        description="GPUs of each worker task (ECS places it on a GPU instance; its Dask resource `GPU`); needs the "
        "`ecs` backend and `capacity_provider`",
    )
    capacity_provider: StrictStr | None = Field(
        None,
        description="a capacity provider of the cluster (an Auto Scaling group of EC2 instances) the worker tasks "
        "start on; default: the cluster's default strategy",
    )
    spot_capacity_provider: StrictStr | None = Field(
        None,
        description="a capacity provider of the cluster whose Auto Scaling group runs Spot instances: with `spot`, "
        "worker tasks on EC2 capacity (fargate_workers = false) start there, and with `\"fallback\"` on "
        "`capacity_provider` when it has no room",
    )

    @field_validator("cpu_architecture", mode="before")
    @classmethod
    def _architecture_upper(cls, value: Any) -> Any:
        # ECS spells them in capitals; `arm64` or `amd64`, as images name them, mean the same.
        if not isinstance(value, str):
            return value
        return {"AMD64": "X86_64", "AARCH64": "ARM64"}.get(value.upper(), value.upper())

    scheduler_task_definition_arn: StrictStr | None = Field(
        None, description="a scheduler task definition of yours, used as is (its roles use the image's baked TLS files)"
    )
    worker_task_definition_arn: StrictStr | None = Field(
        None, description="a worker task definition of yours, used as is (its roles use the image's baked TLS files)"
    )
    scheduler_extra_args: list[StrictStr] = Field(
        default_factory=list, description="more command-line arguments of the scheduler (`dask scheduler`)"
    )
    worker_extra_args: list[StrictStr] = Field(
        default_factory=list, description="more command-line arguments of each worker (`dask worker`)"
    )
    environment: StringMap = Field(
        default_factory=dict, description="plain variables of the workers, put in their task definition"
    )
    secrets: StringMap = Field(
        default_factory=dict,
        description="variable -> valueFrom (Secrets Manager or SSM ARN) the workers get from ECS",
    )
    tags: StringMap = Field(default_factory=dict, description="tags on every resource of the run, beside flowrig's own")
    volumes: list[dict[str, Any]] = Field(
        default_factory=list, description="`volumes` of the task definitions, as ECS writes them"
    )
    mount_points: list[dict[str, Any]] = Field(
        default_factory=list, description="`mountPoints` of the workers' container, as ECS writes them"
    )
    mount_volumes_on_scheduler: StrictBool = Field(
        False, description="mount `volumes` on the scheduler's container too"
    )
    scheduler_task_kwargs: dict[str, Any] = Field(
        default_factory=dict, description="more RunTask parameters for the scheduler task"
    )
    worker_task_kwargs: dict[str, Any] = Field(
        default_factory=dict, description="more RunTask parameters for the worker tasks"
    )

    def worker_spot(self) -> "bool | Literal['fallback']":
        """The workers' ``spot`` setting, from ``spot`` or its older name ``fargate_spot``.

        Raises
        ------
        BadInput
            When both keys are set.
        """
        if {"spot", "fargate_spot"} <= self.model_fields_set:
            raise BadInput(
                "[cluster.options] sets both spot and fargate_spot (its older name): keep spot and drop fargate_spot"
            )
        return self.spot if "spot" in self.model_fields_set else self.fargate_spot
