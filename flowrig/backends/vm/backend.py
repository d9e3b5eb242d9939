"""``azure``, ``ec2`` and ``gcp``: one run's cluster as cloud VMs of the run's image.

What every cloud shares is here: the options checked before the first API call, the
run's certificates put into the cloud's secret store (per-run mode), every VM's
cloud-init rendered by flowrig and checked for key material, the scheduler and workers
started, watched, scaled and replaced by a :class:`~flowrig.backends.pool.cluster.PoolCluster`,
a provisioning deadline, and teardown on every exit path (VMs first, then every
resource of the run, the secret included). The start is
:class:`~flowrig.backends.pool.backend.PoolBackend`'s, filled in by :class:`VMRun`; each
cloud supplies its options model and its :class:`~flowrig.backends.vm.cloud.Cloud`.

Why not dask-cloudprovider's ``VMCluster``: its cloud-init carries the serialised Dask
config, the TLS key included; it sets TLS in the caller's global ``dask.config``; its
scheduler wait has no deadline; its bootstrap downloads Docker from Docker's own site;
and on EC2 its default security group opens the scheduler port to the internet. Its
SDK helpers are used where they fit.
"""

from __future__ import annotations

import abc
from pathlib import PurePosixPath
from typing import TYPE_CHECKING, Any, ClassVar, Mapping

from flowrig.backends.base import ClusterSpec
from flowrig.backends.pool.backend import CloudRun, PoolBackend
from flowrig.backends.vm.cloudinit import RegistryLogin, TLSDelivery, TLSSource, VMRole, check_environment
from flowrig.backends.vm.launcher import RoleSettings, scheduler_role, vm_name, worker_role
from flowrig.backends.vm.options import VMOptions
from flowrig.errors import BadInput
from flowrig.roles.commands import with_resource

if TYPE_CHECKING:
    from flowrig.backends.pool.launcher import Launcher
    from flowrig.backends.vm.cloud import Cloud
    from flowrig.backends.vm.groups import VMGroup
    from flowrig.backends.vm.preview import WorkerPreview

#: The Prefect setting naming the CA file of the run's API.
CA_FILE_SETTING = "PREFECT_API_SSL_CERT_FILE"

#: The worker name a preview's worker cloud-init shows.
PREVIEW_WORKER = 1


def role_ca_file(tls_mode: str) -> PurePosixPath:
    """Where a VM's container finds the run's CA: delivered (per-run) or baked."""
    from flowrig import layout
    from flowrig.certs import delivery

    if tls_mode == "baked":
        return PurePosixPath(layout.IMAGE_TLS_DIR) / layout.CA_CERT
    return PurePosixPath(delivery.MEMORY_DIR) / delivery.INSTALL_NAME / layout.CA_CERT


class VMRun(CloudRun):
    """One run's VMs and resources in one cloud (its :class:`Cloud`)."""

    def __init__(self, backend: "VMBackend", spec: ClusterSpec, options: Any, cloud: "Cloud") -> None:
        self.backend = backend
        self.spec = spec
        self.options = options
        self.cloud = cloud
        self.provider = cloud.name

    @property
    def needs_certificates(self) -> bool:
        return self.options.tls != "baked"

    def check(self) -> None:
        self.cloud.check(self.spec.image or "")

    def prepare(self) -> None:
        self.cloud.prepare(dashboard=self.options.dashboard)

    def store_certificates(self, line: str) -> str | None:
        return self.cloud.store_certificates(line)

    def launcher(self, secret_ref: str | None, deadline: float) -> "Launcher":
        from flowrig.backends.vm.launcher import VMLauncher

        if self.options.tls == "baked":  # the VMs' containers use the image's own files
            tls = TLSDelivery()
        else:
            tls = TLSDelivery(source=self.backend.secret_source, ref=secret_ref)
        settings = self.backend.role_settings(self.spec, self.options, tls)
        if settings.registry is not None:
            self.cloud.allow_registry(settings.registry, settings.image)
        return VMLauncher(
            self.cloud, settings,
            deadline=deadline,
            reach_timeout=float(self.options.reach_timeout),
            public_address=not self.options.use_private_ip,
        )

    def close(self) -> list[str]:
        return self.cloud.delete()

    def network_description(self) -> str:
        return self.cloud.network_description()


