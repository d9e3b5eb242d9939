"""The ``azure`` and ``gcp`` backends at the SDK boundary, against the fake SDK clients of
tests/vm_fakes.py: waiting for a new identity, quota refusals, GCP label rules. Runs through
``VMBackend.start`` with a real TLS scheduler: tests/e2e/vm/test_vm_azure_gcp.py.
"""

from __future__ import annotations

import json

import pytest

from flowrig.backends.vm.azure import AzureOptions
from flowrig.backends.vm.gcp import GCPOptions
from flowrig.errors import InfrastructureError
from tests.vm_fakes import (
    AZURE_OPTIONS,
    GCP_OPTIONS,
    Failing,
    FakeKind,
    assert_azure_empty,
    assert_google_empty,
    azure_error,
    http_error,
)

pytestmark = pytest.mark.filterwarnings("ignore:Scheduler already contains a plugin")


def test_azure_waits_for_a_new_identity_but_a_missing_scope_is_an_error(azure):
    from flowrig.backends.vm.azure_cloud import AzureCloud

    cloud = AzureCloud("az10", AzureOptions(**AZURE_OPTIONS))
    cloud.prepare(dashboard=False)
    unknown = azure_error(400, "PrincipalNotFound", "Principal pid-of-the-run does not exist in the directory")
    azure.faults["arm.PUT"] = [unknown, unknown]
    assert cloud.store_certificates("line").endswith("/secrets/flowrig-az10-tls")
    assert len([p for p in azure.arm if "roleAssignments" in p]) == 1
    assert cloud.delete() == []

    cloud = AzureCloud("az11", AzureOptions(**AZURE_OPTIONS))
    cloud.prepare(dashboard=False)
    azure.faults["arm.PUT"] = azure_error(404, "ResourceNotFound", "the secret's scope does not exist")
    with pytest.raises(InfrastructureError, match="ResourceNotFound"):
        cloud.store_certificates("line")
    assert cloud.delete() == []
    assert_azure_empty(azure, "az11")


def test_azure_quota_refusal_is_a_refused_vm_not_an_error(azure):
    from flowrig.backends.vm.azure_cloud import AzureCloud
    from flowrig.backends.vm.cloud import VMRequest

    cloud = AzureCloud("az5", AzureOptions(**{**AZURE_OPTIONS, "tls": "baked"}))
    cloud.prepare(dashboard=False)
    azure.faults["compute.vm.create"] = azure_error(409, "OperationNotAllowed", "quota of cores exceeded")
    created = cloud.create([VMRequest("flowrig-az5-worker-1", "worker", "#cloud-config\n")])
    assert created.started == {} and "quota of cores exceeded" in created.refused[0]
    assert cloud.delete() == []


@pytest.mark.parametrize("kind", ["networkInterfaces", "publicIPAddresses"])
def test_azure_a_nic_or_address_whose_creation_failed_half_way_is_deleted(azure, monkeypatch, kind):
    """ARM makes the resource before its operation can fail: it is in the ledger from the
    call that began making it, so teardown deletes it."""
    from flowrig.backends.vm.azure_cloud import AzureCloud
    from flowrig.backends.vm.cloud import VMRequest

    begin = FakeKind.begin_create_or_update

    def half_made(self, group, name, body):
        made = begin(self, group, name, body)
        if self.kind.endswith(kind):
            return Failing(azure_error(500, "InternalServerError", f"provisioning {name} failed"))
        return made

    monkeypatch.setattr(FakeKind, "begin_create_or_update", half_made)
    cloud = AzureCloud("az12", AzureOptions(**{**AZURE_OPTIONS, "tls": "baked", "use_private_ip": False}))
    cloud.prepare(dashboard=False)
    with pytest.raises(InfrastructureError, match="provisioning flowrig-az12-worker-1-.* failed"):
        cloud.create([VMRequest("flowrig-az12-worker-1", "worker", "#cloud-config\n")])
    assert [k for k, _ in azure.held if k.endswith(kind)] == [f"Microsoft.Network/{kind}"]
    assert cloud.delete() == []
    assert [key for key, value in azure.held.items() if "az12" in json.dumps(value)] == []


def test_gcp_waits_for_a_new_service_account_to_be_known(google):
    from flowrig.backends.vm.gcp_cloud import GCPCloud

    cloud = GCPCloud("gc4", GCPOptions(**GCP_OPTIONS))
    cloud.prepare(dashboard=False)
    unknown = f"Service account {cloud.account_email} does not exist."
    google.faults["secretmanager.projects.secrets.setIamPolicy"] = [http_error(400, unknown)] * 2
    assert cloud.store_certificates("line") == "projects/proj-1/secrets/flowrig-gc4-tls"
    assert [c[0] for c in google.calls].count("secretmanager.projects.secrets.setIamPolicy") == 3
    assert cloud.delete() == []
    assert_google_empty(google)


def test_gcp_labels_follow_the_label_rules():
    from flowrig.backends.vm.gcp_clients import gcp_labels

    labels = gcp_labels({"Cost Centre": "R&D", "9lives": "x", "k" * 80: "V" * 80})
    assert labels["cost_centre"] == "r_d" and labels["k9lives"] == "x"
    assert labels["k" * 63] == "v" * 63
