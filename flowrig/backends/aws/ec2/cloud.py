"""The ``ec2`` backend's :class:`~flowrig.backends.vm.cloud.Cloud`: EC2 on botocore.

Everything goes through what the AWS backends share (:mod:`flowrig.backends.aws`):
its session, its error translation, and its :class:`~flowrig.backends.aws.resources.RunResources`
(the VPC look-ups, the run's security group, the run's secret, deletion with retries),
which :class:`EC2Resources` extends by what only EC2 runs make: an instance role and its
instance profile, and instances. The instance role gets the permissions boundary the
bootstrap made (:func:`~flowrig.backends.aws.policies.instance_boundary_policy`), looked up
before anything is made. The run's lease (:mod:`flowrig.backends.aws.lease`) is on every
resource and renewed while the run lives, so ``flowrig aws leftovers`` tells a live run
from a killed one as it does for ECS runs.
"""

from __future__ import annotations

import json
import logging
import re
import time
import uuid
from typing import TYPE_CHECKING, Any, Mapping

from flowrig.backends.aws import lease
from flowrig.backends.aws import policies as iam_docs
from flowrig.backends.aws.bootstrap import find_instance_boundary
from flowrig.backends.aws.names import UBUNTU_PARAMETER_PATH
from flowrig.backends.aws.resources import RunResources
from flowrig.backends.aws.session import Session, aws_errors, denied
from flowrig.backends.pool import Observed
from flowrig.backends.vm.cloud import Cloud, Created, VMRequest
from flowrig.errors import BadInput, one_line

if TYPE_CHECKING:
    from flowrig.backends.aws.ec2.options import EC2Options
    from flowrig.backends.vm.cloudinit import RegistryLogin

logger = logging.getLogger("flowrig.vm")

#: Canonical's public SSM parameter of the current Ubuntu LTS AMI (architecture filled in).
UBUNTU_PARAMETER = UBUNTU_PARAMETER_PATH + "24.04/stable/current/{arch}/hvm/ebs-gp3/ami-id"
#: Instance types of AWS Graviton (arm64) processors: a ``g`` after the generation.
_GRAVITON = re.compile(r"^[a-z]+\d+g[a-z]*\.")
#: DescribeInstances and TerminateInstances take this many ids per call.
BATCH = 100
#: Seconds between checks while instances terminate.
_POLL_SECONDS = 2.0
#: Seconds RunInstances is retried while a new instance profile propagates through IAM.
PROFILE_PROPAGATION = 60.0
#: RunInstances codes that refuse one VM for want of capacity or quota: the pool goes on
#: with the others, or fails with the reason.
CAPACITY_CODES = frozenset({
    "InsufficientInstanceCapacity",
    "InsufficientFreeAddressesInSubnet",
    "InstanceLimitExceeded",
    "VcpuLimitExceeded",
    "InsufficientCapacity",
    "Unsupported",
})
#: RunInstances codes that say a parameter from ``[cluster.options]`` is wrong (exit 2).
PARAMETER_CODES = re.compile(
    r"^(InvalidParameter\w*|InvalidInstanceType\S*|InvalidAMIID\S*|InvalidKeyPair\S*|InvalidSubnet\S*"
    r"|InvalidGroup\S*|MissingParameter|InvalidBlockDeviceMapping|UnsupportedOperation)$"
)
#: EC2 instance states, as the pool sees them.
_STATES = {"pending": "pending", "running": "running"}


def _tag_list(tags: Mapping[str, str]) -> list[dict[str, str]]:
    return [{"Key": key, "Value": value} for key, value in sorted(tags.items())]


def _code(exc: Exception) -> tuple[str, str]:
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
) -> dict[str, Any]:
    """The RunInstances parameters of one VM (pure).

    IMDSv2 only (session tokens), with a hop limit of 2 so that the role's container
    (host networking, yet one hop more behind Docker's bridge when there is one) reaches
    it; an encrypted root volume deleted with the instance; a public address only when
    asked for; the VM's name as its ``Name`` tag, on the instance and its volume.
    """
    labelled = _tag_list({**tags, "Name": name})
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
    return params


