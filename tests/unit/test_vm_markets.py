"""Spot VMs on Google Cloud and Azure, and ``spot = "fallback"``, at the SDK boundary of
tests/vm_fakes.py: the fake SDK clients record each request flowrig's own
code builds and refuse the ones a test says, as the clouds word a shortage.
"""

from __future__ import annotations

import logging

import pytest

from flowrig.backends.usage import ON_DEMAND, SPOT
from flowrig.backends.vm.azure import AzureOptions
from flowrig.backends.vm.gcp import GCPOptions
from flowrig.backends.vm.launcher import RoleSettings, VMLauncher
from flowrig.errors import InfrastructureError
from tests.vm_fakes import AZURE_OPTIONS, GCP_OPTIONS, azure_error, http_error

SCHEDULER = "tls://10.0.0.5:8786"


def launcher(cloud, run_id: str, spot) -> VMLauncher:
    settings = RoleSettings(run_id=run_id, image="ghcr.io/example/seed:1", spot=spot)
    return VMLauncher(cloud, settings, deadline=float("inf"))


# --- Google Cloud ------------------------------------------------------------------------
def gcp_cloud(run_id: str, **options):
    from flowrig.backends.vm.gcp_cloud import GCPCloud

    cloud = GCPCloud(run_id, GCPOptions(**{**GCP_OPTIONS, "tls": "baked", "registry_login": False, **options}))
    cloud.prepare(dashboard=False)
    return cloud


def inserted(world) -> list[dict]:
    return [call[1]["body"] for call in world.calls if call[0] == "compute.instances.insert"]


def test_gcp_spot_workers_are_spot_vms_deleted_when_taken_back_and_the_scheduler_is_not(google):
    cloud = gcp_cloud("gs1")
    vms = launcher(cloud, "gs1", True)
    vms.start_scheduler()
    started = vms.start_workers(SCHEDULER, 2)
    scheduler, *workers = inserted(google)
    assert "scheduling" not in scheduler
    for body in workers:
        assert body["scheduling"] == {"provisioningModel": "SPOT", "instanceTerminationAction": "DELETE",
                                      "automaticRestart": False, "onHostMaintenance": "TERMINATE"}
    assert {vms.placement(handle, "worker").market for handle in started.started.values()} == {SPOT}
    # Each Spot worker watches for its preemption notice and hands its work over first.
    assert [notice_of(body) for body in (scheduler, *workers)] == [None, "gcp", "gcp"]
    assert cloud.delete() == []


def notice_of(body: dict) -> str | None:
    """``FLOWRIG_SPOT_NOTICE`` of a GCP instance body's role, as its cloud-init holds it."""
    from flowrig.backends.vm import cloudinit
    from flowrig.roles import NOTICE_ENV

    [user_data] = [item["value"] for item in body["metadata"]["items"] if item["key"] == "user-data"]
    return cloudinit.parse(user_data).environment.get(NOTICE_ENV)


def test_gcp_fallback_creates_a_standard_vm_when_spot_has_no_room(google, caplog):
    cloud = gcp_cloud("gs2")
    vms = launcher(cloud, "gs2", "fallback")
    exhausted = http_error(503, "ZONE_RESOURCE_POOL_EXHAUSTED: The zone 'europe-west1-b' does not have enough "
                                "resources available to fulfill the request.")
    google.faults["compute.instances.insert"] = [exhausted]
    with caplog.at_level(logging.WARNING, logger="flowrig.vm"):
        started = vms.start_workers(SCHEDULER, 1)
    first, again = inserted(google)
    assert first["name"] == again["name"] == "flowrig-gs2-worker-1"
    assert first["scheduling"]["provisioningModel"] == "SPOT" and "scheduling" not in again
    assert (notice_of(first), notice_of(again)) == ("gcp", None)
    assert started.started == {"flowrig-gs2-worker-1": "flowrig-gs2-worker-1"} and started.refused == []
    [line] = [r.getMessage() for r in caplog.records]
    assert line.startswith("Compute Engine Spot had no capacity for 1 worker instance (Google Cloud refused creating "
                           "instance flowrig-gs2-worker-1: 503 ")
    assert "ZONE_RESOURCE_POOL_EXHAUSTED" in line
    assert line.endswith('asked for it on standard Compute Engine instead, as spot = "fallback" allows')
    assert vms.placement("flowrig-gs2-worker-1", "worker").market == ON_DEMAND
    assert cloud.delete() == []


