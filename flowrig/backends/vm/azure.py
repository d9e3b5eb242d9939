"""``azure``: a run's scheduler and workers as Azure VMs of its image.

The VMs get flowrig's cloud-init, a user-assigned managed identity of the run's (it may
read the run's certificate secret in the project's Key Vault and nothing else), private
addresses, and a network security group of the run's that admits the Dask ports from
the virtual network only. Every resource carries the run's tags and is removed after it.
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

_ACR = re.compile(r"^[a-z0-9]{5,50}\.azurecr\.(io|cn|us)$")
LOCATION_PATTERN = r"[a-z]+[a-z0-9]*"


class AzureOptions(VMOptions):
    """``[cluster.options]`` of the ``azure`` backend (dask-cloudprovider's ``AzureVMCluster`` names)."""

    location: StrictStr | None = Field(None, description="Azure region of the run, e.g. `westeurope` (required)")
    resource_group: StrictStr | None = Field(
        None, description="resource group the run's resources are made in (required)"
    )
    subscription_id: StrictStr | None = Field(
        None, description="subscription of the run; default: `AZURE_SUBSCRIPTION_ID`"
    )
    vnet: StrictStr | None = Field(None, description="virtual network of the VMs (required)")
    subnet: StrictStr | None = Field(None, description="subnet of `vnet`; needed when it has more than one")
    security_group: StrictStr | None = Field(
        None, description="a network security group of yours for the VMs; default: one made for the run"
    )
    vm_size: StrictStr = Field("Standard_DS1_v2", description="VM size of every VM")
    scheduler_vm_size: StrictStr | None = Field(None, description="VM size of the scheduler; default: `vm_size`")
    worker_vm_size: StrictStr | None = Field(None, description="VM size of each worker; default: `vm_size`")
    vm_image: dict[StrictStr, StrictStr] | None = Field(
        None,
        description="image reference of the VMs (`publisher`, `offer`, `sku`, `version`); default: Canonical's "
        "Ubuntu 24.04 LTS of each size's architecture (sku `server` or `server-arm64`). GPU workers need one with "
        "NVIDIA's driver, Docker and container toolkit: set `gpu_vm_image` for those, so the other VMs keep Ubuntu. "
        "A worker group may set its own in its `options`",
    )
    gpu_vm_image: dict[StrictStr, StrictStr] | None = Field(
        None,
        description="image reference of the VMs of workers with GPUs (`worker_gpu`, or a worker group's `gpu`), "
        "with NVIDIA's driver, Docker and container toolkit; the scheduler and CPU workers boot `vm_image` "
        "(default: Ubuntu). A group's own `options.vm_image` wins for its VMs",
    )
    worker_gpu: StrictInt = Field(
        0, ge=0,
        description="GPUs each worker uses (`docker run --gpus all`, Dask resource `GPU`); the worker VM size must "
        "have as many (an N-series size)",
    )
    key_vault: StrictStr | None = Field(None, description="the Key Vault that holds each run's certificate secret")
    disk_size: int = Field(50, gt=0, description="GiB of the OS disk")


class AzureBackend(VMBackend):
    """``azure``: Azure VMs, one per role."""

    name = "azure"
    group_options = frozenset({"worker_vm_size", "vm_image"})
    extra = "azure"
    sdk_modules = ("azure.identity", "azure.mgmt.compute", "azure.mgmt.network", "azure.keyvault.secrets")
    secret_source: ClassVar = "azure-keyvault"
    options_model = AzureOptions

    @staticmethod
    def registry_login(image: str) -> RegistryLogin | None:
        host = image.split("/", 1)[0] if "/" in image else ""
        return RegistryLogin(kind="acr", host=host) if _ACR.match(host) else None

    def check_options(self, options: AzureOptions) -> None:
        from flowrig.backends.vm.azure_shapes import check_gpu_options

        check_name("location", options.location, LOCATION_PATTERN, "westeurope")
        check_gpu_options(options)

    def gpu_image_missing(self, options: AzureOptions, own: Mapping[str, Any]) -> str:
        from flowrig.backends.vm.azure_shapes import GPU_IMAGE_EXAMPLE
        from flowrig.backends.vm.boot_images import gpu_image_missing

        return gpu_image_missing(options, "vm_image", "gpu_vm_image", own, GPU_IMAGE_EXAMPLE)

    def make_cloud(self, run_id: str, options: Any) -> "Cloud":
        from flowrig.backends.vm.azure_cloud import AzureCloud

        return AzureCloud(run_id, options)
