"""Which boot image each VM of a ``gcp`` or ``azure`` run gets, and the checks of those
images against the VMs' architectures, before anything is created.

The image is decided per VM, so that GPU workers boot an image with NVIDIA's driver and
every other VM the cloud's Ubuntu: a worker group's own image (``options.source_image``
on GCP, ``options.vm_image`` on Azure) wins for its VMs; a GPU worker (its group's
``gpu``, or ``worker_gpu``) then boots the run's GPU image (``gpu_source_image``,
``gpu_vm_image``); every VM then boots the run's image (``source_image``, ``vm_image``),
and without one, Ubuntu 24.04 LTS of its type's architecture. Pure but for the read of
each named image's architecture the cloud passes in.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

from flowrig.errors import BadInput


@dataclass(frozen=True)
class BootImage:
    """A VM's boot image: ``value`` as its option gives it (``None``: Ubuntu of the VM
    type's architecture) and ``key``, where it was set (for messages)."""

    key: str = ""
    value: Any = None

    def words(self) -> str:
        """The image in a line: ``KEY = VALUE``, or the default."""
        if self.value is None:
            return "Ubuntu 24.04 LTS of its type's architecture"
        value = dict(self.value) if isinstance(self.value, Mapping) else self.value
        return f"{self.key} = {value!r}"


def boot_choice(options: Any, image_key: str, gpu_key: str, *, worker: bool = True, gpus: int = 0,
                group: str = "", own: Mapping[str, Any] | None = None) -> BootImage:
    """The boot image of one VM: a worker's of worker group ``group`` (its ``own``
    options) with ``gpus`` GPUs, or (``worker`` false) the scheduler's.

    ``image_key`` and ``gpu_key`` are the cloud's option names (``source_image`` and
    ``gpu_source_image`` on GCP, ``vm_image`` and ``gpu_vm_image`` on Azure).
    """
    if worker and (own or {}).get(image_key):
        return BootImage(f"[[cluster.worker_groups]] {group} options.{image_key}", (own or {})[image_key])
    if worker and gpus and getattr(options, gpu_key, None):
        return BootImage(f"[cluster.options] {gpu_key}", getattr(options, gpu_key))
    if getattr(options, image_key, None):
        return BootImage(f"[cluster.options] {image_key}", getattr(options, image_key))
    return BootImage()


@dataclass(frozen=True)
class BootedVM:
    """One kind of VM of a run, for the checks: where its type is set, the type, its
    architecture (empty: not said) and its boot image."""

    where: str
    kind: str
    arch: str
    boot: BootImage


def check_boot_images(vms: Sequence[BootedVM], image_arch: Callable[[BootImage], str], noun: str,
                      examples: Mapping[str, str]) -> None:
    """Refuse an image of the run's or a group's for VMs of two architectures, or of
    another architecture than its VMs' types (``image_arch``: the cloud's read of a named
    image's architecture, empty when it does not say); ``noun``: what the cloud calls a
    VM type, ``examples`` of each architecture for the fix.

    Raises
    ------
    BadInput
        One line naming the image's key, the types, and the fix.
    """
    booted: dict[str, list[BootedVM]] = {}
    for vm in vms:
        if vm.boot.value is not None:
            booted.setdefault(vm.boot.key, []).append(vm)
    for key, users in booted.items():
        archs = {vm.arch for vm in users if vm.arch}
        boot = users[0].boot
        if len(archs) > 1:
            kinds = ", ".join(dict.fromkeys(vm.kind for vm in users))
            raise BadInput(
                f"{key} is one boot image, for {noun}s of different architectures ({kinds}): choose {noun}s of one "
                "architecture, set an image per group (its options), or leave it out (each VM then boots Ubuntu of "
                "its own architecture)"
            )
        held = image_arch(boot) if archs else ""
        for vm in users:
            if held and vm.arch and vm.arch != held:
                raise BadInput(
                    f"{boot.words()} is a linux/{held} image but {vm.where} = {vm.kind!r} runs linux/{vm.arch}: use a "
                    f"boot image for {vm.arch} (or leave it out), or {noun}s for {held} "
                    f"(e.g. {examples.get(held, '')})"
                )


def gpu_image_missing(options: Any, image_key: str, gpu_key: str, own: Mapping[str, Any], example: str) -> str:
    """Why a GPU worker (of a group with ``own`` options) would boot an image without
    NVIDIA's driver, and what to set (empty: it boots one the project named)."""
    if own.get(image_key) or getattr(options, gpu_key, None) or getattr(options, image_key, None):
        return ""
    return (f"needs a boot image with NVIDIA's driver, Docker and NVIDIA's container toolkit (Ubuntu's has none): "
            f"set {gpu_key} in [cluster.options] (the GPU workers' image; the other VMs keep Ubuntu) or "
            f"options.{image_key} on the group, e.g. {example}")
