"""``ec2``: a run's scheduler and workers as EC2 instances of its image.

The instances get flowrig's cloud-init, an instance profile of the run's (it may read
the run's certificate secret and nothing else), private addresses, and a security group
of the run's that admits the Dask ports from the VPC only. Everything is tagged with the
run id, removed after the run, and found by ``flowrig aws leftovers`` if a runner dies.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any, ClassVar

from flowrig.backends.aws.ec2.options import REGION_PATTERN, EC2Options
from flowrig.backends.vm.backend import VMBackend
from flowrig.backends.vm.cloudinit import RegistryLogin
from flowrig.backends.vm.options import check_name

if TYPE_CHECKING:
    from flowrig.backends.preflight import Check, PreflightPlan
    from flowrig.backends.vm.cloud import Cloud

#: An ECR registry host: ACCOUNT.dkr.ecr.REGION.amazonaws.com (.com.cn in China).
_ECR = re.compile(r"^\d{12}\.dkr\.ecr(-fips)?\.[a-z0-9-]+\.amazonaws\.com(\.cn)?$")


class EC2Backend(VMBackend):
    """``ec2``: EC2 instances, one per role."""

    name = "ec2"
    group_options = frozenset({"worker_instance_type"})
    extra = "aws"
    sdk_modules = ("botocore",)
    secret_source: ClassVar = "aws-secret"
    options_model = EC2Options

    @staticmethod
    def registry_login(image: str) -> RegistryLogin | None:
        host = image.split("/", 1)[0] if "/" in image else ""
        return RegistryLogin(kind="ecr", host=host) if _ECR.match(host) else None

    def check_options(self, options: EC2Options) -> None:
        check_name("region", options.region, REGION_PATTERN, "eu-west-1")
        check_name("availability_zone", options.availability_zone, REGION_PATTERN + r"[a-z]", "eu-west-1a")

    def cloud_preflight(self, plan: "PreflightPlan", options: EC2Options) -> "list[Check]":
        """The image, network, rights, EC2 vCPU quotas and instance types a run of ``plan``
        needs (read-only)."""
        from flowrig.backends.aws.ec2.preflight import ec2_target, instance_checks
        from flowrig.backends.aws.preflight import aws_checks
        from flowrig.backends.aws.session import Session

        session = Session(options.region)
        checks = aws_checks(session, ec2_target(session, plan, options))
        return checks + instance_checks(session, plan, options, checks)

    def make_cloud(self, run_id: str, options: Any) -> "Cloud":
        from flowrig.backends.aws.ec2.cloud import EC2Cloud

        return EC2Cloud(run_id, options)
