"""One ``ec2`` run's instances as data and calls: the RunInstances parameters of a VM
(pure), its architecture, an ECR repository's ARN, and termination that waits.
"""

from __future__ import annotations

import logging
import re
import time
import uuid
from typing import Any, Mapping

logger = logging.getLogger("flowrig.vm")

#: Instance types of AWS Graviton (arm64) processors: a ``g`` after the generation.
_GRAVITON = re.compile(r"^[a-z]+\d+g[a-z]*\.")
#: DescribeInstances and TerminateInstances take this many ids per call.
BATCH = 100
#: Seconds between checks while instances terminate.
POLL_SECONDS = 2.0


def tag_list(tags: Mapping[str, str]) -> list[dict[str, str]]:
    return [{"Key": key, "Value": value} for key, value in sorted(tags.items())]


def error_code(exc: Exception) -> tuple[str, str]:
    error = getattr(exc, "response", {}).get("Error", {})
    return str(error.get("Code", "")), str(error.get("Message", ""))


def ecr_repository_arn(partition: str, image: str) -> str:
    """The ARN of the ECR repository of ``ACCOUNT.dkr.ecr.REGION.amazonaws.com/REPO[:TAG|@DIGEST]``."""
    host, _, path = image.partition("/")
    account, region = host.split(".")[0], host.split(".")[3]
    repository = path.split("@", 1)[0]
    parent, _, last = repository.rpartition("/")
    # A tag follows the last path segment's colon; a registry port cannot occur here.
    repository = (f"{parent}/" if parent else "") + last.split(":", 1)[0]
    return f"arn:{partition}:ecr:{region}:{account}:repository/{repository}"


def architecture(instance_type: str) -> str:
    """``arm64`` for Graviton instance types, else ``amd64`` (as Ubuntu names them)."""
    return "arm64" if _GRAVITON.match(instance_type) else "amd64"


def instance_parameters(
    *,
    name: str,
    image_id: str,
    instance_type: str,
    user_data: str,
    subnet_id: str,
    security_groups: list[str],
    profile: Mapping[str, str] | None,
    root_device: str,
    filesystem_size: int,
    tags: Mapping[str, str],
    public_ip: bool,
    key_name: str | None,
    market: str = "on-demand",
) -> dict[str, Any]:
    """The RunInstances parameters of one VM (pure).

    IMDSv2 only (session tokens), with a hop limit of 2 so that the role's container
    (host networking, yet one hop more behind Docker's bridge when there is one) reaches
    it; an encrypted root volume deleted with the instance; a public address only when
    asked for; the VM's name as its ``Name`` tag, on the instance and its volume. A
    ``spot`` VM is a one-time Spot request at the on-demand price at most (no
    ``MaxPrice``), terminated when EC2 takes it back.
    """
    labelled = tag_list({**tags, "Name": name})
    params: dict[str, Any] = {
        "ImageId": image_id,
        "InstanceType": instance_type,
        "MinCount": 1,
        "MaxCount": 1,
        "UserData": user_data,
        # One token per VM: botocore's retries of this call start no second instance.
        "ClientToken": f"{name}-{uuid.uuid4().hex}"[:64],
        "MetadataOptions": {"HttpTokens": "required", "HttpPutResponseHopLimit": 2, "HttpEndpoint": "enabled"},
        "BlockDeviceMappings": [{
            "DeviceName": root_device,
            "Ebs": {"VolumeSize": filesystem_size, "VolumeType": "gp3", "Encrypted": True,
                    "DeleteOnTermination": True},
        }],
        "NetworkInterfaces": [{
            "DeviceIndex": 0,
            "SubnetId": subnet_id,
            "Groups": list(security_groups),
            "AssociatePublicIpAddress": public_ip,
            "DeleteOnTermination": True,
        }],
        "TagSpecifications": [
            {"ResourceType": "instance", "Tags": labelled},
            {"ResourceType": "volume", "Tags": labelled},
        ],
    }
    if profile:
        params["IamInstanceProfile"] = dict(profile)
    if key_name:
        params["KeyName"] = key_name
    if market == "spot":
        params["InstanceMarketOptions"] = {"MarketType": "spot", "SpotOptions": {
            "SpotInstanceType": "one-time", "InstanceInterruptionBehavior": "terminate"}}
    return params


def terminate_and_wait(ec2: Any, instance_ids: list[str], deadline: float) -> None:
    """Terminate instances and wait until each is ``terminated`` (quiet about gone ones).

    Raises
    ------
    TimeoutError
        When some are still not terminated at ``deadline`` (``time.monotonic()``).
    """
    pending = list(instance_ids)
    for start in range(0, len(pending), BATCH):
        terminate_quietly(ec2, pending[start : start + BATCH])
    while pending:
        left = []
        for start in range(0, len(pending), BATCH):
            pages = ec2.get_paginator("describe_instances").paginate(
                Filters=[{"Name": "instance-id", "Values": pending[start : start + BATCH]}]
            )
            left += [
                i["InstanceId"] for page in pages for r in page["Reservations"] for i in r["Instances"]
                if i["State"]["Name"] != "terminated"
            ]
        pending = left
        if pending and time.monotonic() > deadline:
            raise TimeoutError(f"{len(pending)} instance(s) not terminated in time: {', '.join(pending)}")
        if pending:
            time.sleep(POLL_SECONDS)


def terminate_quietly(ec2: Any, instance_ids: list[str]) -> None:
    """TerminateInstances; ids that do not exist (any more) are left out and the rest retried."""
    ids = list(instance_ids)
    while ids:
        try:
            ec2.terminate_instances(InstanceIds=ids)
            return
        except Exception as exc:
            code, message = error_code(exc)
            if code != "InvalidInstanceID.NotFound":
                raise
            missing = set(re.findall(r"i-[0-9a-f]+", message))
            remaining = [ident for ident in ids if ident not in missing]
            if not missing or remaining == ids:
                return
            ids = remaining
