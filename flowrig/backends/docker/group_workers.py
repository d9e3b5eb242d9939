"""A docker cluster's worker groups: each worker's spec from its group's shape (pure),
and the engine check a group with GPUs needs."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Iterable

from flowrig.errors import BadInput

if TYPE_CHECKING:
    from docker import DockerClient

    from flowrig.backends.base import WorkerGroupSpec


def worker_shape(group: "WorkerGroupSpec") -> dict[str, Any]:
    """What a worker of ``group`` has of its own: threads and resources, and where the
    group sets them its container's memory and CPU limits, its GPUs and its drain time
    (:class:`~flowrig.backends.docker.cluster.DockerWorker`'s options)."""
    shape: dict[str, Any] = {"threads": group.threads, "resources": dict(group.resources)}
    if group.memory_mib is not None:
        shape["memory"] = f"{group.memory_mib}m"
    if group.cpu is not None:
        shape["cpus"] = float(group.cpu)
    if group.gpu:
        shape["gpus"] = group.gpu
    if "drain_timeout" in group.options:
        shape["drain_timeout"] = float(group.options["drain_timeout"])
    return shape


def group_worker(template: dict[str, Any], group: "WorkerGroupSpec") -> dict[str, Any]:
    """The spec of one worker of ``group``: the cluster's worker ``template`` in its shape."""
    return {**template, "options": {**template["options"], **worker_shape(group)}}


def group_workers(template: dict[str, Any], groups: Iterable["WorkerGroupSpec"]) -> dict[str, Any]:
    """The specs of the workers each group starts with, by worker name (empty without groups)."""
    return {name: group_worker(template, group) for group in groups for name in group.worker_names()}


#: How to give a Docker engine a GPU runtime.
GPU_RUNTIME_FIX = ("install the NVIDIA Container Toolkit and run `nvidia-ctk runtime configure --runtime=docker` "
                   "(then restart Docker), or drop gpu")


def missing_gpu_runtime(client: "DockerClient", groups: Iterable[Any]) -> str | None:
    """What is wrong when a group asks for GPUs on an engine without a GPU runtime
    (``None``: nothing, or no group asks)."""
    from flowrig.containers.engine import gpu_runtime

    wanting = next((group for group in groups if group.gpu), None)
    if wanting is None or gpu_runtime(client):
        return None
    return (f"[[cluster.worker_groups]] group '{wanting.name}' asks for {wanting.gpu} GPU"
            f"{'s' if wanting.gpu > 1 else ''} per worker, and this machine's Docker engine has no GPU runtime")


def check_gpu_runtime(client: "DockerClient", groups: Iterable[Any]) -> None:
    """Refuse groups with GPUs on an engine that cannot give containers any.

    Raises
    ------
    BadInput
        Naming the first such group and the fix, before anything is created.
    """
    problem = missing_gpu_runtime(client, groups)
    if problem is not None:
        raise BadInput(f"{problem}: {GPU_RUNTIME_FIX}")
