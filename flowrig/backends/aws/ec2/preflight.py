"""An ``ec2`` run as the AWS preflight checks see it (:class:`AwsTarget`): its options,
and the vCPUs of its instance types (one ``DescribeInstanceTypes`` call)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from flowrig.backends.aws.ec2.instances import architecture
from flowrig.backends.aws.preflight.answers import Refused, ask
from flowrig.backends.aws.preflight.calls import Caller, ec2_calls
from flowrig.backends.aws.preflight.quotas import ec2_quota
from flowrig.backends.aws.preflight.target import AwsTarget, PlannedCall, VcpuNeed
from flowrig.backends.aws.session import Session
from flowrig.backends.preflight import Check

if TYPE_CHECKING:
    from flowrig.backends.aws.ec2.options import EC2Options
    from flowrig.backends.preflight import PreflightPlan


def ec2_needs(session: Session, options: "EC2Options", max_workers: int) -> tuple[VcpuNeed, ...]:
    """The EC2 vCPU quotas of the run's largest size, by instance family (a type EC2
    does not describe, or a family not in the table, is left out: the quota line says
    nothing rather than guess)."""
    worker = options.worker_instance_type or options.instance_type
    scheduler = options.scheduler_instance_type or options.instance_type
    counts = {worker: max_workers}
    if not options.scheduler_address:
        counts[scheduler] = counts.get(scheduler, 0) + 1
    found = ask(lambda: session.client("ec2").describe_instance_types(InstanceTypes=sorted(counts)),
                "describing the run's instance types")
    if isinstance(found, Refused):
        return ()
    vcpus = {t["InstanceType"]: float(t["VCpuInfo"]["DefaultVCpus"]) for t in found.get("InstanceTypes", [])}
    needs: dict[tuple[str, str], list[tuple[float, str]]] = {}
    for kind, count in counts.items():
        quota = ec2_quota(kind)
        if quota is None or kind not in vcpus:
            continue
        needs.setdefault(quota, []).append((count * vcpus[kind], f"{count} x {kind} ({vcpus[kind]:g} vCPUs)"))
    return tuple(VcpuNeed("ec2", code, name, sum(v for v, _ in parts), " + ".join(w for _, w in parts))
                 for (code, name), parts in needs.items())


def worker_arch(session: Session, worker: str) -> str:
    """The workers' architecture: EC2's word on their instance type, else its name's."""
    from flowrig.backends.aws.preflight.instances import describe

    described = describe(session, [worker])
    shape = None if isinstance(described, Refused) else described.get(worker)
    return shape.archs[0] if shape is not None and shape.archs else architecture(worker)


def instance_checks(session: Session, plan: "PreflightPlan", options: "EC2Options", done: list[Check]) -> list[Check]:
    """The instance types' checks; against the image's architectures only where the
    ``image-arch`` check of ``done`` did not compare them with the workers' already (an
    image outside ECR of the region: its copy on this machine tells them), so that one
    mismatch is one line. The scheduler's and the workers' share one AMI: one architecture."""
    from flowrig.backends.aws.preflight.image import image_architectures
    from flowrig.backends.aws.preflight.instances import ec2_type_checks

    compared = any(check.name == "image-arch" and check.ok is not None for check in done)
    held = () if compared or not plan.image else image_architectures(session, plan.image)[0]
    checks = ec2_type_checks(session, options, held, plan.image or "")
    worker = options.worker_instance_type or options.instance_type
    scheduler = options.scheduler_instance_type or options.instance_type
    if options.scheduler_address or scheduler == worker or any(c.ok is False for c in checks):
        return checks
    archs = {kind: worker_arch(session, kind) for kind in (worker, scheduler)}
    if archs[worker] != archs[scheduler]:
        checks.append(Check("instance-type", f"{scheduler}, {worker}", False,
                            f"the scheduler's {scheduler} runs linux/{archs[scheduler]}, the workers' {worker} "
                            f"linux/{archs[worker]}, and the run's VMs share one AMI and image",
                            "choose instance types of one architecture"))
    return checks


def ec2_target(session: Session, plan: "PreflightPlan", options: "EC2Options") -> AwsTarget:
    """What a run of ``plan`` with ``options`` asks of AWS."""
    worker = options.worker_instance_type or options.instance_type
    arch = worker_arch(session, worker)
    services = ["ecr.api", "ecr.dkr", "s3"]
    if options.tls != "baked":
        services.append("secretsmanager")

    def calls(caller: Caller, vpc_id: str) -> list[PlannedCall]:
        return ec2_calls(caller, plan.run_id, vpc_id=vpc_id, make_group=not options.security_groups,
                         make_profile=not options.iam_instance_profile, per_run_tls=options.tls != "baked")

    return AwsTarget(
        backend="ec2",
        image=plan.image,
        arch=arch,
        arch_source=f"instance type {worker}",
        arch_fix=f"push an image for linux/{arch} (flowrig build), or choose an instance type of the image's "
        "architecture",
        vpc=options.vpc,
        subnets=(options.subnet_id,) if options.subnet_id else None,
        security_groups=tuple(options.security_groups or ()),
        public_ip=not options.use_private_ip,
        public_option="use_private_ip = false",
        services=tuple(services),
        needs=ec2_needs(session, options, plan.max_workers),
        calls=calls,
    )