class VMBackend(PoolBackend):
    """What the VM backends share; a cloud adds its options, extra and :class:`Cloud`."""

    options_model: ClassVar[type[VMOptions]] = VMOptions
    #: A worker group's fields a VM backend does not take, with the fix (the option keys
    #: a group may set are each cloud's :attr:`group_options`: its VM type, ...).
    group_refusals: ClassVar[Mapping[str, str]] = {
        "cpu": "a VM's CPUs come with its type: set the group's options VM type",
        "memory": "a VM's memory comes with its type: set the group's options VM type",
    }
    #: How a VM's container reads the run's certificates from this cloud's secret store.
    secret_source: ClassVar[TLSSource]

    # --- what each cloud supplies --------------------------------------------------------
    @staticmethod
    def registry_login(image: str) -> RegistryLogin | None:
        """The login a VM needs to pull ``image`` (a private registry of this cloud), or
        ``None``; from the image's name alone, so that rendering needs no API."""
        return None

    @abc.abstractmethod
    def make_cloud(self, run_id: str, options: Any) -> "Cloud":
        """The cloud's API for run ``run_id`` with the project's ``options``."""

    def check_options(self, options: Any) -> None:
        """Checks of the cloud's own options beyond their types (regions, zones, sizes)."""

    # --- shared ---------------------------------------------------------------------------
    def prefect_api_hosts(self) -> tuple[str, str]:
        """The run's embedded API listens on this machine's own address, so that worker
        VMs in the same network reach it (it asks for the run's auth string on every
        route and serves HTTPS with the run's leaf); loopback when the machine has no
        address but loopback. A runner outside the cloud network sets ``PREFECT_API_URL``."""
        from flowrig.common.net import own_address

        address = own_address()
        # A host name that does not resolve comes back as the name itself: no address.
        if address.startswith("127.") or not address.replace(".", "").isdigit():
            return "127.0.0.1", "127.0.0.1"
        return address, address

    def options(self, raw: Mapping[str, Any], allowed_environment: frozenset[str] = frozenset()) -> Any:
        """``[cluster.options]`` parsed and checked, before anything is created;
        ``allowed_environment``: ``[build] allow_environment``."""
        options = self.parse_options(raw)
        self.check_options(options)
        check_environment(dict(options.env_vars), allowed_environment)
        return options

    def roles_use_image_certificates(self, options: Mapping[str, Any]) -> bool:
        """``tls = "baked"``: the VMs' containers use the image's own files."""
        return options.get("tls") == "baked"

    def worker_groups(self, spec: ClusterSpec, options: Any) -> "dict[str, VMGroup]":
        """How each worker group's VMs start, checked before anything is created.

        Raises
        ------
        BadInput
            A group this backend cannot start as it asks, in one line.
        """
        from flowrig.backends.vm.groups import vm_groups

        if spec.groups and getattr(options, "worker_gpu", 0):
            raise BadInput("[cluster.options] worker_gpu beside [[cluster.worker_groups]]: set gpu on the groups "
                           "whose workers need GPUs, and drop worker_gpu")
        return vm_groups(self.name, spec.groups, options.worker_extra_args, options.spot, self.group_options,
                         gpu_image=lambda own: self.gpu_image_missing(options, own))

    def gpu_image_missing(self, options: Any, own: Mapping[str, Any]) -> str:
        """Why a GPU worker (of a group with ``own`` options) cannot start on the boot
        image it would get, and the option to set (empty: it can)."""
        return ""

    def role_settings(self, spec: ClusterSpec, options: Any, tls: TLSDelivery) -> RoleSettings:
        """What every VM of the run is started with."""
        image = spec.image or ""
        environment = {**dict(spec.worker_env), **options.env_vars}
        if environment.get(CA_FILE_SETTING):
            # The runner's CA file is at a path of its machine; a VM's container has the
            # run's CA where its certificates were delivered or baked.
            environment[CA_FILE_SETTING] = str(role_ca_file(options.tls))
        no_client_timeout = float(options.scheduler_timeout) if options.scheduler_timeout else spec.no_client_timeout
        gpus = int(getattr(options, "worker_gpu", 0))
        return RoleSettings(
            run_id=spec.run_id,
            image=image,
            environment=environment,
            tls=tls,
            registry=self.registry_login(image) if options.registry_login else None,
            install_docker=options.bootstrap,
            worker_threads=spec.worker_threads,
            no_client_timeout=no_client_timeout,
            dashboard=options.dashboard,
            scheduler_args=tuple(options.scheduler_extra_args),
            worker_args=tuple(with_resource(list(options.worker_extra_args), "GPU", gpus) if gpus
                              else options.worker_extra_args),
            spot=options.spot,
            worker_gpu=gpus,
            groups=self.worker_groups(spec, options),
        )

    def preview(
        self, spec: ClusterSpec, scheduler_address: str | None = None, secret_ref: str | None = None
    ) -> tuple[VMRole, VMRole]:
        """The scheduler's and the first worker's roles as a run of ``spec`` would give
        them, without any API call (``flowrig vm cloud-init``).

        ``secret_ref`` stands for the run's secret in per-run mode; the worker joins
        ``scheduler_address`` (default: a placeholder for the scheduler VM's address).
        """
        scheduler, workers = self.preview_workers(spec, scheduler_address, secret_ref)
        return scheduler, workers[0].role

    def preview_workers(
        self, spec: ClusterSpec, scheduler_address: str | None = None, secret_ref: str | None = None
    ) -> "tuple[VMRole, list[WorkerPreview]]":
        """The scheduler's role and the first worker of each worker group (of the run,
        without groups) as a run of ``spec`` would give them, each with the line that
        says its VM type, resources, GPUs, market and boot image; no API call.

        Raises
        ------
        BadInput
            Options or a group this backend cannot start, in one line.
        """
        from flowrig.backends.vm.preview import WorkerPreview, worker_line

        options = self.options(spec.options, spec.allowed_environment)
        if options.tls == "baked":
            tls = TLSDelivery()
        else:
            ref = secret_ref or f"<the {self.name} secret of run {spec.run_id}, made at its start>"
            tls = TLSDelivery(source=self.secret_source, ref=ref)
        settings = self.role_settings(spec, options, tls)
        address = scheduler_address or options.scheduler_address or "tls://<the scheduler VM's private address>:8786"
        workers = []
        for name in list(settings.groups) or [""]:
            group = settings.group(name)
            # A first worker is asked on Spot whenever its market has Spot: it watches for the notice.
            role = worker_role(settings, address, vm_name(spec.run_id, f"worker-{name}" if name else "worker",
                                                          PREVIEW_WORKER),
                               self.name if group.spot else None, name)
            workers.append(WorkerPreview(name, role, worker_line(self.name, options, group)))
        return scheduler_role(settings), workers

    def cloud_preflight(self, plan: Any, options: Any) -> list[Any]:
        """The image in its registry (:mod:`.image_arch`), then the run's (and each worker
        group's) machine types against its image and GPUs, as every start checks them
        (:meth:`Cloud.check`, read-only); the network is not checked on this cloud."""
        from flowrig.backends.preflight import Check
        from flowrig.backends.vm.image_arch import image_architectures
        from flowrig.errors import BadInput

        image = plan.image or ""
        network = Check("network", self.name, None, f"the network is not checked on {self.name}")
        try:
            held = image_architectures(image)
        except BadInput as exc:
            line, _, fix = str(exc).rpartition(": ")
            return [Check("image", image, False, line, fix),
                    Check("machine-type", self.name, None, "not checked: the image is not in its registry"), network]
        found = (Check("image", image, True, f"linux/{', linux/'.join(held)}") if held else
                 Check("image", image, None, "neither its registry nor this engine told its architecture: not checked"))
        cloud = self.make_cloud(plan.run_id, options)
        # The project's groups have the fields a cloud checks (name, gpu, options).
        cloud.worker_groups = tuple(plan.groups)
        try:
            cloud.check(image)
        except BadInput as exc:
            line, _, fix = str(exc).rpartition(": ")
            shape = Check("machine-type", self.name, False, line or fix, fix if line else "")
        else:
            shape = Check("machine-type", self.name, True, "the machine types exist, run the image's architecture "
                          "as far as it is known here, and hold the workers' GPUs")
        return [found, shape, network]

    def open_run(self, spec: ClusterSpec, options: Any) -> VMRun:
        """The run's cloud (no API call yet), its worker groups checked."""
        self.worker_groups(spec, options)
        cloud = self.make_cloud(spec.run_id, options)
        cloud.worker_groups = tuple(spec.groups)
        return VMRun(self, spec, options, cloud)
