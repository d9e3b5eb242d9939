"""GPU worker groups on Google Cloud and Azure, at the SDK boundary of tests/vm_fakes: each
group's VMs get the group's GPUs and VM type (request bodies checked against the discovery
document and the Azure SDK's models, as tests/unit/test_vm_shapes.py does), a CPU group's
VMs none, and a group whose type cannot hold its GPUs is refused in one line, exit 2,
before anything is created, at a start and in preflight.
"""

from __future__ import annotations

import base64
from typing import Any

import pytest

from flowrig.backends.base import ClusterSpec, WorkerGroupSpec
from flowrig.backends.vm import cloudinit
from flowrig.backends.vm.azure import AzureBackend
from flowrig.backends.vm.gcp import GCPBackend
from flowrig.common.routes import worker_resources
from flowrig.project.sizing import ClusterSize
from tests.unit import test_vm_shapes
from tests.unit.test_vm_shapes import CREATING, DLVM, GPU_IMAGE, IMAGE, azure_bodies, gcp_bodies
from tests.vm_fakes import AZURE_OPTIONS, GCP_OPTIONS, assert_google_empty, discovery_errors

#: The image's architecture as this machine's engine reports it (test_vm_shapes' fixture).
image_arch = test_vm_shapes.image_arch


def group(name: str, n: int = 1, **shape: Any) -> WorkerGroupSpec:
    return WorkerGroupSpec(name, n, 1, worker_resources(name, 1, gpu=shape.get("gpu", 0)), **shape)


def groups_spec(run_id: str, groups: tuple[WorkerGroupSpec, ...], tls=None, **options) -> ClusterSpec:
    return ClusterSpec(run_id=run_id, size=ClusterSize(sum(g.n_workers for g in groups)), tls=tls, image=IMAGE,
                       worker_threads=1, groups=groups,
                       options={"tls": "baked", "registry_login": False, **options})


def launch(backend, cloud_class, run_id: str, groups: tuple[WorkerGroupSpec, ...], scheduler: bool = False,
           **options):
    """A cloud checked and prepared as a run does it, and one worker of each group made (of
    the run, without groups), after the scheduler with ``scheduler``."""
    from flowrig.backends.vm.cloudinit import TLSDelivery
    from flowrig.backends.vm.launcher import VMLauncher

    spec = groups_spec(run_id, groups, **options)
    parsed = backend().options(spec.options)
    cloud = cloud_class(run_id, parsed)
    cloud.worker_groups = groups
    cloud.check(IMAGE)
    cloud.prepare(dashboard=False)
    vms = VMLauncher(cloud, backend().role_settings(spec, parsed, TLSDelivery()), deadline=float("inf"))
    if scheduler:
        vms.start_scheduler()
    for name in [each.name for each in groups] or [""]:
        vms.start_workers("tls://10.0.0.5:8786", 1, group=name)
    return cloud


def user_data_role(items: list[dict]) -> cloudinit.VMRole:
    [text] = [item["value"] for item in items if item["key"] == "user-data"]
    return cloudinit.parse(text)