class EC2Resources(RunResources):
    """:class:`RunResources` plus what only ``ec2`` runs make: an instance role, its
    instance profile and instances. :meth:`delete` terminates every instance of the run
    (also those whose start was interrupted, found by the run tag) and waits until they
    are terminated, since the security group cannot go while they hold interfaces in it.
    """

    def __init__(self, aws: Session, tags: Mapping[str, str], run_id: str, cleanup_timeout: float) -> None:
        super().__init__(aws, tags, cleanup_timeout)
        self.run_id = run_id

    # --- creating ------------------------------------------------------------------
    def create_instance_role(self, name: str, boundary_arn: str) -> str:
        """A role only EC2 instances may assume, with no policy yet and ``boundary_arn``
        as its permissions boundary; returns its ARN."""
        with aws_errors(f"creating IAM role {name}"):
            arn = self._client("iam").create_role(
                RoleName=name,
                Path=iam_docs.ROLE_PATH,
                AssumeRolePolicyDocument=json.dumps(iam_docs.instance_trust_policy()),
                PermissionsBoundary=boundary_arn,
                Description="flowrig: the identity of one run's instances (reads its certificate secret)",
                Tags=_tag_list(self.tags),
            )["Role"]["Arn"]
        self.made_role(name)
        return arn

    def _on_new_role(self, call: Any) -> Any:
        # The runner may change the role only while IAM sees it owns it (its tags),
        # which a role made moments before may not show everywhere yet.
        return self.while_role_propagates(call, lambda exc: denied(exc) or _code(exc)[0] == "NoSuchEntity")

    def allow_secret(self, role_name: str, secret_arn: str) -> None:
        """The role's one inline policy: reading ``secret_arn``."""
        with aws_errors(f"letting IAM role {role_name} read the run's secret"):
            self._on_new_role(lambda: self._client("iam").put_role_policy(
                RoleName=role_name, PolicyName="read-run-secret",
                PolicyDocument=json.dumps(iam_docs.instance_secret_policy(secret_arn)),
            ))

    def allow_image_pull(self, role_name: str, repository_arn: str) -> None:
        """The role's second inline policy: pulling the run's image from its ECR repository."""
        with aws_errors(f"letting IAM role {role_name} pull from {repository_arn}"):
            self._on_new_role(lambda: self._client("iam").put_role_policy(
                RoleName=role_name, PolicyName="pull-run-image",
                PolicyDocument=json.dumps(iam_docs.image_pull_policy(repository_arn)),
            ))

    def create_instance_profile(self, name: str, role_name: str) -> str:
        """An instance profile holding ``role_name``; returns its ARN."""
        iam = self._client("iam")
        with aws_errors(f"creating instance profile {name}"):
            arn = iam.create_instance_profile(
                InstanceProfileName=name, Path=iam_docs.ROLE_PATH, Tags=_tag_list(self.tags)
            )["InstanceProfile"]["Arn"]
            self._created.append(("instance-profile", name))
            self._on_new_role(lambda: iam.add_role_to_instance_profile(InstanceProfileName=name, RoleName=role_name))
        return arn

    def record_instance(self, instance_id: str) -> None:
        """An instance of the run's, terminated by :meth:`delete`."""
        self._created.append(("instance", instance_id))

    def forget_instances(self, instance_ids: list[str]) -> None:
        """Instances terminated already (they no longer hold the lease)."""
        gone = set(instance_ids)
        self._created = [(kind, ident) for kind, ident in self._created if not (kind == "instance" and ident in gone)]

    # --- deleting ------------------------------------------------------------------
    def tagged_instances(self) -> list[str]:
        """Ids of the run's instances that are not terminated, found by the run tag."""
        pages = self._client("ec2").get_paginator("describe_instances").paginate(Filters=[
            {"Name": f"tag:{iam_docs.RUN_TAG}", "Values": [self.run_id]},
            {"Name": "instance-state-name", "Values": ["pending", "running", "stopping", "stopped", "shutting-down"]},
        ])
        return [i["InstanceId"] for page in pages for r in page["Reservations"] for i in r["Instances"]]

    def delete(self) -> list[str]:
        """Terminate the run's instances and wait for it, then delete the rest, newest first."""
        leftovers: list[str] = []
        recorded = [ident for kind, ident in self._created if kind == "instance"]
        try:
            instances = sorted(set(recorded) | set(self.tagged_instances()))
            terminate_and_wait(self._client("ec2"), instances, time.monotonic() + self.cleanup_timeout)
            self.forget_instances(instances)
        except Exception as exc:  # the other resources may still go
            logger.warning("could not terminate the run's instances: %s", one_line(exc))
            leftovers += [f"instance {ident}" for ident in recorded]
            self.forget_instances(recorded)
        return leftovers + super().delete()

    def _delete_one(self, kind: str, ident: str, deadline: float) -> None:
        iam = self._client("iam")
        if kind == "instance-profile":
            for role in iam.get_instance_profile(InstanceProfileName=ident)["InstanceProfile"]["Roles"]:
                iam.remove_role_from_instance_profile(InstanceProfileName=ident, RoleName=role["RoleName"])
            iam.delete_instance_profile(InstanceProfileName=ident)
        elif kind == "role":
            for policy_name in iam.list_role_policies(RoleName=ident)["PolicyNames"]:
                iam.delete_role_policy(RoleName=ident, PolicyName=policy_name)
            super()._delete_one(kind, ident, deadline)
        else:
            super()._delete_one(kind, ident, deadline)


