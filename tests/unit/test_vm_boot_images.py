"""Each VM's boot image on Google Cloud and Azure, decided per VM at the SDK boundary of
tests/vm_fakes: a GPU worker boots the run's GPU image (``gpu_source_image``,
``gpu_vm_image``), the scheduler and the CPU workers Ubuntu of their own type's
architecture (or ``source_image`` / ``vm_image`` when set), and a worker group's own image
(its ``options``, validated as tests/unit/test_worker_groups.py shows) wins for its VMs.
The insert/create bodies are checked against the
discovery document and the Azure SDK's models; a group's image that cannot run on its
VMs is one line, exit 2, before anything is created.
"""

from __future__ import annotations

import pytest

from flowrig.backends.base import WorkerGroupSpec
from flowrig.backends.vm.azure import AzureBackend
from flowrig.backends.vm.gcp import GCPBackend
from tests.unit import test_vm_shapes
from tests.unit.test_vm_gpu_groups import group, launch, refused_groups
from tests.unit.test_vm_shapes import DLVM, GPU_IMAGE, azure_bodies, gcp_bodies
from tests.vm_fakes import AZURE_OPTIONS, GCP_OPTIONS, assert_google_empty, discovery_errors

#: The image's architecture as this machine's engine reports it (test_vm_shapes' fixture).
image_arch = test_vm_shapes.image_arch
UBUNTU = "projects/ubuntu-os-cloud/global/images/family/ubuntu-2404-lts-"
TEAM_IMAGE = "projects/team/global/images/family/hardened-amd64"
TEAM_VM_IMAGE = {"publisher": "Canonical", "offer": "ubuntu-24_04-lts", "sku": "server", "version": "24.04.1"}


def start_all(backend, cloud_class, run_id: str, groups: tuple[WorkerGroupSpec, ...], **options):
    """A cloud checked and prepared as a run does it; its scheduler and one worker of each group made."""
    return launch(backend, cloud_class, run_id, groups, scheduler=True, **options)


def test_gcp_gpu_groups_boot_the_gpu_image_and_the_scheduler_and_cpu_groups_ubuntu(google, image_arch):
    from flowrig.backends.vm.gcp_cloud import GCPCloud

    groups = (group("cpu"), group("arm", options={"worker_machine_type": "t2a-standard-2"}),
              group("l4", gpu=1, options={"worker_machine_type": "g2-standard-4"}),
              group("own", gpu=1, options={"worker_machine_type": "g2-standard-4", "source_image": TEAM_IMAGE}))
    cloud = start_all(GCPBackend, GCPCloud, "bi1", groups, **GCP_OPTIONS, gpu_source_image=DLVM)
    bodies = gcp_bodies(google)
    images = {name: body["disks"][0]["initializeParams"]["sourceImage"] for name, body in bodies.items()}
    assert images == {
        "flowrig-bi1-scheduler": UBUNTU + "amd64",
        "flowrig-bi1-worker-cpu-1": UBUNTU + "amd64",
        "flowrig-bi1-worker-arm-1": UBUNTU + "arm64",
        "flowrig-bi1-worker-l4-1": DLVM,
        # The group's own image wins over the run's GPU image.
        "flowrig-bi1-worker-own-1": TEAM_IMAGE,
    }
    for body in bodies.values():
        assert discovery_errors(body) == []
    # Each named image was read for its architecture before anything was made.
    read = [kwargs["family"] for name, kwargs in google.calls if name == "compute.images.getFromFamily"]
    assert sorted(read) == ["common-cu124-debian-11", "hardened-amd64"]
    assert cloud.delete() == []
    assert_google_empty(google)


def test_gcp_worker_gpu_without_groups_boots_the_gpu_image_and_the_scheduler_ubuntu(google, image_arch):
    from flowrig.backends.vm.gcp_cloud import GCPCloud

    start_all(GCPBackend, GCPCloud, "bi2", (), **GCP_OPTIONS, worker_gpu=1, worker_machine_type="g2-standard-4",
              gpu_source_image=DLVM)
    images = {name: body["disks"][0]["initializeParams"]["sourceImage"] for name, body in gcp_bodies(google).items()}
    assert images == {"flowrig-bi2-scheduler": UBUNTU + "amd64", "flowrig-bi2-worker-1": DLVM}


def test_gcp_source_image_of_the_project_still_boots_every_vm_but_a_groups_own(google, image_arch):
    from flowrig.backends.vm.gcp_cloud import GCPCloud

    groups = (group("cpu"), group("l4", gpu=1, options={"worker_machine_type": "g2-standard-4"}),
              group("own", options={"source_image": DLVM}))
    start_all(GCPBackend, GCPCloud, "bi3", groups, **GCP_OPTIONS, source_image=TEAM_IMAGE)
    images = {name: body["disks"][0]["initializeParams"]["sourceImage"] for name, body in gcp_bodies(google).items()}
    assert images == {"flowrig-bi3-scheduler": TEAM_IMAGE, "flowrig-bi3-worker-cpu-1": TEAM_IMAGE,
                      "flowrig-bi3-worker-l4-1": TEAM_IMAGE, "flowrig-bi3-worker-own-1": DLVM}


