"""``[cluster.options]`` of the ``ec2`` backend (dask-cloudprovider's ``EC2Cluster`` names)."""

from __future__ import annotations

from pydantic import Field, StrictInt, StrictStr

from flowrig.backends.vm.options import VMOptions

#: An AWS region name (``eu-west-1``, ``us-gov-west-1``).
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
        "t3.medium",
        description="instance type of every VM (its architecture, from EC2, picks the AMI's and must be the image's)",
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
    worker_gpu: StrictInt = Field(
        0, ge=0,
        description="GPUs each worker uses (`docker run --gpus all`, Dask resource `GPU`); the worker instance type "
        "must have as many, and the AMI NVIDIA's driver and container toolkit",
    )
    filesystem_size: StrictInt = Field(40, gt=0, description="GiB of the root volume")
    instance_tags: dict[StrictStr, StrictStr] = Field(
        default_factory=dict, description="more tags on the instances only"
    )