def terminate_and_wait(ec2: Any, instance_ids: list[str], deadline: float) -> None:
    """Terminate instances and wait until each is ``terminated`` (quiet about gone ones).

    Raises
    ------
    TimeoutError
        When some are still not terminated at ``deadline`` (``time.monotonic()``).
    """
    pending = list(instance_ids)
    for start in range(0, len(pending), BATCH):
        _terminate_quietly(ec2, pending[start : start + BATCH])
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
            time.sleep(_POLL_SECONDS)


def _terminate_quietly(ec2: Any, instance_ids: list[str]) -> None:
    """TerminateInstances; ids that do not exist (any more) are left out and the rest retried."""
    ids = list(instance_ids)
    while ids:
        try:
            ec2.terminate_instances(InstanceIds=ids)
            return
        except Exception as exc:
            code, message = _code(exc)
            if code != "InvalidInstanceID.NotFound":
                raise
            missing = set(re.findall(r"i-[0-9a-f]+", message))
            remaining = [ident for ident in ids if ident not in missing]
            if not missing or remaining == ids:
                return
            ids = remaining


class EC2Cloud(Cloud):
    """One ``ec2`` run's view of EC2, IAM, Secrets Manager and SSM.

    Parameters
    ----------
    run_id
        The run's id (in every name and tag).
    options
        The project's checked ``[cluster.options]``.
    """

    name = "ec2"
    kind = "instance"

    def __init__(self, run_id: str, options: "EC2Options") -> None:
        self.run_id = run_id
        self.options = options
        self.session = Session(options.region)
        self.lease_seconds = lease.lease_seconds()
        self.tags = {**self.labels(run_id, options.tags), **lease.initial_tags(self.lease_seconds)}
        self.resources = EC2Resources(self.session, self.tags, run_id, float(options.cleanup_timeout))
        self._renewer: lease.LeaseRenewer | None = None
        self.vpc_id = ""
        self.cidrs: list[str] = []
        self.subnet_id = ""
        self.security_groups: list[str] = []
        self.profile: dict[str, str] | None = None
        self.reader_role_arn = ""
        self.boundary_arn = ""
        self.image_id = ""
        self.root_device = ""

    def _client(self, service: str) -> Any:
        return self.session.client(service)

    @property
    def role_name(self) -> str:
        """The run's instance role and instance profile (both named so)."""
        return f"flowrig-{self.run_id}-instance"

    # --- prepare ----------------------------------------------------------------------
    def prepare(self, dashboard: bool) -> None:
        # Clients are made here, in one thread: botocore does not make them safely from
        # two threads at once, and the pool calls from its executor's threads.
        for service in ("ec2", "iam", "secretsmanager", "ssm", "sts"):
            self._client(service)
        # Everything the run makes names its caller as owner: the runner policy lets a
        # caller act only on what names it, so no other run's runner can touch it.
        owner = self.session.caller().user_id
        self.tags[iam_docs.OWNER_TAG] = owner
        self.resources.tags[iam_docs.OWNER_TAG] = owner
        # A missing boundary is bad input, found before anything is made.
        if not self.options.iam_instance_profile:
            self.boundary_arn = find_instance_boundary(self.session)
        self._renewer = lease.LeaseRenewer(self.resources, self.lease_seconds).start()
        self._network()
        self._image()
        if self.options.security_groups:
            self.security_groups = list(self.options.security_groups)
        else:
            self.security_groups = [self.resources.create_security_group(
                f"flowrig-{self.run_id}", self.vpc_id, self.cidrs, dashboard=dashboard
            )]
        self._identity()

    def _network(self) -> None:
        options = self.options
        ec2 = self._client("ec2")
        if options.subnet_id:
            with aws_errors(f"describing subnet {options.subnet_id}"):
                [subnet] = ec2.describe_subnets(SubnetIds=[options.subnet_id])["Subnets"]
            if options.vpc and subnet["VpcId"] != options.vpc:
                raise BadInput(
                    f"[cluster.options] subnet_id = {options.subnet_id!r} is in {subnet['VpcId']}, not in "
                    f"vpc = {options.vpc!r}: name a subnet of that VPC, or leave vpc out"
                )
            self.vpc_id, self.subnet_id = subnet["VpcId"], subnet["SubnetId"]
        else:
            self.vpc_id = options.vpc or self.resources.default_vpc()
            with aws_errors(f"listing the subnets of VPC {self.vpc_id}"):
                subnets = ec2.describe_subnets(Filters=[{"Name": "vpc-id", "Values": [self.vpc_id]}])["Subnets"]
            if options.availability_zone:
                subnets = [s for s in subnets if s.get("AvailabilityZone") == options.availability_zone]
            if not subnets:
                where = f" in {options.availability_zone}" if options.availability_zone else ""
                raise BadInput(f"VPC {self.vpc_id} has no subnet{where}: set subnet_id in [cluster.options]")
            self.subnet_id = sorted(s["SubnetId"] for s in subnets)[0]
        self.cidrs = self.resources.vpc_cidrs(self.vpc_id)

    def _image(self) -> None:
        """The AMI (``ami``, else Ubuntu's current LTS) and its root device's name."""
        from botocore.exceptions import ClientError

        image_id = self.options.ami
        if not image_id:
            arch = architecture(self.options.worker_instance_type or self.options.instance_type)
            parameter = UBUNTU_PARAMETER.format(arch=arch)
            try:
                image_id = self._client("ssm").get_parameter(Name=parameter)["Parameter"]["Value"]
            except Exception as exc:
                why = f"{_code(exc)[0] or type(exc).__name__}" if isinstance(exc, ClientError) else one_line(exc)
                raise BadInput(
                    f"cannot read Ubuntu's AMI from SSM parameter {parameter} in {self.session.region_name} "
                    f"({why}): set ami in [cluster.options]"
                ) from None
        with aws_errors(f"describing AMI {image_id}"):
            try:
                images = self._client("ec2").describe_images(ImageIds=[image_id])["Images"]
            except ClientError as exc:
                if not _code(exc)[0].startswith("InvalidAMIID"):
                    raise
                images = []
        if not images:
            raise BadInput(
                f"AMI {image_id} does not exist in {self.session.region_name}: set ami in [cluster.options] "
                "to an image of that region"
            )
        self.image_id = image_id
        self.root_device = images[0].get("RootDeviceName") or "/dev/sda1"

    def _identity(self) -> None:
        """The run's instance role and profile, or the project's profile and its role."""
        given = self.options.iam_instance_profile
        if given:
            self.profile = dict(given)
            name = given.get("Name") or given.get("Arn", "").rsplit("/", 1)[-1]
            with aws_errors(f"describing instance profile {name}"):
                roles = self._client("iam").get_instance_profile(InstanceProfileName=name)["InstanceProfile"]["Roles"]
            if not roles:
                raise BadInput(f"instance profile {name} holds no role: add one, or leave iam_instance_profile out")
            self.reader_role_arn = roles[0]["Arn"]
            return
        name = self.role_name
        self.reader_role_arn = self.resources.create_instance_role(name, self.boundary_arn)
        arn = self.resources.create_instance_profile(name, name)
        self.profile = {"Arn": arn}

    # --- certificates -------------------------------------------------------------------
    def store_certificates(self, line: str) -> str:
        # A profile the project named exists already: the secret's policy may name its role.
        arn = self.resources.create_run_secret(
            iam_docs.secret_name(self.run_id), line, self.reader_role_arn, grant=bool(self.options.iam_instance_profile)
        )
        if not self.options.iam_instance_profile:
            self.resources.allow_secret(self.role_name, arn)
        return arn

    def allow_registry(self, login: "RegistryLogin", image: str) -> None:
        if self.options.iam_instance_profile or login.kind != "ecr":
            return
        self.resources.allow_image_pull(self.role_name, ecr_repository_arn(self.session.partition, image))

    # --- instances ----------------------------------------------------------------------
    def instance_type(self, role: str) -> str:
        options = self.options
        special = options.scheduler_instance_type if role == "scheduler" else options.worker_instance_type
        return special or options.instance_type

    def create(self, requests: list[VMRequest]) -> Created:
        created = Created()
        for request in requests:
            params = instance_parameters(
                name=request.name,
                image_id=self.image_id,
                instance_type=self.instance_type(request.role),
                user_data=request.user_data,
                subnet_id=self.subnet_id,
                security_groups=self.security_groups,
                profile=self.profile,
                root_device=self.root_device,
                filesystem_size=self.options.filesystem_size,
                # The project's instance tags never replace the run's id or its owner.
                tags={**self.tags, **self.options.instance_tags,
                      **{k: self.tags[k] for k in (iam_docs.RUN_TAG, iam_docs.OWNER_TAG) if k in self.tags}},
                public_ip=not self.options.use_private_ip,
                key_name=self.options.key_name,
            )
            instance_id, refused = self._run_instance(request.name, params)
            if instance_id:
                created.started[request.name] = instance_id
            else:
                created.refused.append(refused or f"{request.name}: no reason given")
        return created

    def _run_instance(self, name: str, params: dict[str, Any]) -> tuple[str | None, str | None]:
        """Start one instance: ``(id, None)``, or ``(None, why)`` when EC2 had no room for it.

        Raises
        ------
        BadInput
            A parameter EC2 refused (instance type, AMI, key pair, subnet).
        InfrastructureError
            Any other refusal (a missing permission names the action).
        """
        from botocore.exceptions import ClientError

        propagation = time.monotonic() + PROFILE_PROPAGATION
        while True:
            with aws_errors(f"starting instance {name} (ec2:RunInstances)"):
                try:
                    [instance] = self._client("ec2").run_instances(**params)["Instances"]
                except ClientError as exc:
                    code, message = _code(exc)
                    if code in CAPACITY_CODES:
                        return None, f"{name}: {code}: {one_line(message)}"
                    # A new instance profile is unknown to EC2 for some seconds.
                    if (code == "InvalidParameterValue" and "profile" in message.lower()
                            and time.monotonic() < propagation):
                        time.sleep(_POLL_SECONDS)
                        continue
                    if PARAMETER_CODES.match(code):
                        raise BadInput(
                            f"EC2 refused instance {name}: {code}: {one_line(message)}: check instance_type, "
                            "ami, key_name, subnet_id and security_groups in [cluster.options]"
                        ) from None
                    raise
            self.resources.record_instance(instance["InstanceId"])
            return instance["InstanceId"], None

    def _describe(self, instance_ids: list[str]) -> dict[str, dict[str, Any]]:
        """The described instances of ``instance_ids`` that EC2 knows (yet)."""
        found: dict[str, dict[str, Any]] = {}
        ec2 = self._client("ec2")
        for start in range(0, len(instance_ids), BATCH):
            chunk = instance_ids[start : start + BATCH]
            with aws_errors("describing the run's instances"):
                # A filter, unlike InstanceIds, skips an instance EC2 does not list yet.
                pages = ec2.get_paginator("describe_instances").paginate(
                    Filters=[{"Name": "instance-id", "Values": chunk}]
                )
                for page in pages:
                    for reservation in page["Reservations"]:
                        for instance in reservation["Instances"]:
                            found[instance["InstanceId"]] = instance
        return found

    def observe(self, handles: list[str]) -> dict[str, Observed]:
        observed = {}
        for ident, instance in self._describe(list(handles)).items():
            state = instance["State"]["Name"]
            if state in _STATES:
                observed[ident] = Observed(_STATES[state])
            else:
                reason = (instance.get("StateReason") or {}).get("Message") or instance.get(
                    "StateTransitionReason") or "no reason given"
                observed[ident] = Observed("stopped", f"instance {ident} {state}: {one_line(reason)}")
        return observed

    def private_address(self, handle: str) -> str:
        return self._describe([handle]).get(handle, {}).get("PrivateIpAddress") or ""

    def public_address(self, handle: str) -> str | None:
        return self._describe([handle]).get(handle, {}).get("PublicIpAddress") or None

    def terminate(self, handles: list[str]) -> None:
        if not handles:
            return
        with aws_errors("terminating the run's instances"):
            for start in range(0, len(handles), BATCH):
                _terminate_quietly(self._client("ec2"), list(handles[start : start + BATCH]))
        self.resources.forget_instances(list(handles))

    # --- teardown -----------------------------------------------------------------------
    def delete(self) -> list[str]:
        try:
            return self.resources.delete()
        finally:
            # Renewed until everything went, so `flowrig aws leftovers` leaves a slow teardown alone.
            if self._renewer is not None:
                self._renewer.stop()

    def network_description(self) -> str:
        cidrs = ", ".join(self.cidrs) or "unknown"
        return f"VPC {self.vpc_id or '?'} (CIDR {cidrs})"