def test_gcp_spot_without_fallback_is_refused_and_other_errors_still_raise(google):
    cloud = gcp_cloud("gs3")
    vms = launcher(cloud, "gs3", True)
    google.faults["compute.instances.insert"] = [http_error(403, "QUOTA_EXCEEDED: Quota 'PREEMPTIBLE_CPUS' exceeded")]
    started = vms.start_workers(SCHEDULER, 1)
    assert started.started == {} and "PREEMPTIBLE_CPUS" in started.refused[0]
    assert len(inserted(google)) == 1
    google.faults["compute.instances.insert"] = [http_error(400, "Invalid value for field 'resource.machineType'")]
    with pytest.raises(InfrastructureError, match="machineType"):
        launcher(cloud, "gs3", "fallback").start_workers(SCHEDULER, 1)
    assert cloud.delete() == []


# --- Azure -------------------------------------------------------------------------------
def azure_cloud(run_id: str):
    from flowrig.backends.vm.azure_cloud import AzureCloud

    cloud = AzureCloud(run_id, AzureOptions(**{**AZURE_OPTIONS, "tls": "baked"}))
    cloud.prepare(dashboard=False)
    return cloud


def vm_bodies(world) -> dict[str, dict]:
    return {call[1][1]: call[2]["body"] for call in world.calls
            if call[0] == "compute.Microsoft.Compute/virtualMachines.create"}


def test_azure_spot_workers_are_evicted_by_deletion_at_up_to_the_pay_as_you_go_price(azure):
    cloud = azure_cloud("as1")
    vms = launcher(cloud, "as1", True)
    vms.start_scheduler()
    vms.start_workers(SCHEDULER, 1)
    bodies = vm_bodies(azure)
    spot = bodies["flowrig-as1-worker-1"]["properties"]
    assert (spot["priority"], spot["evictionPolicy"], spot["billingProfile"]) == ("Spot", "Delete", {"maxPrice": -1})
    assert not {"priority", "evictionPolicy", "billingProfile"} & set(bodies["flowrig-as1-scheduler"]["properties"])
    # The SDK's own model reads the body as a Spot VM (a misspelt key would read as None).
    from azure.mgmt.compute.models import VirtualMachine

    read = VirtualMachine(bodies["flowrig-as1-worker-1"]).properties
    assert (read.priority, read.eviction_policy, read.billing_profile.max_price) == ("Spot", "Delete", -1)
    assert cloud.delete() == []


def test_azure_fallback_creates_a_regular_vm_when_spot_has_no_room(azure, caplog):
    cloud = azure_cloud("as2")
    vms = launcher(cloud, "as2", "fallback")
    azure.faults["compute.vm.create"] = [azure_error(409, "OverconstrainedAllocationRequest",
                                                     "Allocation failed. VM(s) with the following constraints "
                                                     "cannot be allocated")]
    with caplog.at_level(logging.WARNING, logger="flowrig.vm"):
        started = vms.start_workers(SCHEDULER, 1)
    assert started.started == {"flowrig-as2-worker-1": "flowrig-as2-worker-1"} and started.refused == []
    body = vm_bodies(azure)["flowrig-as2-worker-1"]["properties"]
    assert "priority" not in body
    [line] = [r.getMessage() for r in caplog.records]
    assert line.startswith("Azure Spot had no capacity for 1 worker VM (")
    assert "OverconstrainedAllocationRequest" in line
    assert line.endswith('asked for it on pay-as-you-go Azure instead, as spot = "fallback" allows')
    assert vms.placement("flowrig-as2-worker-1", "worker").market == ON_DEMAND
    assert cloud.delete() == []
