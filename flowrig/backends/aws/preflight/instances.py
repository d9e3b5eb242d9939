"""The instance types a run's roles get, as preflight checks: the ``ec2`` backend's
instance types, and the instances of an ``ecs`` run's capacity provider.

Each type must exist in the region (``DescribeInstanceTypes``), run the image's
architecture, and, for workers, have ``worker_gpu`` GPUs. A capacity provider must be
the cluster's and an Auto Scaling group's (``DescribeClusters``,
``DescribeCapacityProviders``), whose instance types (its launch template, overrides or
launch configuration) are checked alike. The same reads and words as the checks every
run makes before it creates anything (:mod:`flowrig.backends.aws.instance_types`, and the
``ecs`` backend's shapes, whose reader the backend hands in), here as :class:`Check` lines: each failure one
line with its fix, a read the runner may not make "not checked".
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

from flowrig.backends.aws.instance_types import InstanceShape, check_arch, check_gpus, shape_of
from flowrig.backends.aws.preflight.answers import Refused, ask
from flowrig.backends.preflight import Check
from flowrig.errors import BadInput

if TYPE_CHECKING:
    from flowrig.backends.aws.session import Session

#: ``cpu_architecture`` -> the architecture as image platforms name it.
ECS_PLATFORM = {"X86_64": "amd64", "ARM64": "arm64"}


def _failed(name: str, subject: str, exc: BadInput) -> Check:
    """A refusal of the run's own checks as a failed check: its words, then its fix."""
    line, _, fix = str(exc).rpartition(": ")
    return Check(name, subject, False, line or fix, fix if line else "")


def _refused_or_passed(name: str, subject: str, check: Callable[[], None], line: str) -> Check:
    try:
        check()
    except BadInput as exc:
        return _failed(name, subject, exc)
    return Check(name, subject, True, line)


def describe(session: "Session", kinds: list[str]) -> "dict[str, InstanceShape] | Refused":
    """The shapes of ``kinds``, one call; :class:`Refused` when EC2 said no (an unknown type
    is ``InvalidInstanceType``)."""
    wanted = sorted(set(kinds))
    got = ask(lambda: session.client("ec2").describe_instance_types(InstanceTypes=wanted),
              f"describing instance types {', '.join(wanted)}")
    if isinstance(got, Refused):
        return got
    return {shape.name: shape for shape in map(shape_of, got.get("InstanceTypes", ()))}


def _shown(shape: InstanceShape) -> str:
    gpus = f"{shape.gpus} GPU{'s' if shape.gpus != 1 else ''} ({shape.gpu_name})" if shape.gpus else "no GPU"
    return f"linux/{', linux/'.join(shape.archs) or '?'}, {gpus}"


def type_checks(session: "Session", roles: dict[str, tuple[str, str]], gpus: int, held: tuple[str, ...],
                image: str) -> list[Check]:
    """One check per role's instance type (``role -> (option, type)``): it exists in the
    region, runs one of the image's architectures ``held`` (empty: not known), and the
    workers' has ``gpus`` GPUs."""
    described = describe(session, [kind for _, kind in roles.values()])
    if isinstance(described, Refused):
        kinds = ", ".join(sorted({kind for _, kind in roles.values()}))
        if described.code == "InvalidInstanceType":
            return [Check("instance-type", kinds, False,
                          f"EC2 in {session.region_name} knows no instance type among {kinds} ({described.message})",
                          "name one `aws ec2 describe-instance-types` lists")]
        return [Check("instance-type", kinds, None, f"the instance types could not be read ({described}): "
                      "not checked")]
    checks = []
    # One check per type: the scheduler's and the workers' are often one.
    by_kind: dict[str, list[str]] = {}
    for role, (_, kind) in roles.items():
        by_kind.setdefault(kind, []).append(role)
    for kind, of in by_kind.items():
        option = roles[of[0]][0]
        shape = described.get(kind)
        if shape is None:
            checks.append(Check("instance-type", kind, False, f"EC2 in {session.region_name} does not describe {kind}",
                                f"set [cluster.options] {option} to a type of the region"))
            continue
        where = f"[cluster.options] {option} ="

        def check(shape: InstanceShape = shape, of: list[str] = of, where: str = where) -> None:
            if "worker" in of:
                check_gpus(shape, gpus, where)
            check_arch(shape, held, where, image)

        checks.append(_refused_or_passed("instance-type", kind, check, f"the {' and '.join(of)}'s: {_shown(shape)}"))
    return checks


def ec2_type_checks(session: "Session", options: Any, held: tuple[str, ...], image: str) -> list[Check]:
    """The ``ec2`` backend's instance types, as :func:`type_checks` checks them."""
    roles = {"worker": ("worker_instance_type" if options.worker_instance_type else "instance_type",
                        options.worker_instance_type or options.instance_type)}
    if not options.scheduler_address:
        roles["scheduler"] = ("scheduler_instance_type" if options.scheduler_instance_type else "instance_type",
                              options.scheduler_instance_type or options.instance_type)
    return type_checks(session, roles, options.worker_gpu, held, image)


def capacity_checks(session: "Session", options: Any, fargate_workers: bool, held: tuple[str, ...], image: str,
                    provider_instance_types: "Callable[[Session, str, str], list[str] | None]") -> list[Check]:
    """The ``ecs`` workers' capacity provider: the cluster's, an Auto Scaling group's, and
    each instance type of the group fit for the workers (GPUs, the run's architecture:
    ``cpu_architecture``, else the image's ``held``). None without ``capacity_provider``.

    ``provider_instance_types`` reads the group's instance types (the ``ecs`` backend's own
    :func:`~flowrig.backends.aws.ecs.shapes.provider_instance_types`: this layer is below it).
    """
    provider = options.capacity_provider
    if not provider or fargate_workers or not options.cluster_arn:
        return []
    subject = f"capacity provider {provider}"
    try:
        kinds = provider_instance_types(session, options.cluster_arn, provider)
    except BadInput as exc:
        return [_failed("capacity-provider", subject, exc)]
    if not kinds:
        return [Check("capacity-provider", subject, None, "its Auto Scaling group's instance types could not be "
                      "read: not checked")]
    archs = (ECS_PLATFORM[options.cpu_architecture],) if options.cpu_architecture else held
    described = describe(session, kinds)
    if isinstance(described, Refused):
        return [Check("capacity-provider", subject, None, f"its instance types could not be read ({described}): "
                      "not checked")]
    where = f"[cluster.options] capacity_provider = {provider!r} runs"
    checks = [Check("capacity-provider", subject, True, f"the cluster's, an Auto Scaling group of {', '.join(kinds)}")]
    for kind in kinds:
        shape = described.get(kind)
        if shape is None:
            checks.append(Check("instance-type", kind, False, f"EC2 in {session.region_name} does not describe {kind}, "
                                f"an instance type of capacity provider {provider}",
                                "fix the Auto Scaling group's launch template"))
            continue

        def check(shape: InstanceShape = shape) -> None:
            check_gpus(shape, options.worker_gpu, where)
            check_arch(shape, archs, where, image)

        checks.append(_refused_or_passed("instance-type", kind, check, f"the workers' ({provider}): {_shown(shape)}"))
    return checks
