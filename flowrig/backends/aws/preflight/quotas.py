"""Whether the account's vCPU quotas cover the run's largest size (Service Quotas).

The quota is compared with what the run alone may hold at once: what else already runs
in the account is not counted, and the lines say so. A quota Service Quotas does not
know in the region, or may not be read, is "not checked".
"""

from __future__ import annotations

from flowrig.backends.aws.preflight.answers import Refused, ask
from flowrig.backends.aws.preflight.target import VcpuNeed
from flowrig.backends.aws.session import Session
from flowrig.backends.preflight import Check

#: Fargate's vCPU quotas (service code ``fargate``).
FARGATE_ON_DEMAND = ("L-3032A538", "Fargate On-Demand vCPU resource count")
FARGATE_SPOT = ("L-36FBB829", "Fargate Spot vCPU resource count")
#: EC2's running-instance vCPU quotas (service code ``ec2``) by instance family letter:
#: (on-demand, spot) quota code and name.
EC2_FAMILIES = {
    **{letter: (("L-1216C47A", "Running On-Demand Standard instances"),
                ("L-34B43A08", "All Standard Spot Instance Requests")) for letter in "acdhimrtz"},
    **{letter: (("L-DB2E81BA", "Running On-Demand G and VT instances"),
                ("L-3819A6DF", "All G and VT Spot Instance Requests")) for letter in ("g", "vt")},
    "p": (("L-417A185B", "Running On-Demand P instances"), ("L-7212CCBC", "All P Spot Instance Requests")),
}


def ec2_quota(instance_type: str, spot: bool = False) -> tuple[str, str] | None:
    """The vCPU quota of an instance type's family (``None``: a family not in the table)."""
    family = instance_type.split(".", 1)[0].lower()
    letters = "vt" if family.startswith("vt") else family[:1]
    codes = EC2_FAMILIES.get(letters)
    return None if codes is None else codes[1 if spot else 0]


def _vcpus(value: float) -> str:
    return f"{value:g} vCPU" + ("" if value == 1 else "s")


def quota_checks(session: Session, needs: tuple[VcpuNeed, ...]) -> list[Check]:
    """One check per quota the run needs."""
    client = session.client("service-quotas") if needs else None
    checks = []
    for need in needs:
        subject = f"{need.service_code}/{need.quota_code}"
        found = ask(
            lambda need=need: client.get_service_quota(ServiceCode=need.service_code, QuotaCode=need.quota_code),
            f"reading the quota {need.quota_name}",
        )
        if isinstance(found, Refused):
            checks.append(Check("quota", subject, None, f"{need.quota_name} could not be read ({found.code}): "
                                f"not checked; the run may use {_vcpus(need.vcpus)}"))
            continue
        value = float(found.get("Quota", {}).get("Value", 0.0))
        if value >= need.vcpus:
            checks.append(Check("quota", subject, True, f"{need.quota_name} is {value:g}; the run may use "
                                f"{_vcpus(need.vcpus)} (what else runs in the account is not counted)"))
            continue
        checks.append(Check(
            "quota", subject, False,
            f"{need.quota_name} is {value:g} in {session.region_name}, the run may use {_vcpus(need.vcpus)} "
            f"({need.what})",
            f"aws service-quotas request-service-quota-increase --service-code {need.service_code} --quota-code "
            f"{need.quota_code} --desired-value {need.vcpus:g}, or lower max_workers / the adapt maximum",
        ))
    return checks
