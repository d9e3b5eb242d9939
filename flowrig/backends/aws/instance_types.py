"""EC2 instance types as a run's shape checks need them: GPUs and architectures,
from ``DescribeInstanceTypes`` (read-only), and the checks of a type against a run.

Both the ``ec2`` backend (its instance types) and ``ecs`` (the instance types of a
capacity provider's Auto Scaling group) ask here, so both word a mismatch alike.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Mapping

from flowrig.backends.aws.session import Session, aws_errors
from flowrig.errors import BadInput

logger = logging.getLogger("flowrig.aws")

#: Codes of a refused read: the runner's policy lacks it.
_DENIED = ("UnauthorizedOperation", "AccessDenied", "AccessDeniedException")
#: DescribeInstanceTypes takes at most this many names per call.
_BATCH = 100
#: EC2's architecture names -> the names image platforms use.
PLATFORM_ARCH = {"x86_64": "amd64", "arm64": "arm64", "i386": "386"}
#: GPU instance types to name in a fix, by architecture.
GPU_EXAMPLES = {"amd64": "g5.xlarge, g6.xlarge", "arm64": "g5g.xlarge"}


@dataclass(frozen=True)
class InstanceShape:
    """What one instance type offers: its GPUs and the architectures it runs (as
    image platforms name them: ``amd64``, ``arm64``)."""

    name: str
    gpus: int
    gpu_name: str
    archs: tuple[str, ...]


def shape_of(described: Mapping[str, Any]) -> InstanceShape:
    """One ``DescribeInstanceTypes`` entry as an :class:`InstanceShape`."""
    gpus = (described.get("GpuInfo") or {}).get("Gpus") or []
    archs = (described.get("ProcessorInfo") or {}).get("SupportedArchitectures") or []
    return InstanceShape(
        name=str(described["InstanceType"]),
        gpus=sum(int(gpu.get("Count", 0)) for gpu in gpus),
        gpu_name=", ".join(sorted({f"{gpu.get('Manufacturer', '')} {gpu.get('Name', '')}".strip() for gpu in gpus})),
        archs=tuple(PLATFORM_ARCH.get(arch, arch) for arch in archs),
    )


def describe_types(session: Session, names: list[str]) -> dict[str, InstanceShape]:
    """The shapes of ``names``; empty when the caller may not read them (a runner
    policy from before this check): the callers then check nothing.

    Raises
    ------
    BadInput
        A name EC2 does not know (``InvalidInstanceType``), naming it.
    InfrastructureError
        Any other refusal.
    """
    from botocore.exceptions import ClientError

    found: dict[str, InstanceShape] = {}
    wanted = sorted(set(names))
    ec2 = session.client("ec2")
    for start in range(0, len(wanted), _BATCH):
        batch = wanted[start : start + _BATCH]
        with aws_errors(f"describing instance types {', '.join(batch)}"):
            try:
                answer = ec2.describe_instance_types(InstanceTypes=batch)
            except ClientError as exc:
                code = exc.response.get("Error", {}).get("Code")
                if code in _DENIED:
                    logger.warning("the instance types are not checked: ec2:DescribeInstanceTypes was refused (%s)",
                                   code)
                    return {}
                if code != "InvalidInstanceType":
                    raise
                raise BadInput(
                    f"EC2 in {session.region_name} knows no instance type among {', '.join(batch)} "
                    f"({exc.response['Error'].get('Message', '')}): name one `aws ec2 describe-instance-types` lists"
                ) from None
        found.update((shape.name, shape) for shape in map(shape_of, answer.get("InstanceTypes", ())))
    return found


def check_gpus(shape: InstanceShape, gpus: int, where: str, key: str = "worker_gpu") -> None:
    """Refuse ``shape`` when it has fewer than ``gpus`` GPUs (``where`` names the option,
    ``key`` the one that asks for them: a worker group's is ``gpu``).

    Raises
    ------
    BadInput
        One line naming the type, what it has, and GPU types of its architecture.
    """
    if gpus <= shape.gpus:
        return
    has = f"{shape.gpus} GPU{'s' if shape.gpus != 1 else ''} ({shape.gpu_name})" if shape.gpus else "no GPU"
    arch = shape.archs[0] if shape.archs else "amd64"
    raise BadInput(
        f"{where} {shape.name} has {has} but {key} = {gpus}: use a GPU instance type "
        f"({GPU_EXAMPLES.get(arch, GPU_EXAMPLES['amd64'])} for {arch}), or lower {key}"
    )


def check_arch(shape: InstanceShape, held: tuple[str, ...], where: str, image: str) -> None:
    """Refuse ``shape`` when it runs none of the image's architectures ``held``
    (``amd64``, ``arm64``; empty: not known, nothing refused).

    Raises
    ------
    BadInput
        One line naming the type, its architectures and the image's.
    """
    if not shape.archs or not held or set(held) & set(shape.archs):
        return
    raise BadInput(
        f"{where} {shape.name} runs linux/{', linux/'.join(shape.archs)} but the image {image} is "
        f"linux/{', linux/'.join(held)}: "
        f"use an instance type for {held[0]}, or build the image with flowrig build --platform "
        f"linux/{shape.archs[0]}"
    )
