"""``[[cluster.worker_groups]]`` on the VM backends (``ec2``, ``gcp``, ``azure``).

Each group's worker VMs get the group's VM type (its ``options``: ``worker_instance_type``
on EC2, ``worker_machine_type`` on GCP, ``worker_vm_size`` on Azure; else the run's), on
GCP and Azure its boot image (:mod:`.boot_images`), its market, its GPUs (``docker run
--gpus all`` and the Dask resource ``GPU``; on GCP the group may set its own
``accelerator_type`` cards of an N1 type), and a worker command whose ``--resources``
are the group's alone, rendered here; their names are ``flowrig-RUN-worker-GROUP-N``.
A group's ``cpu`` and ``memory`` are the VM type's: a group that sets them is refused
with the key to set instead. Pure: no API call.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping

from flowrig.backends.markets import SpotSetting, group_spot
from flowrig.backends.pool.groups import group_shapes, resources_args
from flowrig.errors import BadInput

#: Per backend: the ``[cluster.options]`` key that sets a worker VM's type.
TYPE_OPTION = {"ec2": "worker_instance_type", "gcp": "worker_machine_type", "azure": "worker_vm_size"}


@dataclass(frozen=True)
class VMGroup:
    """How one worker group's VMs start."""

    name: str
    threads: int
    #: Flags after the worker's own: the project's, then the group's ``--resources``.
    args: tuple[str, ...]
    spot: SpotSetting = False
    gpu: int = 0
    #: The group's own ``[cluster.options]`` (its VM type, its boot image), over the run's.
    options: Mapping[str, Any] = field(default_factory=dict)


def vm_groups(backend: str, groups: Iterable[Any], base_args: Iterable[str], spot: SpotSetting, taken: Iterable[str],
              gpu_image: Callable[[Mapping[str, Any]], str] = lambda own: "") -> dict[str, VMGroup]:
    """Each group's VMs, checked before anything is created; ``taken``: the
    ``[cluster.options]`` keys a group may set (:attr:`~flowrig.backends.base.Backend.group_options`).

    ``gpu_image(own)``: why a GPU group (of ``own`` options) cannot start on the boot
    image it would get and what to set (empty: it can: EC2 picks AWS's GPU AMI itself).

    Raises
    ------
    BadInput
        One line naming the group, the key and the fix.
    """
    base_args = list(base_args)
    key = TYPE_OPTION[backend]
    out: dict[str, VMGroup] = {}
    for group, where, cpu, memory, gpu, market, own in group_shapes(backend, groups, base_args, taken):
        if cpu is not None or memory is not None:
            raise BadInput(
                f"{where} sets {'cpu' if cpu is not None else 'memory'}, which on {backend} come with the VM type: "
                f"set options = {{ {key} = \"TYPE\" }} on the group instead"
            )
        if own.get("accelerator_type") and not gpu:
            raise BadInput(f"{where} options.accelerator_type = {own['accelerator_type']!r} without gpu: set gpu on "
                           "the group to the number of cards each worker gets, or drop accelerator_type")
        missing = gpu_image(own) if gpu else ""
        if missing:
            raise BadInput(f"{where} gpu = {gpu} {missing}")
        out[group.name] = VMGroup(
            name=group.name, threads=group.threads, args=(*base_args, *resources_args(group)),
            spot=group_spot(market, spot), gpu=gpu, options=dict(own),
        )
    return out
