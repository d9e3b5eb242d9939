"""Preflight checks of the AWS backends: what a run needs from AWS, checked with
read-only calls before anything is created (``flowrig preflight``, and the start of
every ``ecs``, ``fargate`` and ``ec2`` run unless ``preflight = false``).

- :mod:`.image`: the image is in ECR and holds the run's architecture;
- :mod:`.network` (pure) and :mod:`.vpc` (its reads): each subnet reaches ECR, S3,
  CloudWatch Logs and Secrets Manager (a NAT gateway, or VPC endpoints), and the
  project's security groups let the runner and the roles talk;
- :mod:`.rights` and :mod:`.calls`: the runner's identity may make each call of the run;
- :mod:`.quotas`: the vCPU quotas cover the run's largest size.

The backends describe their run as an :class:`~.target.AwsTarget`; :func:`aws_checks`
runs every check on it.
"""

from __future__ import annotations

from flowrig.backends.aws.preflight.answers import Refused
from flowrig.backends.aws.preflight.calls import Caller
from flowrig.backends.aws.preflight.image import image_checks
from flowrig.backends.aws.preflight.network import network_checks
from flowrig.backends.aws.preflight.quotas import quota_checks
from flowrig.backends.aws.preflight.rights import rights_checks
from flowrig.backends.aws.preflight.target import AwsTarget
from flowrig.backends.aws.preflight.vpc import find_vpc, read_facts
from flowrig.backends.aws.session import Session
from flowrig.backends.preflight import Check


def aws_checks(session: Session, target: AwsTarget) -> list[Check]:
    """Every preflight check of ``target``, in the order a run meets them.

    Raises
    ------
    BadInput
        A VPC or subnet the options name does not exist; no credentials or region.
    InfrastructureError
        AWS did not answer.
    """
    checks = image_checks(session, target) if target.image else []
    vpc_id = find_vpc(session, target.vpc, target.subnets)
    facts = read_facts(session, vpc_id, target.security_groups)
    if isinstance(facts, Refused):
        checks.append(Check("network", vpc_id, None, f"the runner may not read the network ({facts.code}): "
                            "not checked"))
    else:
        subnets = list(target.subnets or sorted(facts.subnets))
        checks += network_checks(
            facts, subnets, list(target.security_groups), public_ip=target.public_ip,
            services=target.services, public_option=target.public_option,
        )
    if target.calls is not None:
        who = session.caller()
        caller = Caller(who.account, who.user_id, session.region_name)
        checks += rights_checks(session, target.backend, who.user_id, target.calls(caller, vpc_id))
    checks += quota_checks(session, target.needs)
    return checks
