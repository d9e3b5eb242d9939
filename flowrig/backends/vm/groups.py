"""``[[cluster.worker_groups]]`` on the VM backends (``ec2``, ``gcp``, ``azure``).

Each group's worker VMs get the group's VM type (its ``options``: ``worker_instance_type``
on EC2, ``worker_machine_type`` on GCP, ``worker_vm_size`` on Azure; else the run's), its
market, its GPUs (``docker run --gpus all`` and the Dask resource ``GPU``; on GCP the
group may set its own ``accelerator_type`` cards of an N1 type), and a
worker command whose ``--resources`` are the group's alone, rendered here; their names
are ``flowrig-RUN-worker-GROUP-N``. A group's ``cpu`` and ``memory`` are the VM type's:
a group that sets them is refused with the key to set instead. Pure: no API call.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

from flowrig.backends.markets import SpotSetting, group_spot
from flowrig.backends.pool.groups import group_shape, refuse_resource_flags, resources_args
from flowrig.errors import BadInput

#: Per backend: the ``[cluster.options]`` key that sets a worker VM's type.
TYPE_OPTION = {"ec2": "worker_instance_type", "gcp": "worker_machine_type", "azure": "worker_vm_size"}
#: Per backend: the ``[cluster.options]`` keys a group may set otherwise.
GROUP_KEYS = {"ec2": ("worker_instance_type",), "gcp": ("accelerator_type", "worker_machine_type"),
              "azure": ("worker_vm_size",)}


@dataclass(frozen=True)
class VMGroup:
    """How one worker group's VMs start."""

    name: str
    threads: int
    #: Flags after the worker's own: the project's, then the group's ``--resources``.
    args: tuple[str, ...]
    spot: SpotSetting = False
    gpu: int = 0
    #: The group's own ``[cluster.options]`` (its VM type), over the run's.
    options: Mapping[str, Any] = field(default_factory=dict)


def vm_groups(backend: str, groups: Iterable[Any], base_args: Iterable[str], spot: SpotSetting,
              gpu_image: str = "") -> dict[str, VMGroup]:
    """Each group's VMs, checked before anything is created.

    ``gpu_image``: why a GPU group cannot start on the run's boot image and what to set
    (empty: it can: EC2 picks AWS's GPU AMI itself).

    Raises
    ------
    BadInput
        One line naming the group, the key and the fix.
    """
    groups = tuple(groups)
    if not groups:
        return {}
    base_args = list(base_args)
    refuse_resource_flags(base_args)
    key = TYPE_OPTION[backend]
    out: dict[str, VMGroup] = {}
    for group in groups:
        cpu, memory, gpu, market, own = group_shape(group)
        where = f"[[cluster.worker_groups]] {group.name}"
        if cpu is not None or memory is not None:
            raise BadInput(
                f"{where} sets {'cpu' if cpu is not None else 'memory'}, which on {backend} come with the VM type: "
                f"set options = {{ {key} = \"TYPE\" }} on the group instead"
            )
        unknown = sorted(set(own) - set(GROUP_KEYS[backend]))
        if unknown:
            raise BadInput(f"{where} options.{unknown[0]} is not taken per group on {backend}: it takes "
                           f"{', '.join(GROUP_KEYS[backend])}; set the rest in [cluster.options]")
        if own.get("accelerator_type") and not gpu:
            raise BadInput(f"{where} options.accelerator_type = {own['accelerator_type']!r} without gpu: set gpu on "
                           "the group to the number of cards each worker gets, or drop accelerator_type")
        if gpu and gpu_image:
            raise BadInput(f"{where} gpu = {gpu} {gpu_image}")
        out[group.name] = VMGroup(
            name=group.name, threads=group.threads, args=(*base_args, *resources_args(group)),
            spot=group_spot(market, spot), gpu=gpu, options=dict(own),
        )
    return out
