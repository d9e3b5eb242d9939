"""What the AWS preflight checks check: one run's :class:`AwsTarget`, as the ``ecs``,
``fargate`` and ``ec2`` backends describe it from their options (no API call)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Mapping

if TYPE_CHECKING:
    from flowrig.backends.aws.preflight.calls import Caller


@dataclass(frozen=True)
class PlannedCall:
    """One call a run makes, as IAM authorizes it: an action on a resource with the
    request's condition keys (a list is a multivalued key)."""

    action: str
    resource: str
    context: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class VcpuNeed:
    """The vCPUs a run may hold at once against one quota.

    ``what`` says how they add up, for the line (``8 workers x 1 vCPU + the scheduler's 1``).
    """

    service_code: str
    quota_code: str
    quota_name: str
    vcpus: float
    what: str


@dataclass(frozen=True)
class AwsTarget:
    """One run of an AWS backend, as preflight checks it.

    Parameters
    ----------
    backend
        ``ecs``, ``fargate`` or ``ec2`` (the policy ``flowrig aws iam-policy`` prints).
    image
        The run's image.
    arch
        The architecture the run's roles run on, as OCI names it (``amd64``, ``arm64``).
    arch_source
        Where that comes from, for the line (``cpu_architecture = X86_64``).
    vpc, subnets
        The run's VPC and subnets as the options name them (``None``: the default VPC,
        every subnet of the VPC).
    security_groups
        The project's own security groups (empty: the run makes one, whose rules are known).
    public_ip, public_option
        Whether the roles get public addresses, and the option that gives them one.
    services
        The AWS services the roles call from the subnets (VPC endpoint names).
    needs
        The vCPU quotas the run's largest size needs.
    calls
        The calls the run makes, for the runner's rights: from the caller and the
        run's VPC id.
    arch_fix
        How to make the run's architecture match another image's.
    """

    backend: str
    image: str | None
    arch: str
    arch_source: str
    vpc: str | None
    subnets: tuple[str, ...] | None
    security_groups: tuple[str, ...]
    public_ip: bool
    public_option: str
    services: tuple[str, ...]
    needs: tuple[VcpuNeed, ...] = ()
    calls: "Callable[[Caller, str], list[PlannedCall]] | None" = None
    arch_fix: str = ""
