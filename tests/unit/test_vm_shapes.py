"""GPU and ARM64 VMs on Google Cloud and Azure, at the SDK boundary of tests/vm_fakes.py:
the requests flowrig's own code builds for a GPU worker (checked against the discovery
document googleapiclient ships and the Azure SDK's own models), each VM's boot image
following its machine type's architecture, and every mismatch refused in one line, exit 2,
before any call that creates anything.

The image's architecture is what this machine's engine says of its copy
(``local_architecture``); it is set here, and its registry is not read, as both reads
have tests of their own.
"""

from __future__ import annotations

import base64

import pytest
from googleapiclient.discovery import build as REAL_BUILD  # before the fixtures replace it

from flowrig.backends.base import ClusterSpec
from flowrig.backends.vm.azure import AzureBackend
from flowrig.backends.vm.gcp import GCPBackend
from flowrig.errors import BadInput
from flowrig.project.sizing import ClusterSize
from tests.vm_fakes import AZURE_OPTIONS, GCP_OPTIONS, assert_google_empty, discovery_errors

IMAGE = "ghcr.io/example/seed:1"
DLVM = "projects/deeplearning-platform-release/global/images/family/common-cu124-debian-11"
GPU_IMAGE = {"publisher": "microsoft-dsvm", "offer": "ubuntu-hpc", "sku": "2204", "version": "latest"}
#: Calls that make something: none may come before a refusal.
CREATING = ("insert", "create", "setIamPolicy", "addVersion", "arm.PUT", "set_secret")


@pytest.fixture
def image_arch(monkeypatch):
    """Set the architecture the engine reports for the run's image (``None``: no copy here)."""
    from flowrig.containers.engine import images

    def set_arch(arch):
        monkeypatch.setattr(images, "local_architecture", lambda image: arch if image == IMAGE else None)

    set_arch(None)
    return set_arch


def spec(tls, run_id: str, **options) -> ClusterSpec:
    return ClusterSpec(run_id=run_id, size=ClusterSize(1), tls=tls, image=IMAGE, worker_threads=1,
                       options={"tls": "baked", "registry_login": False, **options})


def refused(backend, world, tls, run_id: str, **options) -> str:
    """The one-line BadInput of starting a run (preflight off: these checks run always),
    after asserting nothing was created."""
    with pytest.raises(BadInput) as info:
        backend().start(spec(tls, run_id, preflight=False, **options))
    assert info.value.exit_code == 2 and "\n" not in str(info.value)
    made = [call[0] for call in world.calls if call[0].endswith(CREATING)]
    assert made == [], made
    return str(info.value)


# --- Google Cloud ------------------------------------------------------------------------------
def gcp_bodies(world) -> dict[str, dict]:
    return {call[1]["body"]["name"]: call[1]["body"] for call in world.calls if call[0] == "compute.instances.insert"}


def gcp_launch(run_id: str, spot=False, **options):
    """A prepared GCP cloud, checked as a run checks it, and its scheduler and one worker made."""
    from dataclasses import replace

    from flowrig.backends.vm.cloudinit import TLSDelivery
    from flowrig.backends.vm.gcp_cloud import GCPCloud
    from flowrig.backends.vm.launcher import VMLauncher

    parsed = GCPBackend().options({**GCP_OPTIONS, "tls": "baked", "registry_login": False, **options})
    cloud = GCPCloud(run_id, parsed)
    cloud.check(IMAGE)
    cloud.prepare(dashboard=False)
    settings = GCPBackend().role_settings(spec_for(run_id), parsed, TLSDelivery())
    vms = VMLauncher(cloud, replace(settings, spot=spot), deadline=float("inf"))
    vms.start_scheduler()
    vms.start_workers("tls://10.0.0.5:8786", 1)
    return cloud


def spec_for(run_id: str) -> ClusterSpec:
    return ClusterSpec(run_id=run_id, size=ClusterSize(1), tls=None, image=IMAGE, worker_threads=1)


