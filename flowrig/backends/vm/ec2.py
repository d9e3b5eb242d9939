"""``ec2``: a run's scheduler and workers as EC2 instances of its image.

The instances get flowrig's cloud-init, an instance profile of the run's (it may read
the run's certificate secret and nothing else), private addresses, and a security group
of the run's that admits the Dask ports from the VPC only. Everything is tagged with the
run id, removed after the run, and found by ``flowrig aws leftovers`` if a runner dies.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import Field, StrictInt, StrictStr

from flowrig.backends.vm.backend import VMBackend
from flowrig.backends.vm.cloudinit import RegistryLogin
from flowrig.backends.vm.options import VMOptions, check_name

if TYPE_CHECKING:
    from flowrig.backends.vm.cloud import Cloud

#: An ECR registry host: ACCOUNT.dkr.ecr.REGION.amazonaws.com (.com.cn in China).
_ECR = re.compile(r"^\d{12}\.dkr\.ecr(-fips)?\.[a-z0-9-]+\.amazonaws\.com(\.cn)?$")
REGION_PATTERN = r"[a-z]{2}(-gov|-iso[a-z]?)?-[a-z]+-\d{1,2}"


class EC2Options(VMOptions):
    """``[cluster.options]`` of the ``ec2`` backend (dask-cloudprovider's ``EC2Cluster`` names)."""

    region: StrictStr | None = Field(
        None, description="AWS region of the run; default: `AWS_REGION`, else the profile's"
    )
    availability_zone: StrictStr | None = Field(
        None, description="the zone the instances start in; default: any zone of the subnets"
    )
    ami: StrictStr | None = Field(None, description="the machine image; default: Ubuntu's current LTS for the region")
    instance_type: StrictStr = Field(
        "t3.medium", description="instance type of every VM (a Graviton type gets an arm64 AMI)"
    )
    scheduler_instance_type: StrictStr | None = Field(
        None, description="instance type of the scheduler VM; default: `instance_type`"
    )
    worker_instance_type: StrictStr | None = Field(
        None, description="instance type of each worker VM; default: `instance_type`"
    )
    vpc: StrictStr | None = Field(None, description="VPC of the instances; default: the region's default VPC")
    subnet_id: StrictStr | None = Field(
        None, description="subnet of the instances; default: a subnet of the VPC (in `availability_zone` when set)"
    )
    security_groups: list[StrictStr] | None = Field(
        None, description="security groups of yours for the instances; default: one made for the run"
    )
    iam_instance_profile: dict[StrictStr, StrictStr] | None = Field(
        None,
        description="an instance profile of yours (`{ Name = '...' }` or `{ Arn = '...' }`); default: one made for "
        "the run",
    )
    key_name: StrictStr | None = Field(None, description="an EC2 key pair for SSH into the VMs; default: none")
    filesystem_size: StrictInt = Field(40, gt=0, description="GiB of the root volume")
    instance_tags: dict[StrictStr, StrictStr] = Field(
        default_factory=dict, description="more tags on the instances only"
    )


class EC2Backend(VMBackend):
    """``ec2``: EC2 instances, one per role."""

    name = "ec2"
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

    def make_cloud(self, run_id: str, options: Any) -> "Cloud":
        from flowrig.backends.vm.ec2_cloud import EC2Cloud

        return EC2Cloud(run_id, options)