# --- Google Cloud ------------------------------------------------------------------------------
def test_gcp_each_groups_vms_get_its_gpus_cards_and_type_and_a_cpu_groups_none(google, image_arch):
    from flowrig.backends.vm.gcp_cloud import GCPCloud

    groups = (group("cpu"), group("l4", gpu=1, options={"worker_machine_type": "g2-standard-4"}),
              group("t4", gpu=2, market="spot",
                    options={"worker_machine_type": "n1-standard-4", "accelerator_type": "nvidia-tesla-t4"}))
    cloud = launch(GCPBackend, GCPCloud, "gq1", groups, **GCP_OPTIONS, source_image=DLVM)
    bodies = gcp_bodies(google)
    cpu, l4, t4 = (bodies[f"flowrig-gq1-worker-{name}-1"] for name in ("cpu", "l4", "t4"))
    assert cpu["machineType"].endswith("/n1-standard-1")
    assert "scheduling" not in cpu and "guestAccelerators" not in cpu
    assert [i["key"] for i in cpu["metadata"]["items"]] == ["user-data"]
    assert l4["machineType"].endswith("/g2-standard-4") and "guestAccelerators" not in l4
    assert l4["scheduling"] == {"onHostMaintenance": "TERMINATE", "automaticRestart": False}
    assert {"key": "install-nvidia-driver", "value": "True"} in l4["metadata"]["items"]
    assert t4["machineType"].endswith("/n1-standard-4")
    assert t4["guestAccelerators"] == [
        {"acceleratorType": "zones/europe-west1-b/acceleratorTypes/nvidia-tesla-t4", "acceleratorCount": 2}]
    assert t4["scheduling"] == {"provisioningModel": "SPOT", "instanceTerminationAction": "DELETE",
                                "automaticRestart": False, "onHostMaintenance": "TERMINATE"}
    for body in (cpu, l4, t4):
        assert discovery_errors(body) == []
        assert body["disks"][0]["initializeParams"]["sourceImage"] == DLVM
    # Each container gets its VM's GPUs and offers them as the Dask resource GPU; the CPU group's neither.
    roles = {name: user_data_role(body["metadata"]["items"]) for name, body in (("cpu", cpu), ("l4", l4), ("t4", t4))}
    assert not roles["cpu"].gpus and "GPU=" not in " ".join(roles["cpu"].command)
    assert roles["l4"].gpus and "flowrig-group-l4=1,GPU=1" in " ".join(roles["l4"].command)
    assert roles["t4"].gpus and "flowrig-group-t4=1,GPU=2" in " ".join(roles["t4"].command)
    # The read-only checks read each group's type, and the cards of the group that has them.
    reads = {kwargs.get("machineType") or kwargs.get("acceleratorType") for name, kwargs in google.calls
             if name in ("compute.machineTypes.get", "compute.acceleratorTypes.get")}
    assert reads == {"n1-standard-1", "g2-standard-4", "n1-standard-4", "nvidia-tesla-t4"}
    assert cloud.delete() == []
    assert_google_empty(google)


def test_gcp_groups_boot_ubuntu_of_their_own_machine_types_architecture(google, image_arch):
    from flowrig.backends.vm.gcp_cloud import GCPCloud

    groups = (group("x86"), group("arm", options={"worker_machine_type": "t2a-standard-2"}))
    cloud = launch(GCPBackend, GCPCloud, "gq2", groups, **GCP_OPTIONS)
    images = {name: body["disks"][0]["initializeParams"]["sourceImage"].rsplit("/", 1)[1]
              for name, body in gcp_bodies(google).items()}
    assert images == {"flowrig-gq2-worker-x86-1": "ubuntu-2404-lts-amd64",
                      "flowrig-gq2-worker-arm-1": "ubuntu-2404-lts-arm64"}
    assert cloud.delete() == []