def test_gcp_gpu_worker_on_a_machine_type_with_gpus_terminates_on_maintenance_and_gets_them(google, image_arch):
    cloud = gcp_launch("gg1", worker_gpu=1, worker_machine_type="g2-standard-4", source_image=DLVM)
    bodies = gcp_bodies(google)
    scheduler, worker = bodies["flowrig-gg1-scheduler"], bodies["flowrig-gg1-worker-1"]
    assert worker["machineType"].endswith("/g2-standard-4") and "guestAccelerators" not in worker
    assert worker["scheduling"] == {"onHostMaintenance": "TERMINATE", "automaticRestart": False}
    assert {"key": "install-nvidia-driver", "value": "True"} in worker["metadata"]["items"]
    assert worker["disks"][0]["initializeParams"]["sourceImage"] == DLVM
    # The scheduler runs no task: no GPU, and it may live-migrate.
    assert "scheduling" not in scheduler and "guestAccelerators" not in scheduler
    assert [i["key"] for i in scheduler["metadata"]["items"]] == ["user-data"]
    assert discovery_errors(worker) == [] and discovery_errors(scheduler) == []
    # Its container gets the VM's GPUs, and the worker a Dask resource of as many.
    from flowrig.backends.vm import cloudinit

    [user_data] = [i["value"] for i in worker["metadata"]["items"] if i["key"] == "user-data"]
    role = cloudinit.parse(user_data)
    assert role.gpus and "GPU=1" in " ".join(role.command)
    assert cloud.delete() == []
    assert_google_empty(google)


def test_gcp_accelerator_cards_on_an_n1_worker_and_on_spot(google, image_arch):
    cloud = gcp_launch("gg2", spot=True, worker_gpu=2, worker_machine_type="n1-standard-4",
                       accelerator_type="nvidia-tesla-t4", source_image=DLVM)
    worker = gcp_bodies(google)["flowrig-gg2-worker-1"]
    assert worker["guestAccelerators"] == [
        {"acceleratorType": "zones/europe-west1-b/acceleratorTypes/nvidia-tesla-t4", "acceleratorCount": 2}]
    assert worker["scheduling"] == {"provisioningModel": "SPOT", "instanceTerminationAction": "DELETE",
                                    "automaticRestart": False, "onHostMaintenance": "TERMINATE"}
    assert discovery_errors(worker) == []
    assert ("compute.acceleratorTypes.get", {"project": "proj-1", "zone": "europe-west1-b",
                                             "acceleratorType": "nvidia-tesla-t4"}) in google.calls
    assert cloud.delete() == []
    # The reads are requests googleapiclient's real compute client builds from its discovery document.
    from google.auth.credentials import AnonymousCredentials

    compute = REAL_BUILD("compute", "v1", credentials=AnonymousCredentials(), cache_discovery=False)
    reads = [(name, kwargs) for name, kwargs in google.calls if name in (
        "compute.machineTypes.get", "compute.acceleratorTypes.get", "compute.images.getFromFamily")]
    assert {name for name, _ in reads} == {"compute.machineTypes.get", "compute.acceleratorTypes.get",
                                           "compute.images.getFromFamily"}
    for name, kwargs in reads:
        _, resource, method = name.split(".")
        request = getattr(getattr(compute, resource)(), method)(**kwargs)
        assert request.uri.startswith("https://compute.googleapis.com/compute/v1/projects/"), name


