"""The AWS resources one ``ecs``/``fargate`` run's tasks use: the project's, where
``[cluster.options]`` names them, else created for the run (tagged with its id)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from flowrig.backends.aws.ecs import defaults

if TYPE_CHECKING:
    from flowrig.backends.aws.ecs.options import ECSOptions
    from flowrig.backends.aws.resources import RunResources


@dataclass(frozen=True)
class Infrastructure:
    """The AWS resources one run's tasks use (given by the project or created)."""

    cluster_arn: str
    execution_role_arn: str
    #: Whether the run made the execution role (else the project named it).
    own_execution_role: bool
    task_role_arn: str
    log_group: str
    stream_prefix: str
    vpc: str
    subnets: list[str]
    security_groups: list[str]


def infrastructure(
    run_id: str, options: "ECSOptions", resources: "RunResources", own_definitions: frozenset[str]
) -> Infrastructure:
    """The cluster, roles, log group and network the tasks use: the project's, when
    ``[cluster.options]`` names them, else created (tagged) for this run."""
    from flowrig.backends.aws import bootstrap
    from flowrig.backends.aws import policies as iam

    name = f"{defaults.FAMILY_PREFIX}-{run_id}"
    # The run's own execution role, the one reader of the run's secret (a role no
    # other run can pass to a task). Made first: a missing bootstrap policy is bad
    # input, found before anything is made, and the role has the rest of the set-up
    # to propagate through IAM before a task needs it.
    execution_role_arn = options.execution_role_arn or ""
    if not execution_role_arn and own_definitions:
        reader = bootstrap.find_run_secret_reader(resources.aws)
        execution_role_arn = resources.create_execution_role(iam.execution_role_name(run_id), reader)
    # No task role unless the project names one: the containers get no AWS permissions.
    task_role_arn = options.task_role_arn or ""
    cluster_arn = options.cluster_arn or resources.create_cluster(name)
    log_group = options.cloudwatch_logs_group or resources.create_log_group(
        defaults.LOG_GROUP.format(name=run_id)
    )
    vpc = options.vpc
    if not vpc or vpc == "default":
        vpc = resources.default_vpc()
    subnets = list(options.subnets or resources.vpc_subnets(vpc))
    security_groups = list(options.security_groups or [
        resources.create_security_group(name, vpc, resources.vpc_cidrs(vpc), dashboard=options.dashboard)
    ])
    return Infrastructure(
        cluster_arn=cluster_arn,
        execution_role_arn=execution_role_arn,
        own_execution_role=not options.execution_role_arn,
        task_role_arn=task_role_arn,
        log_group=log_group,
        stream_prefix=options.cloudwatch_logs_stream_prefix or name,
        vpc=vpc,
        subnets=subnets,
        security_groups=security_groups,
    )