GCP_GROUP_REFUSALS = {
    "gpu group on the run's cpu type": (
        (group("gpu", gpu=1),), {"source_image": DLVM}, None,
        "[[cluster.worker_groups]] gpu: [cluster.options] machine_type = 'n1-standard-1' has no GPU but gpu = 1: "
        "use a machine type with GPUs or accelerator_type on an N1 type (g2-standard-4 (1 nvidia-l4), or "
        "n1-standard-4 with accelerator_type = 'nvidia-tesla-t4'), or drop gpu"),
    "gpu group on its own cpu type": (
        (group("cpu"), group("gpu", gpu=1, options={"worker_machine_type": "e2-standard-2"})),
        {"source_image": DLVM}, None,
        "[[cluster.worker_groups]] gpu options.worker_machine_type = 'e2-standard-2' has no GPU but gpu = 1"),
    "more gpus than its type has": (
        (group("gpu", gpu=2, options={"worker_machine_type": "g2-standard-4"}),), {"source_image": DLVM}, None,
        "[[cluster.worker_groups]] gpu options.worker_machine_type = 'g2-standard-4' comes with 1 nvidia-l4 but gpu "
        "= 2: use a larger machine type of its series, or lower gpu"),
    "more cards than a vm takes": (
        (group("gpu", gpu=5, options={"accelerator_type": "nvidia-tesla-t4"}),), {"source_image": DLVM}, None,
        "[[cluster.worker_groups]] gpu gpu = 5 but a VM takes at most 4 nvidia-tesla-t4 in this zone: lower gpu"),
    "cards on a type with gpus": (
        (group("gpu", gpu=1, options={"worker_machine_type": "a2-highgpu-1g", "accelerator_type": "nvidia-l4"}),),
        {"source_image": DLVM}, None,
        "[[cluster.worker_groups]] gpu options.worker_machine_type = 'a2-highgpu-1g' comes with 1 "
        "nvidia-tesla-a100: drop accelerator_type"),
    "gpu group without a driver image": (
        (group("gpu", gpu=1, options={"worker_machine_type": "g2-standard-4"}),), {}, None,
        "[[cluster.worker_groups]] gpu gpu = 1 needs a boot image with NVIDIA's driver, Docker and NVIDIA's "
        "container toolkit (Ubuntu's has none): set gpu_source_image in [cluster.options] (the GPU workers' image; "
        "the other VMs keep Ubuntu) or options.source_image on the group"),
    "cards without gpus": (
        (group("t4", options={"accelerator_type": "nvidia-tesla-t4"}),), {}, None,
        "[[cluster.worker_groups]] t4 options.accelerator_type = 'nvidia-tesla-t4' without gpu"),
    "arm group, amd64 image": (
        (group("cpu"), group("arm", options={"worker_machine_type": "t2a-standard-2"})), {}, "amd64",
        "[[cluster.worker_groups]] arm options.worker_machine_type = 't2a-standard-2' runs linux/arm64 but the "
        f"image {IMAGE} is linux/amd64"),
    "one boot image, two archs": (
        (group("cpu"), group("arm", options={"worker_machine_type": "t2a-standard-2"})),
        {"source_image": DLVM}, None,
        "[cluster.options] source_image is one boot image, for machine types of different architectures "
        "(n1-standard-1, t2a-standard-2)"),
}


@pytest.mark.parametrize("case", GCP_GROUP_REFUSALS, ids=list(GCP_GROUP_REFUSALS))
def test_gcp_a_group_whose_type_cannot_hold_it_is_one_line_exit_2_before_anything_is_made(
        google, tls, image_arch, case):
    groups, options, arch, words = GCP_GROUP_REFUSALS[case]
    image_arch(arch)
    message = refused_groups(GCPBackend, google, tls, "gqx", groups, **GCP_OPTIONS, **options)
    assert message.startswith(words), message
    assert_google_empty(google)


def refused_groups(backend, world, tls, run_id: str, groups, **options) -> str:
    """The one-line BadInput of starting a run of ``groups`` (preflight off: these checks
    run always), after asserting nothing was created."""
    from flowrig.errors import BadInput

    with pytest.raises(BadInput) as info:
        backend().start(groups_spec(run_id, groups, tls=tls, preflight=False, **options))
    assert info.value.exit_code == 2 and "\n" not in str(info.value)
    made = [call[0] for call in world.calls if call[0].endswith(CREATING)]
    assert made == [], made
    return str(info.value)


