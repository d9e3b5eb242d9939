"""What ``flowrig vm cloud-init`` says of each worker it shows: one line per worker group
(or the run's worker, without groups) with its VM type, Dask resources, GPUs, market and
boot image, as a run of the project would start it. Pure: no API call, so what a cloud
reads at a start (a type's architecture, a family's newest image) is named, not read.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from flowrig.backends.markets import FALLBACK
from flowrig.backends.vm.cloudinit import VMRole
from flowrig.backends.vm.groups import TYPE_OPTION, VMGroup

#: Per backend: the ``[cluster.options]`` key of every VM's type.
RUN_TYPE = {"ec2": "instance_type", "gcp": "machine_type", "azure": "vm_size"}


@dataclass(frozen=True)
class WorkerPreview:
    """One worker a preview shows: its group (``""``: the run's, without groups), its
    role, and the line that says how its VM starts."""

    group: str
    role: VMRole
    line: str


def resources_of(args: tuple[str, ...]) -> str:
    """The value of the worker's ``--resources`` flag (empty: none)."""
    for flag, value in zip(args, args[1:]):
        if flag == "--resources":
            return value
    return next((arg.split("=", 1)[1] for arg in args if arg.startswith("--resources=")), "")


def market_words(spot: Any) -> str:
    """A worker's market in words."""
    if spot == FALLBACK:
        return "fallback (Spot first, on-demand where Spot has no room)"
    return "spot" if spot else "on-demand"


def boot_words(backend: str, options: Any, group: VMGroup) -> str:
    """The boot image the group's VMs get, as the cloud decides it (:mod:`.boot_images`)."""
    if backend == "gcp":
        from flowrig.backends.vm.gcp_shapes import vm_boot_image
    elif backend == "azure":
        from flowrig.backends.vm.azure_shapes import vm_boot_image
    else:
        ami = getattr(options, "ami", None)
        return f"ami = {ami!r}" if ami else ("the run's AMI (AWS's Deep Learning Base AMI when a worker of the run has "
                                             "GPUs, else Ubuntu's current LTS)")
    return vm_boot_image(options, gpus=group.gpu, group=group.name, own=group.options).words()


def worker_line(backend: str, options: Any, group: VMGroup) -> str:
    """How the workers of ``group`` start: ``worker group 'NAME': TYPE_KEY = 'TYPE';
    resources ...; GPUs ...; market ...; boot image ...``."""
    type_key = TYPE_OPTION[backend]
    if group.options.get(type_key):
        kind = f"options.{type_key} = {group.options[type_key]!r}"
    else:
        key = type_key if getattr(options, type_key, None) else RUN_TYPE[backend]
        kind = f"{key} = {getattr(options, key)!r}"
    gpus = "none"
    if group.gpu:
        cards = group.options.get("accelerator_type") or getattr(options, "accelerator_type", None)
        gpus = f"{group.gpu} (docker run --gpus all" + (f"; accelerator_type = {cards!r}" if cards else "") + ")"
    head = f"worker group {group.name!r}" if group.name else "worker"
    return (f"{head}: {kind}; resources {resources_of(group.args) or 'none'}; GPUs {gpus}; "
            f"market {market_words(group.spot)}; boot image {boot_words(backend, options, group)}")
