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


# --- a shortage told by the creation's long-running operation ---------------------------------
EXHAUSTED = ("ZONE_RESOURCE_POOL_EXHAUSTED", "The zone 'projects/proj-1/zones/europe-west1-b' does not have enough "
             "resources available to fulfill the request.")


def test_gcp_fallback_when_the_insert_operation_finds_no_spot_capacity(google, caplog):
    """The insert call returns; its operation ends in ZONE_RESOURCE_POOL_EXHAUSTED. With
    fallback the VM is told as moved (no failure) and its replacement is a standard VM."""
    cloud = gcp_cloud("gs4")
    vms = launcher(cloud, "gs4", "fallback")
    google.exhausted.append(EXHAUSTED)
    started = vms.start_workers(SCHEDULER, 2)
    assert set(started.started) == {"flowrig-gs4-worker-1", "flowrig-gs4-worker-2"} and started.refused == []
    seen = vms.observe(list(started.started.values()))
    lost = seen["flowrig-gs4-worker-1"]
    assert (lost.status, lost.moved) == ("stopped", True) and lost.reason.startswith("ZONE_RESOURCE_POOL_EXHAUSTED: ")
    assert (seen["flowrig-gs4-worker-2"].status, seen["flowrig-gs4-worker-2"].moved) == ("running", False)
    with caplog.at_level(logging.WARNING, logger="flowrig.vm"):
        again = vms.start_workers(SCHEDULER, 1, replacing=["flowrig-gs4-worker-1"])
    [name] = again.started
    body = {b["name"]: b for b in inserted(google)}[name]
    assert "scheduling" not in body and notice_of(body) is None
    assert vms.placement(again.started[name], "worker").market == ON_DEMAND
    [line] = [r.getMessage() for r in caplog.records]
    assert line == (f"Compute Engine Spot had no capacity for 1 worker instance ({lost.reason}): asked for it on "
                    'standard Compute Engine instead, as spot = "fallback" allows')
    assert cloud.delete() == []


def test_gcp_spot_only_or_a_standard_vm_short_of_room_is_a_failure_not_a_move(google):
    for spot in (True, "fallback"):
        cloud = gcp_cloud("gs5")
        vms = launcher(cloud, "gs5", spot)
        google.exhausted.append(EXHAUSTED)
        started = vms.start_workers(SCHEDULER, 1)
        [state] = vms.observe(list(started.started.values())).values()
        assert (state.status, state.moved) == ("stopped", spot == "fallback")
        assert cloud.delete() == []
    # An on-demand VM of a fallback run whose operation finds no room moves nowhere.
    cloud = gcp_cloud("gs6")
    vms = launcher(cloud, "gs6", "fallback")
    google.faults["compute.instances.insert"] = [http_error(503, "ZONE_RESOURCE_POOL_EXHAUSTED: no room")]
    first = vms.start_workers(SCHEDULER, 1)  # refused on Spot at the call: asked on-demand
    google.exhausted.append(EXHAUSTED)
    google.instances.clear()
    google.operations[cloud._operations["flowrig-gs6-worker-1"]]["error"] = {"errors": [
        {"code": EXHAUSTED[0], "message": EXHAUSTED[1]}]}
    [state] = vms.observe(list(first.started.values())).values()
    assert (state.status, state.moved) == ("stopped", False)
    assert cloud.delete() == []


def test_azure_fallback_when_the_vm_creation_fails_for_want_of_spot_capacity(azure, caplog):
    cloud = azure_cloud("as3")
    vms = launcher(cloud, "as3", "fallback")
    azure.allocation_failures.append(("AllocationFailed", "Allocation failed. We do not have sufficient capacity "
                                                          "for the requested VM size in this region."))
    started = vms.start_workers(SCHEDULER, 1)
    [state] = vms.observe(list(started.started.values())).values()
    assert (state.status, state.moved) == ("stopped", True)
    assert state.reason.startswith("provisioning failed (AllocationFailed): Allocation failed.")
    with caplog.at_level(logging.WARNING, logger="flowrig.vm"):
        again = vms.start_workers(SCHEDULER, 1, replacing=list(started.started.values()))
    [name] = again.started
    assert "priority" not in vm_bodies(azure)[name]["properties"]
    [line] = [r.getMessage() for r in caplog.records]
    assert line.startswith("Azure Spot had no capacity for 1 worker VM (provisioning failed (AllocationFailed): ")
    assert line.endswith('asked for it on pay-as-you-go Azure instead, as spot = "fallback" allows')
    # A Spot VM whose creation failed for another reason is the failure it is.
    azure.allocation_failures.append(("InternalExecutionError", "An internal execution error occurred."))
    other = vms.start_workers(SCHEDULER, 1)
    [state] = vms.observe(list(other.started.values())).values()
    assert (state.status, state.moved) == ("stopped", False)
    assert state.reason.startswith("provisioning failed (InternalExecutionError): ")
    assert cloud.delete() == []