def test_gcp_each_vm_boots_ubuntu_of_its_machine_types_architecture(google, image_arch):
    image_arch("arm64")
    cloud = gcp_launch("gg3", machine_type="t2a-standard-2")
    assert {name: body["disks"][0]["initializeParams"]["sourceImage"].rsplit("/", 1)[1]
            for name, body in gcp_bodies(google).items()} == {
        "flowrig-gg3-scheduler": "ubuntu-2404-lts-arm64", "flowrig-gg3-worker-1": "ubuntu-2404-lts-arm64"}
    assert cloud.delete() == []
    # Without an image to follow, each role's boot image is its machine type's.
    image_arch(None)
    cloud = gcp_launch("gg5", worker_machine_type="t2a-standard-2")
    assert {name: body["disks"][0]["initializeParams"]["sourceImage"].rsplit("/", 1)[1]
            for name, body in gcp_bodies(google).items() if "gg5" in name} == {
        "flowrig-gg5-scheduler": "ubuntu-2404-lts-amd64", "flowrig-gg5-worker-1": "ubuntu-2404-lts-arm64"}
    assert cloud.delete() == []


GCP_REFUSALS = {
    "no gpu": ({"worker_gpu": 1, "source_image": DLVM}, None,
               "[cluster.options] machine_type = 'n1-standard-1' has no GPU but worker_gpu = 1: use a machine type "
               "with GPUs or accelerator_type on an N1 type (g2-standard-4 (1 nvidia-l4), or n1-standard-4 with "
               "accelerator_type = 'nvidia-tesla-t4'), or drop worker_gpu"),
    "too few built in": ({"worker_gpu": 2, "worker_machine_type": "g2-standard-4", "source_image": DLVM}, None,
                         "[cluster.options] worker_machine_type = 'g2-standard-4' comes with 1 nvidia-l4 but "
                         "worker_gpu = 2: use a larger machine type of its series, or lower worker_gpu"),
    "cards on a gpu type": ({"worker_gpu": 1, "machine_type": "a2-highgpu-1g", "accelerator_type": "nvidia-l4",
                             "source_image": DLVM}, None,
                            "[cluster.options] machine_type = 'a2-highgpu-1g' comes with 1 nvidia-tesla-a100: drop "
                            "accelerator_type (its GPUs are the machine type's)"),
    "too many cards": ({"worker_gpu": 5, "accelerator_type": "nvidia-tesla-t4", "source_image": DLVM}, None,
                       "[cluster.options] worker_gpu = 5 but a VM takes at most 4 nvidia-tesla-t4 in this zone: lower "
                       "worker_gpu"),
    "no such accelerator": ({"worker_gpu": 1, "accelerator_type": "nvidia-h900", "source_image": DLVM}, None,
                            "[cluster.options] accelerator_type = 'nvidia-h900' is not an accelerator type of zone "
                            "europe-west1-b: name one `gcloud compute accelerator-types list --filter "
                            "zone:europe-west1-b` lists, or another zone"),
    "no such machine": ({"worker_machine_type": "n9-huge"}, None,
                        "[cluster.options] worker_machine_type = 'n9-huge' is not a machine type of zone "
                        "europe-west1-b: name one `gcloud compute machine-types list --zones europe-west1-b` lists"),
    "gpu without a driver image": ({"worker_gpu": 1, "worker_machine_type": "g2-standard-4"}, None,
                                   "[cluster.options] worker_gpu = 1 needs a boot image with NVIDIA's driver"),
    "cards without gpus": ({"accelerator_type": "nvidia-tesla-t4"}, None,
                           "[cluster.options] accelerator_type = 'nvidia-tesla-t4' without worker_gpu"),
    "arm type, amd64 image": ({"worker_machine_type": "t2a-standard-2"}, "amd64",
                              f"[cluster.options] worker_machine_type = 't2a-standard-2' runs linux/arm64 but the "
                              f"image {IMAGE} is linux/amd64: use a machine type for amd64 (e.g. n2-standard-2, "
                              "e2-standard-2), or build the image with flowrig build --platform linux/arm64"),
    "amd64 type, arm image": ({}, "arm64", "[cluster.options] machine_type = 'n1-standard-1' runs linux/amd64 but"),
    "arm boot image, amd64 types": ({"source_image": "projects/ubuntu-os-cloud/global/images/family/ubuntu-2404-lts-arm64"},
                                    None, "[cluster.options] source_image = 'projects/ubuntu-os-cloud/global/images/"
                                    "family/ubuntu-2404-lts-arm64' is a linux/arm64 image but [cluster.options] "
                                    "machine_type = 'n1-standard-1' runs linux/amd64: use a boot image for amd64 (or leave "
                                    "it out), or machine types for arm64 (e.g. t2a-standard-2, c4a-standard-2)"),
    "no such boot image": ({"source_image": "projects/team/global/images/family/no-such-family"}, None,
                           "[cluster.options] source_image = 'projects/team/global/images/family/no-such-family' does "
                           "not exist (or is not shared with the project)"),
    "one boot image, two archs": ({"worker_machine_type": "t2a-standard-2", "source_image": DLVM}, None,
                                  "[cluster.options] source_image is one boot image, for machine types of different "
                                  "architectures (n1-standard-1, t2a-standard-2): choose machine types of one "
                                  "architecture, set an image per group (its options), or leave it out"),
}


