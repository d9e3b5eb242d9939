"""What an ``azure`` run's VMs are, checked before anything is created: VM sizes, the
workers' GPUs, and the architecture against the image's.

One read answers it all: the location's resource SKUs (``resource_skus.list``), whose VM
sizes carry the capabilities ``GPUs`` and ``CpuArchitectureType`` (``x64``, ``Arm64``: the
sizes with a ``p`` such as ``Standard_D2ps_v5`` are Arm) and the restrictions that keep a
size from a subscription. GPU sizes are the N-series. Every refusal is one line naming
the fix, exit 2, whether or not the preflight checks are on. Read-only.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Sequence

from flowrig.backends.vm.azure_clients import azure_errors, error_code
from flowrig.backends.vm.boot_images import BootedVM, BootImage, boot_choice, check_boot_images
from flowrig.backends.vm.image_arch import check_arch, image_architectures
from flowrig.errors import BadInput, InfrastructureError

logger = logging.getLogger("flowrig.vm")

#: Azure's ``CpuArchitectureType`` -> the names image platforms use.
PLATFORM_ARCH = {"x64": "amd64", "arm64": "arm64"}
#: Canonical's Ubuntu 24.04 LTS of each architecture: the image unless ``vm_image`` is set.
DEFAULT_IMAGES = {
    "amd64": {"publisher": "Canonical", "offer": "ubuntu-24_04-lts", "sku": "server", "version": "latest"},
    "arm64": {"publisher": "Canonical", "offer": "ubuntu-24_04-lts", "sku": "server-arm64", "version": "latest"},
}
#: VM sizes to name in a fix, by architecture.
EXAMPLES = {"amd64": "Standard_D2s_v5", "arm64": "Standard_D2ps_v5"}
GPU_EXAMPLES = "Standard_NC4as_T4_v3, Standard_NC24ads_A100_v4"
GPU_IMAGE_EXAMPLE = "{ publisher = 'microsoft-dsvm', offer = 'ubuntu-hpc', sku = '2204', version = 'latest' }"
_DENIED = ("AuthorizationFailed", "Forbidden")


@dataclass(frozen=True)
class SizeShape:
    """One VM size: its architecture (``amd64``, ``arm64``; empty: not said), its GPUs,
    and why the subscription may not have it here (empty: it may)."""

    name: str
    arch: str
    gpus: int
    restricted: str = ""


def shape_of(sku: Any, location: str) -> SizeShape:
    """One resource SKU of the SDK as a :class:`SizeShape`."""
    capabilities = {str(c.name): str(c.value) for c in sku.capabilities or []}
    restricted = ""
    for restriction in sku.restrictions or []:
        # The SDK's model names the field ``values_property`` (``values`` is the mapping's method).
        where = [str(v).lower() for v in getattr(restriction, "values_property", None) or []]
        if str(restriction.type).lower().endswith("location") and location.lower() in where:
            restricted = str(getattr(restriction.reason_code, "value", restriction.reason_code) or "restricted")
    try:
        gpus = int(capabilities.get("GPUs", "0"))
    except ValueError:
        gpus = 0
    return SizeShape(
        name=str(sku.name),
        arch=PLATFORM_ARCH.get(capabilities.get("CpuArchitectureType", "").lower(), ""),
        gpus=gpus,
        restricted=restricted,
    )


def size_shapes(compute: Any, location: str, sizes: Iterable[str]) -> dict[str, SizeShape]:
    """The shapes of ``sizes`` (lower-cased names as keys); empty when the SKUs are not readable."""
    from azure.core.exceptions import HttpResponseError

    wanted = {size.lower() for size in sizes}
    found: dict[str, SizeShape] = {}
    try:
        with azure_errors(f"listing the VM sizes of {location}"):
            for sku in compute.resource_skus.list(filter=f"location eq '{location}'"):
                if str(sku.resource_type) == "virtualMachines" and str(sku.name).lower() in wanted:
                    found[str(sku.name).lower()] = shape_of(sku, location)
    except InfrastructureError as exc:
        cause = exc.__context__
        if isinstance(cause, HttpResponseError) and error_code(cause) in _DENIED:
            logger.warning("the VM sizes are not checked: listing the resource SKUs was refused (%s)",
                           error_code(cause))
            return {}
        raise
    return found


def check_gpu_options(options: Any) -> None:
    """A GPU run names its image: Ubuntu's has no NVIDIA driver.

    Raises
    ------
    BadInput
        One line naming the option and the fix.
    """
    if options.worker_gpu and not (options.gpu_vm_image or options.vm_image):
        raise BadInput(
            f"[cluster.options] worker_gpu = {options.worker_gpu} needs an image with NVIDIA's driver, Docker and "
            "NVIDIA's container toolkit (Ubuntu's has none): set gpu_vm_image to one (the workers' image; the "
            f"scheduler keeps Ubuntu), e.g. {GPU_IMAGE_EXAMPLE}"
        )


def check_size(shape: SizeShape | None, option: str, size: str, location: str) -> None:
    """The size exists in ``location`` and the subscription may have it there.

    Raises
    ------
    BadInput
        Naming the option and how to list the sizes there are.
    """
    if shape is None:
        raise BadInput(
            f"{option} = {size!r} is not a VM size of location {location}: name one "
            f"`az vm list-sizes --location {location}` lists"
        )
    if shape.restricted:
        raise BadInput(
            f"{option} = {size!r} is not available to the subscription in {location} "
            f"({shape.restricted}): choose another size or location, or ask Azure support for access"
        )


def check_gpus(shape: SizeShape, option: str, gpus: int, gpu_key: str = "[cluster.options] worker_gpu") -> None:
    """Refuse a worker size with fewer GPUs than ``worker_gpu`` (``gpu_key``: where the
    GPUs were set, a worker group's ``[[cluster.worker_groups]] NAME gpu``).

    Raises
    ------
    BadInput
        Naming the size, its GPUs, and N-series sizes.
    """
    if gpus <= shape.gpus:
        return
    has = f"{shape.gpus} GPU{'s' if shape.gpus != 1 else ''}" if shape.gpus else "no GPU"
    key = gpu_key.rsplit(" ", 1)[-1]
    raise BadInput(
        f"{option} = {shape.name!r} has {has} but {key} = {gpus}: use an N-series GPU size "
        f"({GPU_EXAMPLES}), or lower {key}"
    )


def worker_sizes(options: Any, groups: Sequence[Any]) -> list[tuple[str, str, int, str, BootImage]]:
    """``(where the size is set, VM size, GPUs, where the GPUs are set, boot image)`` of
    the run's workers, or of each worker group's."""
    run_option = "worker_vm_size" if options.worker_vm_size else "vm_size"
    run_size = getattr(options, run_option)
    if not groups:
        return [(f"[cluster.options] {run_option}", run_size, options.worker_gpu, "[cluster.options] worker_gpu",
                 vm_boot_image(options, gpus=options.worker_gpu))]
    sizes = []
    for group in groups:
        own_options = group.options or {}
        own = own_options.get("worker_vm_size")
        where = f"[[cluster.worker_groups]] {group.name}"
        sizes.append((f"{where} options.worker_vm_size" if own else f"{where}: [cluster.options] {run_option}",
                      own or run_size, int(group.gpu or 0), f"{where} gpu",
                      vm_boot_image(options, gpus=int(group.gpu or 0), group=group.name, own=own_options)))
    return sizes


def check_run(compute: Any, location: str, options: Any, image: str, groups: Sequence[Any] = ()) -> dict[str, str]:
    """The architecture of each role's VMs (``scheduler``, ``worker``) and of each worker
    size (lower-cased) (``amd64``, ``arm64``), after the sizes, the workers' (each worker
    group's) GPUs, the image's architectures (:func:`~.image_arch.image_architectures`)
    and each VM's image were checked (empty: nothing read).

    Raises
    ------
    BadInput
        Any mismatch, or an image its registry does not have: one line naming the fix.
    """
    held = image_architectures(image)
    scheduler_option = "scheduler_vm_size" if options.scheduler_vm_size else "vm_size"
    workers = worker_sizes(options, groups)
    vms = [] if options.scheduler_address else [(f"[cluster.options] {scheduler_option}",
                                                  getattr(options, scheduler_option),
                                                  vm_boot_image(options, worker=False))]
    vms += [(where, size, boot) for where, size, _gpus, _key, boot in workers]
    shapes = size_shapes(compute, location, [size for _where, size, _boot in vms])
    if not shapes:
        return {}
    for where, size, _boot in vms:
        check_size(shapes.get(size.lower()), where, size, location)
    for where, size, gpus, gpu_key, _boot in workers:
        check_gpus(shapes[size.lower()], where, gpus, gpu_key)
    for where, size, _boot in vms:
        check_arch(shapes[size.lower()], where, held, image, "VM size", EXAMPLES)
    archs = {size.lower(): shapes[size.lower()].arch for _where, size, _boot in vms}
    if not options.scheduler_address:
        archs["scheduler"] = shapes[vms[0][1].lower()].arch
    archs["worker"] = shapes[workers[0][1].lower()].arch
    check_boot_images([BootedVM(where, size, shapes[size.lower()].arch, boot) for where, size, boot in vms],
                      lambda boot: image_arch(compute, location, boot), "VM size", EXAMPLES)
    return archs


def image_arch(compute: Any, location: str, boot: BootImage) -> str:
    """The architecture of a marketplace image (``boot``: where it is set, its reference)
    in ``location`` (its ``latest`` version's); empty for an image by ``id``, one that
    does not say, or one the runner may not read.

    Raises
    ------
    BadInput
        No such image in the location.
    """
    from azure.core.exceptions import HttpResponseError

    vm_image: Mapping[str, str] = boot.value
    keys = ("publisher", "offer", "sku")
    if not all(vm_image.get(key) for key in keys):
        return ""
    publisher, offer, sku = (vm_image[key] for key in keys)
    version = vm_image.get("version") or "latest"
    missing = BadInput(
        f"{boot.key} = {dict(vm_image)} is not an image of location {location}: name one "
        f"`az vm image list --location {location} --publisher {publisher} --offer {offer} --sku {sku} --all` lists"
    )
    images = compute.virtual_machine_images
    try:
        with azure_errors(f"reading image {publisher}:{offer}:{sku}:{version}"):
            if version == "latest":
                newest = list(images.list(location, publisher, offer, sku, top=1, orderby="name desc"))
                if not newest:
                    raise missing
                version = str(newest[0].name)
            image = images.get(location, publisher, offer, sku, version)
    except InfrastructureError as exc:
        cause = exc.__context__
        if isinstance(cause, HttpResponseError) and cause.status_code == 404:
            raise missing from None
        if isinstance(cause, HttpResponseError) and error_code(cause) in _DENIED:
            logger.warning("the image's architecture is not checked: reading it was refused (%s)", error_code(cause))
            return ""
        raise
    arch = getattr(image.properties, "architecture", None) if image.properties else None
    return PLATFORM_ARCH.get(str(getattr(arch, "value", arch) or "").lower(), "")


def vm_boot_image(options: Any, *, worker: bool = True, gpus: int = 0, group: str = "",
                  own: Mapping[str, Any] | None = None) -> BootImage:
    """Where a VM's image is set and what it is (:func:`~.boot_images.boot_choice`)."""
    return boot_choice(options, "vm_image", "gpu_vm_image", worker=worker, gpus=gpus, group=group, own=own)


def image_reference(choice: BootImage, arch: str) -> dict[str, str]:
    """The image a VM of ``arch`` boots: the project's (``choice``), else Canonical's Ubuntu LTS of that
    architecture."""
    if choice.value:
        return dict(choice.value)
    return dict(DEFAULT_IMAGES.get(arch or "amd64", DEFAULT_IMAGES["amd64"]))
