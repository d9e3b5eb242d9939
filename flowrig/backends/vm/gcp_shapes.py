"""What a ``gcp`` run's VMs are, checked before anything is created: machine types, the
workers' GPUs, and the architecture against the image's.

``machineTypes.get`` says a machine type's ``architecture`` (``X86_64``, ``ARM64``: t2a
and c4a are Arm) and the GPUs it comes with (``accelerators``: a2, a3, g2); any other
type gets GPUs as ``guestAccelerators`` of an ``accelerator_type`` the zone has
(``acceleratorTypes.get``), and a VM with GPUs cannot live-migrate, so Compute Engine
asks for ``onHostMaintenance = TERMINATE``. Every refusal is one line naming the fix,
exit 2, whether or not the preflight checks are on. Read-only calls only.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from flowrig.backends.vm.boot_images import BootedVM, BootImage, boot_choice, check_boot_images
from flowrig.backends.vm.gcp_clients import gcp_errors, http_status
from flowrig.backends.vm.image_arch import check_arch, image_architectures
from flowrig.errors import BadInput, InfrastructureError

logger = logging.getLogger("flowrig.vm")

#: Compute Engine's architecture names -> the names image platforms use.
PLATFORM_ARCH = {"X86_64": "amd64", "ARM64": "arm64"}
#: Ubuntu's current LTS of each architecture: the boot image unless ``source_image`` is set.
DEFAULT_IMAGES = {"amd64": "projects/ubuntu-os-cloud/global/images/family/ubuntu-2404-lts-amd64",
                  "arm64": "projects/ubuntu-os-cloud/global/images/family/ubuntu-2404-lts-arm64"}
#: Machine types to name in a fix, by architecture.
EXAMPLES = {"amd64": "n2-standard-2, e2-standard-2", "arm64": "t2a-standard-2, c4a-standard-2"}
#: ``[URL/]projects/P/global/images/[family/]NAME``: a boot image, or an image family's newest.
_IMAGE = re.compile(r"^(?:https://[^/]+/compute/v1/)?projects/(?P<project>[^/]+)/global/images/"
                    r"(?:family/(?P<family>[^/]+)|(?P<image>[^/]+))$")
GPU_IMAGE_EXAMPLE = "projects/deeplearning-platform-release/global/images/family/common-cu124-debian-11"
GPU_EXAMPLES = "g2-standard-4 (1 nvidia-l4), or n1-standard-4 with accelerator_type = 'nvidia-tesla-t4'"


@dataclass(frozen=True)
class MachineShape:
    """One machine type: its architecture (``amd64``, ``arm64``; empty: not said) and the
    GPUs it comes with."""

    name: str
    arch: str
    gpus: int
    gpu_type: str


def shape_of(answer: Mapping[str, Any]) -> MachineShape:
    """One ``machineTypes.get`` answer as a :class:`MachineShape`."""
    accelerators = answer.get("accelerators") or []
    return MachineShape(
        name=str(answer.get("name", "")),
        arch=PLATFORM_ARCH.get(str(answer.get("architecture", "")), ""),
        gpus=sum(int(a.get("guestAcceleratorCount", 0)) for a in accelerators),
        gpu_type=", ".join(sorted({str(a.get("guestAcceleratorType", "")) for a in accelerators})),
    )


def _read(request: Any, what: str, missing: str) -> Mapping[str, Any] | None:
    """``request``'s answer; ``None`` (with a warning) when the caller may not read it.

    Raises
    ------
    BadInput
        ``missing`` when the resource does not exist (404).
    """
    try:
        with gcp_errors(what):
            return request.execute()
    except InfrastructureError as exc:
        status = http_status(exc.__context__) if exc.__context__ is not None else 0
        if status == 404:
            raise BadInput(missing) from None
        if status == 403:
            logger.warning("the machine types are not checked: %s was refused (403)", what)
            return None
        raise


def machine_shapes(compute: Any, project: str, zone: str, kinds: Mapping[str, str]) -> dict[str, MachineShape]:
    """The shapes of ``kinds`` (``where it is set -> machine type``); empty when not readable.

    Raises
    ------
    BadInput
        A machine type the zone does not have, naming its option.
    """
    found: dict[str, MachineShape] = {}
    for option, kind in kinds.items():
        if kind in found:
            continue
        answer = _read(
            compute.machineTypes().get(project=project, zone=zone, machineType=kind),
            f"reading machine type {kind}",
            f"{option} = {kind!r} is not a machine type of zone {zone}: name one "
            f"`gcloud compute machine-types list --zones {zone}` lists",
        )
        if answer is None:
            return {}
        found[kind] = shape_of(answer)
    return found


def accelerator_cards(compute: Any, project: str, zone: str, accelerator: str) -> int | None:
    """How many cards of ``accelerator`` one VM may have in ``zone``; ``None`` when not readable.

    Raises
    ------
    BadInput
        The zone has no such accelerator type.
    """
    answer = _read(
        compute.acceleratorTypes().get(project=project, zone=zone, acceleratorType=accelerator),
        f"reading accelerator type {accelerator}",
        f"[cluster.options] accelerator_type = {accelerator!r} is not an accelerator type of zone {zone}: name "
        f"one `gcloud compute accelerator-types list --filter zone:{zone}` lists, or another zone",
    )
    return None if answer is None else int(answer.get("maximumCardsPerInstance") or 0)


def check_gpu_options(options: Any) -> None:
    """The GPU options that need no API call: ``accelerator_type`` with ``worker_gpu``, and
    a boot image with NVIDIA's driver (Ubuntu's has none).

    Raises
    ------
    BadInput
        One line naming the options and the fix.
    """
    if options.accelerator_type and not options.worker_gpu:
        raise BadInput(
            f"[cluster.options] accelerator_type = {options.accelerator_type!r} without worker_gpu: set worker_gpu "
            "to the number of cards each worker gets, or drop accelerator_type"
        )
    if options.worker_gpu and not (options.gpu_source_image or options.source_image):
        raise BadInput(
            f"[cluster.options] worker_gpu = {options.worker_gpu} needs a boot image with NVIDIA's driver, Docker and "
            "NVIDIA's container toolkit (Ubuntu's has none): set gpu_source_image (the workers' image; the "
            "scheduler keeps Ubuntu), e.g. to a Deep Learning VM image family of project "
            f"deeplearning-platform-release ({GPU_IMAGE_EXAMPLE})"
        )


def check_gpus(shape: MachineShape, option: str, gpus: int, accelerator: str | None, cards: int | None,
               gpu_key: str = "[cluster.options] worker_gpu") -> None:
    """The workers' machine type gets ``gpus`` GPUs: built in, or ``accelerator`` cards.

    ``option`` and ``gpu_key`` say where the type and the GPUs were set (a worker group's
    ``[[cluster.worker_groups]] NAME gpu``).

    Raises
    ------
    BadInput
        One line naming the options and the fix.
    """
    key = gpu_key.rsplit(" ", 1)[-1]
    if accelerator and shape.gpus:
        raise BadInput(
            f"{option} = {shape.name!r} comes with {shape.gpus} {shape.gpu_type}: drop "
            "accelerator_type (its GPUs are the machine type's)"
        )
    if not gpus:
        return
    if not accelerator and not shape.gpus:
        raise BadInput(
            f"{option} = {shape.name!r} has no GPU but {key} = {gpus}: use a machine type "
            f"with GPUs or accelerator_type on an N1 type ({GPU_EXAMPLES}), or drop {key}"
        )
    if shape.gpus and gpus > shape.gpus:
        raise BadInput(
            f"{option} = {shape.name!r} comes with {shape.gpus} {shape.gpu_type} but {key} "
            f"= {gpus}: use a larger machine type of its series, or lower {key}"
        )
    if accelerator and cards is not None and gpus > cards:
        raise BadInput(
            f"{gpu_key} = {gpus} but a VM takes at most {cards} {accelerator} in this zone: lower {key}"
        )


def worker_types(options: Any, groups: Sequence[Any]) -> list[tuple[str, str, int, str | None, str, BootImage]]:
    """``(where the type is set, machine type, GPUs, accelerator type, where the GPUs are
    set, boot image)`` of the run's workers, or of each worker group's."""
    run_option = "worker_machine_type" if options.worker_machine_type else "machine_type"
    run_kind = getattr(options, run_option)
    if not groups:
        return [(f"[cluster.options] {run_option}", run_kind, options.worker_gpu, options.accelerator_type,
                 "[cluster.options] worker_gpu", vm_boot_image(options, gpus=options.worker_gpu))]
    vms = []
    for group in groups:
        own = group.options or {}
        where = f"[[cluster.worker_groups]] {group.name}"
        vms.append((f"{where} options.worker_machine_type" if own.get("worker_machine_type")
                    else f"{where}: [cluster.options] {run_option}",
                    own.get("worker_machine_type") or run_kind, int(group.gpu or 0), own.get("accelerator_type"),
                    f"{where} gpu", vm_boot_image(options, gpus=int(group.gpu or 0), group=group.name, own=own)))
    return vms


def check_run(compute: Any, project: str, zone: str, options: Any, image: str,
              groups: Sequence[Any] = ()) -> dict[str, str]:
    """The architecture of each role's VMs (``scheduler``, ``worker``) and of each worker
    machine type (``amd64``, ``arm64``), after the machine types, the workers' (each worker
    group's) GPUs, the image's architectures (:func:`~.image_arch.image_architectures`)
    and each VM's boot image were checked (empty: nothing read).

    Raises
    ------
    BadInput
        Any mismatch, or an image its registry does not have: one line naming the fix.
    """
    held = image_architectures(image)
    scheduler_option = "scheduler_machine_type" if options.scheduler_machine_type else "machine_type"
    workers = worker_types(options, groups)
    vms = [] if options.scheduler_address else [(f"[cluster.options] {scheduler_option}",
                                                  getattr(options, scheduler_option),
                                                  vm_boot_image(options, worker=False))]
    vms += [(where, kind, boot) for where, kind, _gpus, _accelerator, _key, boot in workers]
    shapes = machine_shapes(compute, project, zone, {where: kind for where, kind, _boot in vms})
    if not shapes:
        return {}
    for where, kind, gpus, accelerator, gpu_key, _boot in workers:
        cards = accelerator_cards(compute, project, zone, accelerator) if accelerator and gpus else None
        check_gpus(shapes[kind], where, gpus, accelerator, cards, gpu_key)
    for where, kind, _boot in vms:
        check_arch(shapes[kind], where, held, image, "machine type", EXAMPLES)
    archs = {kind: shapes[kind].arch for _where, kind, _boot in vms}
    if not options.scheduler_address:
        archs["scheduler"] = shapes[vms[0][1]].arch
    archs["worker"] = shapes[workers[0][1]].arch
    check_boot_images([BootedVM(where, kind, shapes[kind].arch, boot) for where, kind, boot in vms],
                      lambda boot: boot_image_arch(compute, boot), "machine type", EXAMPLES)
    return archs


def boot_image_arch(compute: Any, boot: BootImage) -> str:
    """The architecture of a boot image (``images.get`` or ``getFromFamily``); empty
    when its name is of another form, it does not say, or it may not be read.

    Raises
    ------
    BadInput
        The image or family does not exist.
    """
    source_image = str(boot.value)
    match = _IMAGE.match(source_image)
    if not match:
        return ""
    images = compute.images()
    request = (images.getFromFamily(project=match["project"], family=match["family"]) if match["family"]
               else images.get(project=match["project"], image=match["image"]))
    answer = _read(request, f"reading boot image {source_image}",
                   f"{boot.key} = {source_image!r} does not exist (or is not shared with the project): name an "
                   "image or image family of a project the run may use")
    return PLATFORM_ARCH.get(str((answer or {}).get("architecture", "")), "")


def vm_boot_image(options: Any, *, worker: bool = True, gpus: int = 0, group: str = "",
                  own: Mapping[str, Any] | None = None) -> BootImage:
    """Where a VM's boot image is set and what it is (:func:`~.boot_images.boot_choice`)."""
    return boot_choice(options, "source_image", "gpu_source_image", worker=worker, gpus=gpus, group=group, own=own)


def boot_image(choice: BootImage, arch: str) -> str:
    """The boot image of a VM of ``arch``: the project's (``choice``), else Ubuntu's LTS of that architecture."""
    return choice.value or DEFAULT_IMAGES.get(arch or "amd64", DEFAULT_IMAGES["amd64"])


def gpu_fields(gpus: int, accelerator: str | None, zone: str) -> dict[str, Any]:
    """What a worker VM's body gets for its ``gpus`` (its group's ``gpu``, else
    ``worker_gpu``): the ``accelerator`` cards (unless the machine type brings its own),
    ``onHostMaintenance = TERMINATE`` (a VM with GPUs cannot live-migrate), and
    (``metadata_items``, added to the body's metadata) the key that has a Deep Learning VM
    image install NVIDIA's driver at its first boot."""
    if not gpus:
        return {}
    fields: dict[str, Any] = {
        "scheduling": {"onHostMaintenance": "TERMINATE", "automaticRestart": False},
        "metadata_items": [{"key": "install-nvidia-driver", "value": "True"}],
    }
    if accelerator:
        fields["guestAccelerators"] = [{
            "acceleratorType": f"zones/{zone}/acceleratorTypes/{accelerator}",
            "acceleratorCount": gpus,
        }]
    return fields