@pytest.mark.parametrize("case", GCP_REFUSALS, ids=list(GCP_REFUSALS))
def test_gcp_shapes_that_cannot_run_are_one_line_exit_2_before_anything_is_made(google, tls, image_arch, case):
    options, arch, words = GCP_REFUSALS[case]
    image_arch(arch)
    message = refused(GCPBackend, google, tls, "ggx", **GCP_OPTIONS, **options)
    assert message.startswith(words), message
    assert_google_empty(google)


def test_gcp_machine_types_the_runner_may_not_read_are_not_checked(google, image_arch, caplog):
    from tests.vm_fakes import http_error

    google.faults["compute.machineTypes.get"] = http_error(403, "Required 'compute.machineTypes.get' permission")
    image_arch("arm64")
    cloud = gcp_launch("gg4", worker_machine_type="n1-standard-1")
    assert "the machine types are not checked" in caplog.text
    assert cloud.delete() == []


# --- Azure -------------------------------------------------------------------------------------
def azure_bodies(world) -> dict[str, dict]:
    return {call[1][1]: call[2]["body"] for call in world.calls
            if call[0] == "compute.Microsoft.Compute/virtualMachines.create"}


def azure_launch(run_id: str, **options):
    from flowrig.backends.vm.azure_cloud import AzureCloud
    from flowrig.backends.vm.cloudinit import TLSDelivery
    from flowrig.backends.vm.launcher import VMLauncher

    parsed = AzureBackend().options({**AZURE_OPTIONS, "tls": "baked", "registry_login": False, **options})
    cloud = AzureCloud(run_id, parsed)
    cloud.check(IMAGE)
    cloud.prepare(dashboard=False)
    vms = VMLauncher(cloud, AzureBackend().role_settings(spec_for(run_id), parsed, TLSDelivery()),
                     deadline=float("inf"))
    vms.start_scheduler()
    vms.start_workers("tls://10.0.0.5:8786", 1)
    return cloud