def test_azure_gpu_groups_boot_the_gpu_image_and_the_scheduler_and_cpu_groups_ubuntu(azure, image_arch):
    from azure.mgmt.compute.models import VirtualMachine

    from flowrig.backends.vm.azure_cloud import AzureCloud

    groups = (group("cpu"), group("arm", options={"worker_vm_size": "Standard_D2ps_v5"}),
              group("t4", gpu=1, options={"worker_vm_size": "Standard_NC4as_T4_v3"}),
              group("own", options={"vm_image": TEAM_VM_IMAGE}))
    cloud = start_all(AzureBackend, AzureCloud, "ab1", groups, **AZURE_OPTIONS, gpu_vm_image=GPU_IMAGE)
    images = {}
    for name, body in azure_bodies(azure).items():
        reference = VirtualMachine(body).properties.storage_profile.image_reference
        images[name] = (reference.publisher, reference.offer, reference.sku, reference.version)
    ubuntu = ("Canonical", "ubuntu-24_04-lts")
    assert images == {
        "flowrig-ab1-scheduler": (*ubuntu, "server", "latest"),
        "flowrig-ab1-worker-cpu-1": (*ubuntu, "server", "latest"),
        "flowrig-ab1-worker-arm-1": (*ubuntu, "server-arm64", "latest"),
        "flowrig-ab1-worker-t4-1": tuple(GPU_IMAGE.values()),
        "flowrig-ab1-worker-own-1": tuple(TEAM_VM_IMAGE.values()),
    }
    read = sorted(call[1][3] for call in azure.calls if call[0] == "compute.virtual_machine_images.get")
    assert read == ["2204", "server"]
    assert cloud.delete() == []


GCP_IMAGE_REFUSALS = {
    "group image of another arch": (
        (group("arm", options={"worker_machine_type": "t2a-standard-2", "source_image": TEAM_IMAGE}),), {},
        f"[[cluster.worker_groups]] arm options.source_image = '{TEAM_IMAGE}' is a linux/amd64 image but "
        "[[cluster.worker_groups]] arm options.worker_machine_type = 't2a-standard-2' runs linux/arm64: use a boot "
        "image for arm64 (or leave it out), or machine types for amd64 (e.g. n2-standard-2, e2-standard-2)"),
    "gpu image for two archs": (
        (group("l4", gpu=1, options={"worker_machine_type": "g2-standard-4"}),
         group("arm", gpu=1, options={"worker_machine_type": "t2a-standard-2", "accelerator_type": "nvidia-l4"})),
        {"gpu_source_image": DLVM},
        "[cluster.options] gpu_source_image is one boot image, for machine types of different architectures "
        "(g2-standard-4, t2a-standard-2): choose machine types of one architecture, set an image per group (its "
        "options), or leave it out"),
    "group image that does not exist": (
        (group("cpu", options={"source_image": "projects/team/global/images/family/no-such-family"}),), {},
        "[[cluster.worker_groups]] cpu options.source_image = 'projects/team/global/images/family/no-such-family' "
        "does not exist (or is not shared with the project)"),
    "gpu group, cpu image of the group's": (
        (group("l4", gpu=1, options={"worker_machine_type": "g2-standard-4"}),
         group("cpu", options={"source_image": TEAM_IMAGE})), {},
        "[[cluster.worker_groups]] l4 gpu = 1 needs a boot image with NVIDIA's driver, Docker and NVIDIA's container "
        "toolkit (Ubuntu's has none): set gpu_source_image in [cluster.options] (the GPU workers' image; the other "
        "VMs keep Ubuntu) or options.source_image on the group"),
}


@pytest.mark.parametrize("case", GCP_IMAGE_REFUSALS, ids=list(GCP_IMAGE_REFUSALS))
def test_gcp_a_boot_image_that_cannot_run_is_one_line_exit_2_before_anything_is_made(google, tls, image_arch, case):
    groups, options, words = GCP_IMAGE_REFUSALS[case]
    message = refused_groups(GCPBackend, google, tls, "bix", groups, **GCP_OPTIONS, **options)
    assert message.startswith(words), message
    assert_google_empty(google)


def test_azure_a_groups_image_of_another_arch_is_one_line_exit_2_before_anything_is_made(azure, tls, image_arch):
    groups = (group("arm", options={"worker_vm_size": "Standard_D2ps_v5", "vm_image": TEAM_VM_IMAGE}),)
    message = refused_groups(AzureBackend, azure, tls, "abx", groups, **AZURE_OPTIONS)
    assert message.startswith(
        f"[[cluster.worker_groups]] arm options.vm_image = {TEAM_VM_IMAGE!r} is a linux/amd64 image but "
        "[[cluster.worker_groups]] arm options.worker_vm_size = 'Standard_D2ps_v5' runs linux/arm64"), message
