"""The ``ec2`` backend's :class:`~flowrig.backends.vm.cloud.Cloud`: EC2 on botocore.

Everything goes through what the AWS backends share (:mod:`flowrig.backends.aws`):
its session, its error translation, and its :class:`~flowrig.backends.aws.resources.RunResources`
(the VPC look-ups, the run's security group, the run's secret, deletion with retries),
which :class:`~flowrig.backends.aws.ec2.resources.EC2Resources` extends by what only EC2
runs make: an instance role and its instance profile, and instances (their parameters
and termination are :mod:`flowrig.backends.aws.ec2.instances`). The instance role gets the permissions boundary the
bootstrap made (:func:`~flowrig.backends.aws.policies.instance_boundary_policy`), looked up
before anything is made. The run's lease (:mod:`flowrig.backends.aws.lease`) is on every
resource and renewed while the run lives, so ``flowrig aws leftovers`` tells a live run
from a killed one as it does for ECS runs.
"""

from __future__ import annotations

import logging
import re
import time
from typing import TYPE_CHECKING, Any

from flowrig.backends.aws import lease
from flowrig.backends.aws import policies as iam_docs
from flowrig.backends.aws.bootstrap import find_instance_boundary
from flowrig.backends.aws.ec2.instances import (
    BATCH,
    POLL_SECONDS,
    architecture,
    ecr_repository_arn,
    error_code,
    instance_parameters,
    terminate_quietly,
)
from flowrig.backends.aws.ec2.resources import EC2Resources
from flowrig.backends.aws.names import DEEP_LEARNING_PARAMETER_PATH, UBUNTU_PARAMETER_PATH
from flowrig.backends.aws.session import Session, aws_errors
from flowrig.backends.pool import Observed
from flowrig.backends.vm.cloud import Cloud, Created, VMRequest
from flowrig.errors import BadInput, one_line

if TYPE_CHECKING:
    from flowrig.backends.aws.ec2.options import EC2Options
    from flowrig.backends.vm.cloudinit import RegistryLogin

logger = logging.getLogger("flowrig.vm")