def test_azure_gpu_worker_on_an_n_series_size_and_arm_sizes_boot_arm_ubuntu(azure, image_arch):
    from azure.mgmt.compute.models import VirtualMachine

    from flowrig.backends.vm import cloudinit

    cloud = azure_launch("ag1", worker_gpu=1, worker_vm_size="Standard_NC4as_T4_v3", vm_image=GPU_IMAGE)
    bodies = azure_bodies(azure)
    worker = VirtualMachine(bodies["flowrig-ag1-worker-1"]).properties
    assert worker.hardware_profile.vm_size == "Standard_NC4as_T4_v3"
    assert worker.storage_profile.image_reference.offer == "ubuntu-hpc"
    role = cloudinit.parse(base64.b64decode(worker.os_profile.custom_data).decode())
    assert role.gpus and "GPU=1" in " ".join(role.command)
    scheduler = VirtualMachine(bodies["flowrig-ag1-scheduler"]).properties
    assert scheduler.hardware_profile.vm_size == "Standard_DS1_v2"
    assert ("compute.resource_skus.list", (), {"filter": "location eq 'westeurope'"}) in azure.calls
    assert cloud.delete() == []
    # The call binds to the installed SDK's own method.
    import inspect

    from azure.mgmt.compute.operations import ResourceSkusOperations

    inspect.signature(ResourceSkusOperations.list).bind(None, filter="location eq 'westeurope'")
    from azure.mgmt.compute.operations import VirtualMachineImagesOperations as Images

    for name, args, kwargs in azure.calls:
        if name.startswith("compute.virtual_machine_images."):
            inspect.signature(getattr(Images, name.rsplit(".", 1)[1])).bind(None, *args, **kwargs)
    assert [c[1] for c in azure.calls if c[0] == "compute.virtual_machine_images.get"][0] == (
        "westeurope", "microsoft-dsvm", "ubuntu-hpc", "2204", "24.04.202611010")

    image_arch("arm64")
    cloud = azure_launch("ag2", vm_size="Standard_D2ps_v5")
    read = {name: VirtualMachine(body).properties.storage_profile.image_reference
            for name, body in azure_bodies(azure).items() if "ag2" in name}
    assert {(r.offer, r.sku) for r in read.values()} == {("ubuntu-24_04-lts", "server-arm64")}
    assert cloud.delete() == []


AZURE_REFUSALS = {
    "no gpu": ({"worker_gpu": 1, "vm_image": GPU_IMAGE}, None,
               "[cluster.options] vm_size = 'Standard_DS1_v2' has no GPU but worker_gpu = 1: use an N-series GPU "
               "size (Standard_NC4as_T4_v3, Standard_NC24ads_A100_v4), or lower worker_gpu"),
    "too few": ({"worker_gpu": 2, "worker_vm_size": "Standard_NC4as_T4_v3", "vm_image": GPU_IMAGE}, None,
                "[cluster.options] worker_vm_size = 'Standard_NC4as_T4_v3' has 1 GPU but worker_gpu = 2"),
    "barred": ({"worker_vm_size": "Standard_NC24ads_A100_v4"}, None,
               "[cluster.options] worker_vm_size = 'Standard_NC24ads_A100_v4' is not available to the subscription "
               "in westeurope (NotAvailableForSubscription): choose another size or location"),
    "no such size": ({"scheduler_vm_size": "Standard_Z9"}, None,
                     "[cluster.options] scheduler_vm_size = 'Standard_Z9' is not a VM size of location westeurope: "
                     "name one `az vm list-sizes --location westeurope` lists"),
    "gpu without a driver image": ({"worker_gpu": 1, "worker_vm_size": "Standard_NC4as_T4_v3"}, None,
                                   "[cluster.options] worker_gpu = 1 needs an image with NVIDIA's driver"),
    "arm size, amd64 image": ({"worker_vm_size": "Standard_D2ps_v5"}, "amd64",
                              f"[cluster.options] worker_vm_size = 'Standard_D2ps_v5' runs linux/arm64 but the image "
                              f"{IMAGE} is linux/amd64: use a VM size for amd64 (e.g. Standard_D2s_v5), or build the "
                              "image with flowrig build --platform linux/arm64"),
    "arm image, amd64 sizes": ({"vm_image": {"publisher": "Canonical", "offer": "ubuntu-24_04-lts",
                                             "sku": "server-arm64", "version": "latest"}}, None,
                               "[cluster.options] vm_image = {'publisher': 'Canonical', 'offer': 'ubuntu-24_04-lts', "
                               "'sku': 'server-arm64', 'version': 'latest'} is a linux/arm64 image but "
                               "[cluster.options] vm_size = 'Standard_DS1_v2' runs linux/amd64: use a boot image for "
                               "amd64 (or leave it out), or VM sizes for arm64 (e.g. Standard_D2ps_v5)"),
    "no such image": ({"vm_image": {"publisher": "nobody", "offer": "nothing", "sku": "x", "version": "latest"}},
                      None, "[cluster.options] vm_image = {'publisher': 'nobody', 'offer': 'nothing', 'sku': 'x', "
                      "'version': 'latest'} is not an image of location westeurope"),
    "one image, two archs": ({"worker_vm_size": "Standard_D2ps_v5", "vm_image": GPU_IMAGE}, None,
                             "[cluster.options] vm_image is one boot image, for VM sizes of different architectures "
                             "(Standard_DS1_v2, Standard_D2ps_v5)"),
}


