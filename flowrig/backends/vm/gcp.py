"""``gcp``: a run's scheduler and workers as Compute Engine VMs of its image.

The VMs get flowrig's cloud-init, a service account of the run's (it may read the run's
certificate secret in Secret Manager and nothing else), internal addresses only, and a
firewall rule of the run's that admits the Dask ports from the subnet's range only. Every
resource carries the run's labels and is removed after it.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any, ClassVar, Mapping

from pydantic import Field, StrictInt, StrictStr

from flowrig.backends.vm.backend import VMBackend
from flowrig.backends.vm.cloudinit import RegistryLogin
from flowrig.backends.vm.options import VMOptions, check_name

if TYPE_CHECKING:
    from flowrig.backends.vm.cloud import Cloud

#: Artifact Registry's Docker hosts, and the ``gcr.io`` hosts of projects' own images
#: (``k8s.gcr.io``, ``mirror.gcr.io`` and the like are public and need no login).
_GAR = re.compile(r"^([a-z0-9-]+-docker\.pkg\.dev|((us|eu|asia)\.)?gcr\.io)$")
REGION_PATTERN = r"[a-z]+-[a-z]+\d{1,2}"


class GCPOptions(VMOptions):
    """``[cluster.options]`` of the ``gcp`` backend (dask-cloudprovider's ``GCPCluster`` names)."""

    projectid: StrictStr | None = Field(
        None,
        description="Google Cloud project of the run; default: `GOOGLE_CLOUD_PROJECT`, else the credentials' project",
    )
    zone: StrictStr | None = Field(None, description="zone of the VMs, e.g. `europe-west1-b` (required)")
    network: StrictStr = Field("default", description="VPC network of the VMs")
    subnetwork: StrictStr | None = Field(
        None, description="subnetwork of the VMs; default: the network's own (auto mode)"
    )
    network_projectid: StrictStr | None = Field(
        None, description="project that holds the network (a shared VPC); default: `projectid`"
    )
    machine_type: StrictStr = Field("n1-standard-1", description="machine type of every VM")
    scheduler_machine_type: StrictStr | None = Field(
        None, description="machine type of the scheduler; default: `machine_type`"
    )
    worker_machine_type: StrictStr | None = Field(
        None, description="machine type of each worker; default: `machine_type`"
    )
    source_image: StrictStr | None = Field(
        None,
        description="boot image of the VMs; default: Ubuntu 24.04 LTS of each machine type's architecture "
        "(`ubuntu-2404-lts-amd64` or `-arm64`). GPU workers need one with NVIDIA's driver, Docker and container "
        "toolkit (a Deep Learning VM image): set `gpu_source_image` for those, so the other VMs keep Ubuntu. A worker "
        "group may set its own in its `options`",
    )
    gpu_source_image: StrictStr | None = Field(
        None,
        description="boot image of the VMs of workers with GPUs (`worker_gpu`, or a worker group's `gpu`), e.g. a "
        "Deep Learning VM image family; the scheduler and CPU workers boot `source_image` (default: Ubuntu). A "
        "group's own `options.source_image` wins for its VMs",
    )
    worker_gpu: StrictInt = Field(
        0, ge=0,
        description="GPUs each worker uses (`docker run --gpus all`, Dask resource `GPU`): the worker machine type's "
        "own (g2, a2, a3) or `accelerator_type` cards on an N1 type",
    )
    accelerator_type: StrictStr | None = Field(
        None,
        description="GPU attached to each worker, `worker_gpu` of them (e.g. `nvidia-tesla-t4`, as `gcloud compute "
        "accelerator-types list` names it); not for machine types that come with GPUs",
    )
    filesystem_size: int = Field(50, gt=0, description="GiB of the boot disk")


class GCPBackend(VMBackend):
    """``gcp``: Compute Engine VMs, one per role."""

    name = "gcp"
    group_options = frozenset({"worker_machine_type", "accelerator_type", "source_image"})
    extra = "gcp"
    sdk_modules = ("googleapiclient", "google.auth")
    secret_source: ClassVar = "gcp-secret"
    options_model = GCPOptions

    @staticmethod
    def registry_login(image: str) -> RegistryLogin | None:
        host = image.split("/", 1)[0] if "/" in image else ""
        return RegistryLogin(kind="gar", host=host) if _GAR.match(host) else None

    def check_options(self, options: GCPOptions) -> None:
        from flowrig.backends.vm.gcp_shapes import check_gpu_options

        check_name("zone", options.zone, REGION_PATTERN + r"-[a-z]", "europe-west1-b")
        check_gpu_options(options)

    def gpu_image_missing(self, options: GCPOptions, own: Mapping[str, Any]) -> str:
        from flowrig.backends.vm.boot_images import gpu_image_missing
        from flowrig.backends.vm.gcp_shapes import GPU_IMAGE_EXAMPLE

        return gpu_image_missing(options, "source_image", "gpu_source_image", own, repr(GPU_IMAGE_EXAMPLE))

    def make_cloud(self, run_id: str, options: Any) -> "Cloud":
        from flowrig.backends.vm.gcp_cloud import GCPCloud

        return GCPCloud(run_id, options)