#: Canonical's public SSM parameter of the current Ubuntu LTS AMI (architecture filled in).
UBUNTU_PARAMETER = UBUNTU_PARAMETER_PATH + "24.04/stable/current/{arch}/hvm/ebs-gp3/ami-id"
#: AWS's public SSM parameter of its Deep Learning Base AMI (NVIDIA driver, Docker and
#: NVIDIA's container toolkit), the default for GPU workers (architecture filled in).
GPU_PARAMETER = DEEP_LEARNING_PARAMETER_PATH + "{arch}/base-oss-nvidia-driver-gpu-ubuntu-22.04/latest/ami-id"
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
    "SpotMaxPriceTooLow",
    "MaxSpotInstanceCountExceeded",
})
#: Of those, the codes that say the market asked in has no room (capacity, its own limit,
#: Spot's price): with ``spot = "fallback"`` the VM is asked for in the other market. A
#: subnet out of addresses is no market's: the other would fare no better.
MARKET_SHORT_CODES = CAPACITY_CODES - {"InsufficientFreeAddressesInSubnet"}
#: RunInstances codes that say a parameter from ``[cluster.options]`` is wrong (exit 2).
PARAMETER_CODES = re.compile(
    r"^(InvalidParameter\w*|InvalidInstanceType\S*|InvalidAMIID\S*|InvalidKeyPair\S*|InvalidSubnet\S*"
    r"|InvalidGroup\S*|MissingParameter|InvalidBlockDeviceMapping|UnsupportedOperation)$"
)
#: EC2 instance states, as the pool sees them.
_STATES = {"pending": "pending", "running": "running"}


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
    market_words = {"spot": "EC2 Spot", "on-demand": "on-demand EC2"}

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
        #: The VMs' architecture (``amd64``, ``arm64``), from their instance types (:meth:`check`).
        self.arch = ""

    def _client(self, service: str) -> Any:
        return self.session.client(service)

    @property
    def role_name(self) -> str:
        """The run's instance role and instance profile (both named so)."""
        return f"flowrig-{self.run_id}-instance"

    # --- check -------------------------------------------------------------------------
    def check(self, image: str) -> None:
        """The instance types exist, the workers' (each worker group's) have their GPUs,
        and all run the image's architecture (read-only calls); the AMI's architecture
        follows them.

        Raises
        ------
        BadInput
            One line naming the option, the type, and the fix.
        """
        from flowrig.backends.aws.instance_types import check_arch, check_gpus, describe_types
        from flowrig.backends.aws.preflight.image import image_architectures

        vms = self._vm_kinds()
        shapes = describe_types(self.session, list(dict.fromkeys(kind for _where, kind, _gpu in vms)))
        if {kind for _where, kind, _gpu in vms} - set(shapes):
            return  # not readable: the AMI's architecture comes from the type's name
        held, _source = image_architectures(self.session, image) if image else ((), "")
        for where, kind, gpu in vms:
            check_gpus(shapes[kind], gpu, where, "gpu" if where.startswith("[[") else "worker_gpu")
            check_arch(shapes[kind], held, where, image)
        common = [arch for arch in shapes[vms[0][1]].archs if all(arch in shapes[k].archs for _w, k, _g in vms)]
        if shapes[vms[-1][1]].archs and not common:
            raise BadInput(
                f"[cluster.options] the run's instance types ({', '.join(sorted({k for _w, k, _g in vms}))}) run "
                "different architectures, and the run's VMs share one AMI and image: choose types of one architecture"
            )
        fits = [arch for arch in common if not held or arch in held]
        self.arch = (fits or common or ["amd64"])[0]

    def _vm_kinds(self) -> list[tuple[str, str, int]]:
        """``(where it is set, instance type, GPUs)`` of the scheduler, then of the workers
        or of each worker group's."""
        options = self.options

        def named(key: str) -> str:
            return f"[cluster.options] {key if getattr(options, key) else 'instance_type'} ="

        vms = [(named("scheduler_instance_type"), self.instance_type("scheduler"), 0)]
        if not self.worker_groups:
            return [*vms, (named("worker_instance_type"), self.instance_type("worker"), options.worker_gpu)]
        for group in self.worker_groups:
            own = (group.options or {}).get("worker_instance_type")
            where = (f"[[cluster.worker_groups]] {group.name} options.worker_instance_type =" if own
                     else f"[[cluster.worker_groups]] {group.name}: {named('worker_instance_type')}")
            vms.append((where, own or self.instance_type("worker"), int(group.gpu or 0)))
        return vms

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
            arch = self.arch or architecture(self.options.worker_instance_type or self.options.instance_type)
            # One AMI for the run's VMs: AWS's GPU one (which runs on any type) when a worker has GPUs.
            gpus = self.options.worker_gpu or any(group.gpu for group in self.worker_groups)
            parameter = (GPU_PARAMETER.format(arch={"amd64": "x86_64"}.get(arch, arch)) if gpus
                         else UBUNTU_PARAMETER.format(arch=arch))
            try:
                image_id = self._client("ssm").get_parameter(Name=parameter)["Parameter"]["Value"]
            except Exception as exc:
                why = f"{error_code(exc)[0] or type(exc).__name__}" if isinstance(exc, ClientError) else one_line(exc)
                raise BadInput(
                    f"cannot read the default AMI from SSM parameter {parameter} in {self.session.region_name} "
                    f"({why}): set ami in [cluster.options]"
                ) from None
        with aws_errors(f"describing AMI {image_id}"):
            try:
                images = self._client("ec2").describe_images(ImageIds=[image_id])["Images"]
            except ClientError as exc:
                if not error_code(exc)[0].startswith("InvalidAMIID"):
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
        # Recorded before the first RunInstances: teardown then also finds by tag an
        # instance whose start answer was lost.
        instances = self.resources.instances()
        for request in requests:
            params = instance_parameters(
                name=request.name,
                image_id=self.image_id,
                # A worker group's own instance type, else the run's.
                instance_type=request.options.get("worker_instance_type") or self.instance_type(request.role),
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
                market=request.market,
            )
            instance_id, code, refused = self._run_instance(request.name, params)
            if instance_id:
                instances.add(instance_id)
                created.started[request.name] = instance_id
            else:
                created.refuse(request.name, refused or f"{request.name}: no reason given", code in MARKET_SHORT_CODES)
        return created

    def _run_instance(self, name: str, params: dict[str, Any]) -> tuple[str | None, str, str | None]:
        """Start one instance: ``(id, "", None)``, or ``(None, code, why)`` when EC2 had no room for it.

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
                    code, message = error_code(exc)
                    if code in CAPACITY_CODES:
                        return None, code, f"{name}: {code}: {one_line(message)}"
                    # A new instance profile is unknown to EC2 for some seconds.
                    if (code == "InvalidParameterValue" and "profile" in message.lower()
                            and time.monotonic() < propagation):
                        time.sleep(POLL_SECONDS)
                        continue
                    if PARAMETER_CODES.match(code):
                        raise BadInput(
                            f"EC2 refused instance {name}: {code}: {one_line(message)}: check instance_type, "
                            "ami, key_name, subnet_id and security_groups in [cluster.options]"
                        ) from None
                    raise
            return instance["InstanceId"], "", None

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
                terminate_quietly(self._client("ec2"), list(handles[start : start + BATCH]))
        self.resources.instances().discard(list(handles))

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