@pytest.mark.parametrize("case", AZURE_REFUSALS, ids=list(AZURE_REFUSALS))
def test_azure_shapes_that_cannot_run_are_one_line_exit_2_before_anything_is_made(azure, tls, image_arch, case):
    options, arch, words = AZURE_REFUSALS[case]
    image_arch(arch)
    message = refused(AzureBackend, azure, tls, "agx", **AZURE_OPTIONS, **options)
    assert message.startswith(words), message
    assert azure.arm == {} and azure.secrets == {}
    assert_azure_empty_of_vms(azure)


def assert_azure_empty_of_vms(world) -> None:
    assert [k for k in world.held if k[0] != "Microsoft.Network/virtualNetworks/subnets"] == []


def test_azure_sizes_the_runner_may_not_list_are_not_checked(azure, image_arch, caplog):
    from tests.vm_fakes import azure_error

    azure.faults["compute.resource_skus.list"] = azure_error(403, "AuthorizationFailed", "no read on Microsoft.Compute")
    image_arch("arm64")
    cloud = azure_launch("ag3")
    assert "the VM sizes are not checked" in caplog.text
    assert cloud.delete() == []


def test_preflight_on_gcp_and_azure_lists_the_shape_check_and_makes_nothing(google, azure, image_arch):
    from flowrig.backends.preflight import PreflightPlan

    image_arch("amd64")
    for backend, world, options, line in (
        (GCPBackend, google, {**GCP_OPTIONS, "worker_machine_type": "t2a-standard-2"},
         "[cluster.options] worker_machine_type = 't2a-standard-2' runs linux/arm64 but the image "
         f"{IMAGE} is linux/amd64"),
        (AzureBackend, azure, {**AZURE_OPTIONS, "worker_vm_size": "Standard_D2ps_v5"},
         "[cluster.options] worker_vm_size = 'Standard_D2ps_v5' runs linux/arm64 but the image "
         f"{IMAGE} is linux/amd64"),
    ):
        checks = backend().preflight(PreflightPlan(image=IMAGE, options=options))
        assert [(c.name, c.ok) for c in checks] == [("image", True), ("machine-type", False), ("network", None)]
        assert checks[0].line == "linux/amd64"  # the local copy's: the fake clouds' registry is not read
        assert checks[1].line == line and checks[1].fix.startswith("use a ")
        assert [c[0] for c in world.calls if c[0].endswith(CREATING)] == []
        fits = backend().preflight(PreflightPlan(image=IMAGE, options={**options, **(
            {"worker_machine_type": "e2-standard-2"} if backend is GCPBackend else {"worker_vm_size": "Standard_D2s_v5"})}))
        assert [(c.name, c.ok) for c in fits] == [("image", True), ("machine-type", True), ("network", None)]


def test_a_gcp_start_with_preflight_on_stops_at_the_shape_check(google, tls, image_arch):
    with pytest.raises(BadInput) as info:
        GCPBackend().start(spec(tls, "ggp", **GCP_OPTIONS, worker_gpu=1, source_image=DLVM))
    assert str(info.value).startswith("preflight: 1 check failed, nothing was created; first: machine-type gcp: "
                                      "[cluster.options] machine_type = 'n1-standard-1' has no GPU but worker_gpu = 1")
    assert [c[0] for c in google.calls if c[0].endswith(CREATING)] == []
