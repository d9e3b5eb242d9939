"""An ``ecs``/``fargate`` run as the AWS preflight checks see it (:class:`AwsTarget`),
from its options alone."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Sequence

from flowrig.backends.aws.preflight.calls import Caller, ecs_calls
from flowrig.backends.aws.preflight.quotas import FARGATE_ON_DEMAND, FARGATE_SPOT
from flowrig.backends.aws.preflight.target import AwsTarget, PlannedCall, VcpuNeed

if TYPE_CHECKING:
    from flowrig.backends.aws.ecs.options import ECSOptions
    from flowrig.backends.aws.session import Session
    from flowrig.backends.preflight import Check, PreflightPlan

#: ``cpu_architecture`` -> the architecture as image platforms name it.
ARCHITECTURES = {"X86_64": "amd64", "ARM64": "arm64"}


def worker_vcpus(options: "ECSOptions", launch: Any, max_workers: int,
                 groups: Sequence[Any] = ()) -> tuple[list[str], list[str], float, float]:
    """The workers' Fargate vCPUs at the run's largest size, ``(on-demand parts, Spot
    parts, on-demand vCPUs, Spot vCPUs)``: each worker group at its own task size, market
    and most workers (``groups``: the run's sized groups, their ``n_workers`` or adaptive
    maximum), a group on EC2 capacity in no Fargate quota; without groups, every worker at
    ``worker_cpu``. Workers are asked on Spot first (also with ``spot = "fallback"``)."""
    if options.worker_task_definition_arn:
        return [], [], 0.0, 0.0
    if not launch.groups:
        if not launch.fargate_workers:
            return [], [], 0.0, 0.0
        what = f"{max_workers} workers x {options.worker_cpu / 1024:g} vCPU"
        vcpus = max_workers * options.worker_cpu / 1024
        return ([], [what], 0.0, vcpus) if launch.spot else ([what], [], vcpus, 0.0)
    most = {group.name: (group.adapt[1] if group.adapt else group.n_workers) for group in groups}
    parts: tuple[list[str], list[str]] = ([], [])
    vcpus = [0.0, 0.0]
    for group in launch.groups:
        count = most.get(group.name, 0)
        if not group.fargate or not count:
            continue
        market = 1 if group.spot else 0
        parts[market].append(f"group {group.name}: {count} x {group.size.cpu / 1024:g} vCPU")
        vcpus[market] += count * group.size.cpu / 1024
    return parts[0], parts[1], vcpus[0], vcpus[1]


def fargate_needs(options: "ECSOptions", launch: Any, max_workers: int,
                  groups: Sequence[Any] = ()) -> tuple[VcpuNeed, ...]:
    """The Fargate vCPU quotas the run's largest size needs (none on EC2 capacity):
    Fargate's on-demand quota for the scheduler and the on-demand workers, Fargate Spot's
    for the Spot ones (:func:`worker_vcpus`)."""
    on_demand_parts, spot_parts, on_demand, spot = worker_vcpus(options, launch, max_workers, groups)
    if launch.fargate_scheduler and not options.scheduler_address and not options.scheduler_task_definition_arn:
        on_demand += options.scheduler_cpu / 1024
        on_demand_parts.append(f"the scheduler's {options.scheduler_cpu / 1024:g}")
    needs = []
    if on_demand:
        needs.append(VcpuNeed("fargate", *FARGATE_ON_DEMAND, on_demand, " + ".join(on_demand_parts)))
    if spot:
        needs.append(VcpuNeed("fargate", *FARGATE_SPOT, spot, " + ".join(spot_parts)))
    return tuple(needs)


def ecs_target(backend: str, plan: "PreflightPlan", options: "ECSOptions", launch: Any) -> AwsTarget:
    """What a run of ``plan`` with ``options`` (and its checked ``launch``) asks of AWS."""
    # Without cpu_architecture the run follows the image: any architecture it holds fits.
    arch_name = options.cpu_architecture or ""
    arch = ARCHITECTURES.get(arch_name, arch_name.lower())
    other = next((name for name in ARCHITECTURES if name != arch_name), "X86_64")
    own = bool(launch.own_definitions)
    services = ["ecr.api", "ecr.dkr", "s3", "logs"]
    if own or options.secrets:
        services.append("secretsmanager")

    def calls(caller: Caller, vpc_id: str) -> list[PlannedCall]:
        return ecs_calls(
            caller, plan.run_id, cluster_arn=options.cluster_arn, vpc_id=vpc_id, own_definitions=own,
            make_group=not options.security_groups, make_log_group=not options.cloudwatch_logs_group,
            execution_role_arn=options.execution_role_arn, task_role_arn=options.task_role_arn,
        )

    return AwsTarget(
        backend=backend,
        image=plan.image,
        arch=arch,
        arch_source=f"cpu_architecture = {arch_name}",
        arch_fix=f"push an image for linux/{arch} (flowrig build --platform linux/{arch}), or set "
        f"cpu_architecture = {other} in [cluster.options] when the image is built for it (or leave it out: "
        "the run follows the image)",
        vpc=options.vpc,
        subnets=tuple(options.subnets) if options.subnets else None,
        security_groups=tuple(options.security_groups or ()),
        public_ip=not options.fargate_use_private_ip,
        public_option="fargate_use_private_ip = false",
        services=tuple(services),
        needs=fargate_needs(options, launch, plan.max_workers, plan.groups),
        calls=calls,
    )


def capacity_preflight(session: "Session", plan: "PreflightPlan", options: "ECSOptions",
                       fargate_workers: bool) -> "list[Check]":
    """The workers' capacity provider and its instance types (none without one)."""
    from flowrig.backends.aws.ecs.shapes import provider_instance_types
    from flowrig.backends.aws.preflight.image import image_architectures
    from flowrig.backends.aws.preflight.instances import capacity_checks

    if not options.capacity_provider or fargate_workers:
        return []
    held = image_architectures(session, plan.image)[0] if plan.image and not options.cpu_architecture else ()
    return capacity_checks(session, options, fargate_workers, held, plan.image or "", provider_instance_types)