# --- Azure -------------------------------------------------------------------------------------
def test_azure_a_gpu_groups_vms_are_of_its_n_series_size_and_a_cpu_groups_get_no_gpus(azure, image_arch):
    from azure.mgmt.compute.models import VirtualMachine

    from flowrig.backends.vm.azure_cloud import AzureCloud

    groups = (group("cpu"), group("t4", gpu=1, options={"worker_vm_size": "Standard_NC4as_T4_v3"}))
    cloud = launch(AzureBackend, AzureCloud, "aq1", groups, **AZURE_OPTIONS, vm_image=GPU_IMAGE)
    bodies = azure_bodies(azure)
    cpu = VirtualMachine(bodies["flowrig-aq1-worker-cpu-1"]).properties
    t4 = VirtualMachine(bodies["flowrig-aq1-worker-t4-1"]).properties
    assert cpu.hardware_profile.vm_size == "Standard_DS1_v2"
    assert t4.hardware_profile.vm_size == "Standard_NC4as_T4_v3"
    assert t4.storage_profile.image_reference.offer == cpu.storage_profile.image_reference.offer == "ubuntu-hpc"
    cpu_role, t4_role = (cloudinit.parse(base64.b64decode(vm.os_profile.custom_data).decode()) for vm in (cpu, t4))
    assert t4_role.gpus and "flowrig-group-t4=1,GPU=1" in " ".join(t4_role.command)
    assert not cpu_role.gpus and "GPU=" not in " ".join(cpu_role.command)
    assert cloud.delete() == []


AZURE_GROUP_REFUSALS = {
    "gpu group on the run's cpu size": (
        (group("gpu", gpu=1),), {"vm_image": GPU_IMAGE},
        "[[cluster.worker_groups]] gpu: [cluster.options] vm_size = 'Standard_DS1_v2' has no GPU but gpu = 1: use "
        "an N-series GPU size"),
    "more gpus than its size has": (
        (group("cpu"), group("gpu", gpu=2, options={"worker_vm_size": "Standard_NC4as_T4_v3"})),
        {"vm_image": GPU_IMAGE},
        "[[cluster.worker_groups]] gpu options.worker_vm_size = 'Standard_NC4as_T4_v3' has 1 GPU but gpu = 2"),
    "no such size": (
        (group("big", options={"worker_vm_size": "Standard_Nope"}),), {},
        "[[cluster.worker_groups]] big options.worker_vm_size = 'Standard_Nope' is not a VM size of location "
        "westeurope"),
    "gpu group without a driver image": (
        (group("gpu", gpu=1, options={"worker_vm_size": "Standard_NC4as_T4_v3"}),), {},
        "[[cluster.worker_groups]] gpu gpu = 1 needs a boot image with NVIDIA's driver"),
}


@pytest.mark.parametrize("case", AZURE_GROUP_REFUSALS, ids=list(AZURE_GROUP_REFUSALS))
def test_azure_a_group_whose_size_cannot_hold_it_is_one_line_exit_2_before_anything_is_made(
        azure, tls, image_arch, case):
    groups, options, words = AZURE_GROUP_REFUSALS[case]
    message = refused_groups(AzureBackend, azure, tls, "aqx", groups, **AZURE_OPTIONS, **options)
    assert message.startswith(words), message


# --- preflight ---------------------------------------------------------------------------------
def test_preflight_checks_each_groups_type_for_its_gpus_and_makes_nothing(google, azure, image_arch):
    from flowrig.backends.preflight import PreflightPlan

    for backend, world, options, key, fits in (
        (GCPBackend, google, {**GCP_OPTIONS, "source_image": DLVM}, "worker_machine_type", "g2-standard-4"),
        (AzureBackend, azure, {**AZURE_OPTIONS, "vm_image": GPU_IMAGE}, "worker_vm_size", "Standard_NC4as_T4_v3"),
    ):
        cpu = group("cpu")
        checks = backend().preflight(PreflightPlan(image=IMAGE, options=options, groups=(cpu, group("gpu", gpu=1))))
        assert [(c.name, c.ok) for c in checks] == [("image", None), ("machine-type", False), ("network", None)]
        assert checks[1].line.startswith("[[cluster.worker_groups]] gpu: [cluster.options] "), checks[1].line
        assert "has no GPU but gpu = 1" in checks[1].line
        assert [c[0] for c in world.calls if c[0].endswith(CREATING)] == []
        good = group("gpu", gpu=1, options={key: fits})
        checks = backend().preflight(PreflightPlan(image=IMAGE, options=options, groups=(cpu, good)))
        assert [(c.name, c.ok) for c in checks] == [("image", None), ("machine-type", True), ("network", None)]
