"""The ``azure`` and ``gcp`` backends at the SDK boundary: every SDK client is a fake that
records each call and keeps the resources it was asked to make.

The fakes stand in for the SDK's own clients (``ComputeManagementClient``,
``NetworkManagementClient``, ``SecretClient``, ``DefaultAzureCredential``; googleapiclient's
``build`` and ``google.auth.default``), so flowrig's real code builds every request.
A run goes through the real ``VMBackend.start``: ``scheduler_address`` names a real
mutual-TLS scheduler on loopback whose in-process worker stands in for the worker VM the
fake reports RUNNING. What the tests check is what the cloud would hold: network rules,
the identity, tags or labels, user data, the secret and who may read it, and that
nothing is left after the run, also when the start fails half-way.

Cases that need none of these are in tests/unit/test_vm_azure_gcp.py; the fakes in tests/vm_fakes.py.
"""

from __future__ import annotations

import base64
import json
import sys

import pytest
from azure.keyvault.secrets import SecretClient as REAL_SECRET_CLIENT  # before the fixtures replace them
from googleapiclient.discovery import build as REAL_BUILD

from flowrig.backends.base import ClusterSpec
from flowrig.backends.vm import cloudinit
from flowrig.backends.vm.azure import AzureBackend, AzureOptions
from flowrig.backends.vm.gcp import GCPBackend, GCPOptions
from flowrig.certs import delivery
from flowrig.certs.scan import private_keys_in_bytes
from flowrig.errors import BadInput, InfrastructureError
from flowrig.project.sizing import ClusterSize
from tests.net_support import silent_loopback_port
from tests.tls_support import local_scheduler
from tests.vm_fakes import (
    AZURE_OPTIONS,
    GCP_OPTIONS,
    GREPO,
    GROUP_PATH,
    REGISTRIES,
    REGISTRY_ID,
    REPOSITORY_POLICY,
    SUB,
    VAULT_ID,
    assert_azure_empty,
    assert_google_empty,
    azure_error,
    http_error,
)

IMAGE = "flowrigruns.azurecr.io/seed:run-image"
GIMAGE = "europe-west1-docker.pkg.dev/proj-1/runs/seed:run-image"
ACR_PULL = "7f951dda-4ed3-4680-a7ca-43fe172d538d"
SECRETS_USER = "4633458b-17de-408a-b874-0445c86b69e6"
PUBLIC_IMAGE = "ghcr.io/example/seed:run-image"
pytestmark = pytest.mark.filterwarnings("ignore:Scheduler already contains a plugin")


def spec(tls, run_id, image=IMAGE, **options) -> ClusterSpec:
    return ClusterSpec(
        run_id=run_id, size=ClusterSize(1), tls=tls, image=image,
        worker_env={"PREFECT_API_URL": "https://10.0.0.5:4200/api", "FLOWRIG_RUN_ID": run_id},
        options=options, worker_threads=2,
    )


def assert_no_key_material(calls, tls, allowed) -> None:
    """No recorded call but ``allowed`` (the secret's write) carries the leaf key."""
    for call in calls:
        if call is allowed:
            continue
        text = json.dumps(call, default=str)
        assert not list(private_keys_in_bytes(text.encode())), call[0]
        assert delivery.encode(tls).decode().strip() not in text, call[0]
        for line in tls.key_pem.decode().splitlines()[1:-1]:
            assert line not in text, call[0]


def role_of(user_data: str, run_id: str, image: str, ref: str, source: str):
    assert not list(private_keys_in_bytes(user_data.encode()))
    role = cloudinit.parse(user_data)
    assert (role.run_id, role.image, role.tls.source, role.tls.ref) == (run_id, image, source, ref)
    return role


# --- Azure: the fake SDK --------------------------------------------------------------


def test_azure_run_creates_private_tagged_resources_readable_by_the_run_and_removes_them(azure, tls):
    import copy

    import dask

    run_id = "az1"
    with local_scheduler(tls, workers=1) as scheduler:
        config_before = copy.deepcopy(dask.config.config)
        started = AzureBackend().start(
            spec(tls, run_id, **AZURE_OPTIONS, scheduler_address=scheduler.scheduler_address))
        # The run's TLS lives in its Security object: the runner's dask.config is untouched.
        assert dask.config.config == config_before
        try:
            assert started.scheduler_address == scheduler.scheduler_address
            nsg = azure.held[("Microsoft.Network/networkSecurityGroups", f"flowrig-{run_id}")]
            rules = [r["properties"] for r in nsg["properties"]["securityRules"]]
            assert [(r["destinationPortRange"], r["sourceAddressPrefix"], r["access"], r["direction"])
                    for r in rules] == [("8786", "VirtualNetwork", "Allow", "Inbound")]

            identity_path = (f"{GROUP_PATH}/providers/Microsoft.ManagedIdentity/"
                             f"userAssignedIdentities/flowrig-{run_id}")
            assert azure.arm[identity_path]["tags"]["flowrig-run-id"] == run_id
            secret_scope = f"{VAULT_ID}/secrets/flowrig-{run_id}-tls"
            # Two grants to the run's identity alone: its secret, and pulling from the image's registry.
            grants = {path.split("/providers/Microsoft.Authorization/roleAssignments/")[0]: body["properties"]
                      for path, body in azure.arm.items() if "roleAssignments" in path}
            assert set(grants) == {secret_scope, REGISTRY_ID}
            assert {g["principalId"] for g in grants.values()} == {"pid-of-the-run"}
            assert grants[secret_scope]["roleDefinitionId"] == \
                f"/subscriptions/{SUB}/providers/Microsoft.Authorization/roleDefinitions/{SECRETS_USER}"
            assert grants[REGISTRY_ID]["roleDefinitionId"] == \
                f"/subscriptions/{SUB}/providers/Microsoft.Authorization/roleDefinitions/{ACR_PULL}"
            assert {g["principalType"] for g in grants.values()} == {"ServicePrincipal"}
            secret = azure.secrets[f"flowrig-{run_id}-tls"]
            assert secret["value"] == delivery.encode(tls).decode().strip()
            assert secret["tags"]["flowrig-run-id"] == run_id

            [vm_name] = azure.names("Microsoft.Compute/virtualMachines")
            assert vm_name == f"flowrig-{run_id}-worker-1"
            vm = azure.held[("Microsoft.Compute/virtualMachines", vm_name)]
            assert vm["identity"] == {"type": "UserAssigned", "userAssignedIdentities": {identity_path: {}}}
            assert vm["properties"]["hardwareProfile"] == {"vmSize": "Standard_DS1_v2"}
            os_profile = vm["properties"]["osProfile"]
            assert os_profile["linuxConfiguration"]["disablePasswordAuthentication"] is True
            assert "adminPassword" not in os_profile
            user_data = base64.b64decode(os_profile["customData"]).decode()
            role = role_of(user_data, run_id, IMAGE, f"https://runs-vault.vault.azure.net/secrets/flowrig-{run_id}-tls",
                           "azure-keyvault")
            assert role.role == "worker" and role.command[:2] == ("worker", scheduler.scheduler_address)
            assert role.registry is not None and role.registry.kind == "acr"
            nic = azure.held[("Microsoft.Network/networkInterfaces", f"{vm_name}-nic")]
            [config] = nic["properties"]["ipConfigurations"]
            assert "publicIPAddress" not in config["properties"]
            assert nic["properties"]["networkSecurityGroup"]["id"] == nsg["id"]
            for resource in (nsg, nic, vm, azure.arm[identity_path]):
                assert resource["tags"]["flowrig-run-id"] == run_id and resource["tags"]["team"] == "data"
            assert azure.names("Microsoft.Network/publicIPAddresses") == []
        finally:
            started.close()
    assert_azure_empty(azure, run_id)
    order = [c[0] for c in azure.calls if c[0].endswith(("delete", "DELETE", "purge"))]
    assert order.index("compute.Microsoft.Compute/virtualMachines.delete") < order.index(
        "network.Microsoft.Network/networkInterfaces.delete") < order.index(
        "network.Microsoft.Network/networkSecurityGroups.delete")
    deletes = [c[1][0] for c in azure.calls if c[0] == "arm.DELETE"]
    assert [p.startswith(REGISTRY_ID) for p in deletes if "roleAssignments" in p] == [True, False]
    assert "userAssignedIdentities" in deletes[-1]
    # The registry's lookup followed ARM's pages; each call names its API version.
    lookups = [c for c in azure.calls if c[0] == "arm.GET" and c[1][0] == REGISTRIES]
    assert len(lookups) == 2 and all(c[2]["query"]["api-version"] == ["2023-07-01"] for c in lookups)
    assert_no_key_material(azure.calls, tls, azure.secret_write)


def test_azure_start_failing_half_way_removes_everything(azure, tls):
    azure.faults["compute.vm.create"] = azure_error(400, "InvalidParameter", "vmSize is not valid")
    with local_scheduler(tls, workers=1) as scheduler:
        with pytest.raises(InfrastructureError) as failed:
            AzureBackend().start(spec(tls, "az2", **AZURE_OPTIONS, scheduler_address=scheduler.scheduler_address))
    assert "InvalidParameter" in str(failed.value) and "\n" not in str(failed.value)
    assert_azure_empty(azure, "az2")
    assert azure.names("Microsoft.Network/networkInterfaces") == []


def test_azure_image_in_a_registry_outside_the_subscription_is_one_line_bad_input(azure, tls):
    image = "elsewhere.azurecr.io/seed:run-image"
    with pytest.raises(BadInput) as failed:
        AzureBackend().start(spec(tls, "azr1", image=image, **AZURE_OPTIONS, scheduler_address="tls://127.0.0.1:1"))
    message = str(failed.value)
    assert "container registry elsewhere.azurecr.io is not in subscription " + SUB in message
    assert "registry_login = false" in message and "subscription_id" in message and "\n" not in message
    assert failed.value.exit_code == 2
    assert [c for c in azure.calls if c[0] == "arm.GET" and c[1][0] == REGISTRIES]
    assert not [c for c in azure.calls if c[0] == "arm.PUT" and c[1][0].startswith(REGISTRY_ID)]
    assert_azure_empty(azure, "azr1")
    assert azure.arm == {}


@pytest.mark.parametrize("image, options", [(PUBLIC_IMAGE, {}), (IMAGE, {"registry_login": False})])
def test_azure_public_image_or_no_registry_login_grants_nothing_on_a_registry(azure, tls, image, options):
    run_id = "azr2"
    with local_scheduler(tls, workers=1) as scheduler:
        started = AzureBackend().start(spec(tls, run_id, image=image, **AZURE_OPTIONS, **options,
                                            scheduler_address=scheduler.scheduler_address))
        try:
            grants = [path for path in azure.arm if "roleAssignments" in path]
            assert [p.startswith(f"{VAULT_ID}/secrets/") for p in grants] == [True]
            vm = azure.held[("Microsoft.Compute/virtualMachines", f"flowrig-{run_id}-worker-1")]
            user_data = base64.b64decode(vm["properties"]["osProfile"]["customData"]).decode()
            assert cloudinit.parse(user_data).registry is None
        finally:
            started.close()
    assert not [c for c in azure.calls if c[0] == "arm.GET" and c[1][0] == REGISTRIES]
    assert_azure_empty(azure, run_id)


def test_azure_vault_with_access_policies_is_refused_and_nothing_stays(azure, tls):
    azure.rbac = False
    with pytest.raises(BadInput, match="access policies.*Azure RBAC"):
        AzureBackend().start(spec(tls, "az3", **AZURE_OPTIONS, scheduler_address="tls://127.0.0.1:1"))
    assert [k for k in azure.held if k[0] != "Microsoft.Network/virtualNetworks/subnets"] == []
    assert azure.arm == {}


def test_azure_dashboard_public_address_and_states(azure):
    from flowrig.backends.vm.azure_cloud import AzureCloud
    from flowrig.backends.vm.cloud import VMRequest

    options = AzureOptions(**{**AZURE_OPTIONS, "dashboard": True, "use_private_ip": False, "tls": "baked",
                              "scheduler_vm_size": "Standard_D4s_v5"})
    cloud = AzureCloud("az4", options)
    cloud.prepare(dashboard=True)
    nsg = azure.held[("Microsoft.Network/networkSecurityGroups", "flowrig-az4")]
    rules = [r["properties"] for r in nsg["properties"]["securityRules"]]
    assert sorted(r["destinationPortRange"] for r in rules) == ["8786", "8787"]
    assert {r["sourceAddressPrefix"] for r in rules} == {"VirtualNetwork"}
    created = cloud.create([VMRequest("flowrig-az4-scheduler", "scheduler", "#cloud-config\n")])
    assert created.started == {"flowrig-az4-scheduler": "flowrig-az4-scheduler"}
    vm = azure.held[("Microsoft.Compute/virtualMachines", "flowrig-az4-scheduler")]
    assert vm["properties"]["hardwareProfile"] == {"vmSize": "Standard_D4s_v5"}
    assert "flowrig-az4-scheduler-ip" in azure.names("Microsoft.Network/publicIPAddresses")
    assert cloud.private_address("flowrig-az4-scheduler") == "10.1.0.4"
    assert cloud.observe(["flowrig-az4-scheduler"])["flowrig-az4-scheduler"].status == "running"
    azure.power = "PowerState/deallocated"
    assert cloud.observe(["flowrig-az4-scheduler"])["flowrig-az4-scheduler"].reason == "the VM is deallocated"
    cloud.terminate(["flowrig-az4-scheduler"])
    assert cloud.observe(["flowrig-az4-scheduler"])["flowrig-az4-scheduler"].status == "stopped"
    assert cloud.delete() == []
    assert [k for k in azure.held if k[0] != "Microsoft.Network/virtualNetworks/subnets"] == []
    assert azure.arm == {}


def test_azure_scheduler_vm_out_of_reach_fails_in_time_and_leaves_nothing(azure, tls, monkeypatch):
    options = {**AZURE_OPTIONS, "scheduler_vm_size": "Standard_D2s_v5", "reach_timeout": 2}
    with silent_loopback_port() as port:
        # The scheduler VM's address: a loopback port where nothing answers.
        azure.private_ip = "127.0.0.1"
        monkeypatch.setattr("flowrig.backends.vm.launcher.SCHEDULER_PORT", port)
        with pytest.raises(InfrastructureError, match=f"cannot reach the scheduler VM at 127.0.0.1:{port}"):
            AzureBackend().start(spec(tls, "az6", **options))
    [create] = [c for c in azure.calls if c[0] == "compute.Microsoft.Compute/virtualMachines.create"]
    body = create[2]["body"]
    assert create[1][1] == "flowrig-az6-scheduler"
    assert body["properties"]["hardwareProfile"] == {"vmSize": "Standard_D2s_v5"}
    role = role_of(base64.b64decode(body["properties"]["osProfile"]["customData"]).decode(), "az6", IMAGE,
                   "https://runs-vault.vault.azure.net/secrets/flowrig-az6-tls", "azure-keyvault")
    assert role.role == "scheduler" and "--no-dashboard" in role.command
    assert_azure_empty(azure, "az6")


def test_azure_teardown_retries_what_is_in_use_and_reports_what_stays(azure):
    from flowrig.backends.vm.azure_cloud import AzureCloud

    cloud = AzureCloud("az7", AzureOptions(**{**AZURE_OPTIONS, "tls": "baked", "cleanup_timeout": 2}))
    cloud.prepare(dashboard=False)
    in_use = azure_error(400, "InUseNetworkSecurityGroupCannotBeDeleted", "in use by a NIC")
    azure.faults["network.Microsoft.Network/networkSecurityGroups.delete"] = [in_use, in_use]
    assert cloud.delete() == []
    assert [c[0] for c in azure.calls].count("network.Microsoft.Network/networkSecurityGroups.delete") == 3

    cloud = AzureCloud("az8", AzureOptions(**{**AZURE_OPTIONS, "tls": "baked", "cleanup_timeout": 1}))
    cloud.prepare(dashboard=False)
    azure.faults["network.Microsoft.Network/networkSecurityGroups.delete"] = azure_error(403, "AuthorizationFailed")
    assert cloud.delete() == ["network-security-group flowrig-az8"]
    # The NSG staying does not keep the identity, deleted after it, from going.
    assert azure.arm == {}


def test_azure_without_credentials_is_bad_input(azure, tls):
    from azure.core.exceptions import ClientAuthenticationError

    azure.faults["network.Microsoft.Network/virtualNetworks/subnets.get"] = ClientAuthenticationError(
        "DefaultAzureCredential failed to retrieve a token")
    with pytest.raises(BadInput, match="no usable Azure credentials.*az login"):
        AzureBackend().start(spec(tls, "az9", **AZURE_OPTIONS))


@pytest.mark.parametrize(
    "changes, words",
    [
        ({"resource_group": None}, "needs [cluster.options] resource_group"),
        ({"location": None}, "needs [cluster.options] location"),
        ({"location": "West Europe"}, "location = 'West Europe' is not a location"),
        ({"key_vault": None}, "set key_vault in [cluster.options]"),
        ({"vnet": None}, "needs [cluster.options] vnet"),
    ],
)
def test_azure_bad_options_are_one_line_bad_input(azure, tls, changes, words):
    options = {k: v for k, v in {**AZURE_OPTIONS, **changes}.items() if v is not None}
    with pytest.raises(BadInput) as failed:
        AzureBackend().start(spec(tls, "azbad", **options, scheduler_address="tls://127.0.0.1:1"))
    assert words in str(failed.value) and "\n" not in str(failed.value)
    assert failed.value.exit_code == 2
    assert [k for k in azure.held if k[0] != "Microsoft.Network/virtualNetworks/subnets"] == []


def test_azure_without_a_subscription_is_bad_input(azure, tls, monkeypatch):
    monkeypatch.delenv("AZURE_SUBSCRIPTION_ID")
    with pytest.raises(BadInput, match="no Azure subscription: set subscription_id"):
        AzureBackend().start(spec(tls, "azsub", **AZURE_OPTIONS))
    assert azure.calls == []


# --- Google Cloud: the fake SDK --------------------------------------------------------


def test_gcp_run_creates_private_labelled_resources_readable_by_the_run_and_removes_them(google, tls):
    run_id = "gc1"
    tag, account = f"flowrig-{run_id}", f"flowrig-{run_id}@proj-1.iam.gserviceaccount.com"
    with local_scheduler(tls, workers=1) as scheduler:
        started = GCPBackend().start(
            spec(tls, run_id, image=GIMAGE, **GCP_OPTIONS, scheduler_address=scheduler.scheduler_address))
        try:
            builds = [c[1] for c in google.calls if c[0] == "build"]
            assert {(b["name"], b["version"], b["cache_discovery"]) for b in builds} == {
                ("compute", "v1", False), ("secretmanager", "v1", False), ("iam", "v1", False),
                ("artifactregistry", "v1", False)}
            dask, internal = google.firewalls[f"{tag}-dask"], google.firewalls[f"{tag}-internal"]
            assert dask["sourceRanges"] == ["10.132.0.0/20"] and "sourceTags" not in dask
            assert dask["allowed"] == [{"IPProtocol": "tcp", "ports": ["8786"]}]
            assert internal["sourceTags"] == [tag] and "sourceRanges" not in internal
            assert dask["targetTags"] == internal["targetTags"] == [tag]
            assert dask["network"] == "projects/proj-1/global/networks/default"
            assert run_id in dask["description"] and run_id in internal["description"]
            assert list(google.accounts) == [account]

            secret_name = f"projects/proj-1/secrets/flowrig-{run_id}-tls"
            secret = google.secrets[secret_name]
            assert secret["labels"]["flowrig-run-id"] == run_id
            assert [base64.b64decode(v).decode() for v in secret["versions"]] == [
                delivery.encode(tls).decode().strip()]
            assert secret["policy"] == {"bindings": [{"role": "roles/secretmanager.secretAccessor",
                                                      "members": [f"serviceAccount:{account}"]}]}
            # The run's account joins the repository's unconditional reader binding; nothing else changes.
            [reader, conditional, writer] = google.repositories[GREPO]["bindings"]
            assert reader == {"role": "roles/artifactregistry.reader",
                              "members": ["group:data@example.com", f"serviceAccount:{account}"]}
            assert [conditional, writer] == REPOSITORY_POLICY["bindings"][1:]
            assert google.repositories[GREPO]["version"] == 3
            reads = [c[1] for c in google.calls if c[0].endswith("repositories.getIamPolicy")]
            assert reads == [{"resource": GREPO, "options_requestedPolicyVersion": 3}]

            [instance] = google.instances.values()
            assert instance["name"] == f"flowrig-{run_id}-worker-1"
            assert instance["labels"] == {"team_name": "data_ml", "flowrig-run-id": run_id,
                                          "createdby": "flowrig", "flowrig-role": "worker"}
            assert instance["tags"] == {"items": [tag]}
            assert "accessConfigs" not in instance["networkInterfaces"][0]
            assert instance["networkInterfaces"][0]["subnetwork"] == \
                "projects/proj-1/regions/europe-west1/subnetworks/default"
            assert instance["serviceAccounts"] == [
                {"email": account, "scopes": ["https://www.googleapis.com/auth/cloud-platform"]}]
            assert instance["machineType"] == "zones/europe-west1-b/machineTypes/n1-standard-1"
            [disk] = instance["disks"]
            assert disk["autoDelete"] and disk["initializeParams"]["diskSizeGb"] == "50"
            assert disk["initializeParams"]["sourceImage"].endswith("ubuntu-2404-lts-amd64")
            [item] = instance["metadata"]["items"]
            assert item["key"] == "user-data"
            role = role_of(item["value"], run_id, GIMAGE, secret_name, "gcp-secret")
            assert role.role == "worker" and role.registry is not None and role.registry.kind == "gar"
        finally:
            started.close()
    assert_google_empty(google)
    deletes = [c[0] for c in google.calls if c[0].endswith((".delete", "setIamPolicy"))]
    assert deletes.index("compute.instances.delete") < deletes.index("secretmanager.projects.secrets.delete") \
        < deletes.index("iam.projects.serviceAccounts.delete") < deletes.index("compute.firewalls.delete")
    # The binding goes before the account it names (a deleted account stays in a policy as deleted:...).
    assert len(deletes) - 1 - deletes[::-1].index("artifactregistry.projects.locations.repositories.setIamPolicy") \
        < deletes.index("iam.projects.serviceAccounts.delete")
    assert_no_key_material(google.calls, tls, google.secret_write)


def test_gcp_start_failing_half_way_removes_everything(google, tls):
    google.faults["compute.instances.insert"] = http_error(400, "Invalid value for field machineType")
    with local_scheduler(tls, workers=1) as scheduler:
        with pytest.raises(InfrastructureError) as failed:
            GCPBackend().start(spec(tls, "gc2", image=GIMAGE, **GCP_OPTIONS,
                                    scheduler_address=scheduler.scheduler_address))
    assert "machineType" in str(failed.value) and "\n" not in str(failed.value)
    assert_google_empty(google)
    assert [c[0] for c in google.calls].count("iam.projects.serviceAccounts.delete") == 1


def test_gcp_image_in_a_repository_that_is_not_there_is_one_line_bad_input(google, tls):
    image = "europe-west1-docker.pkg.dev/proj-1/missing/seed:run-image"
    with pytest.raises(BadInput) as failed:
        GCPBackend().start(spec(tls, "gcr1", image=image, **GCP_OPTIONS, scheduler_address="tls://127.0.0.1:1"))
    message = str(failed.value)
    assert "repository projects/proj-1/locations/europe-west1/repositories/missing (404" in message
    assert "registry_login = false" in message and "\n" not in message
    assert failed.value.exit_code == 2
    assert not [c for c in google.calls if c[0].endswith("repositories.setIamPolicy")]
    assert_google_empty(google)
    assert [c[0] for c in google.calls].count("iam.projects.serviceAccounts.delete") == 1


def test_gcp_grant_waits_for_the_new_account_and_rereads_a_policy_changed_meanwhile(google):
    from flowrig.backends.vm.gcp_cloud import GCPCloud

    cloud = GCPCloud("gcr2", GCPOptions(**GCP_OPTIONS, tls="baked"))
    cloud.prepare(dashboard=False)
    member = f"serviceAccount:{cloud.account_email}"
    sets = "artifactregistry.projects.locations.repositories.setIamPolicy"
    google.faults[sets] = [http_error(400, f"Service account {cloud.account_email} does not exist.")]
    # After the second read someone else writes the policy: the run's write names a stale etag.
    real_get = google.artifactregistry_projects_locations_repositories_getIamPolicy
    writes_between = [{"role": "roles/artifactregistry.reader", "members": ["user:new@example.com"]}]
    reads = []

    def get_then_someone_writes(resource, options_requestedPolicyVersion):
        policy = real_get(resource, options_requestedPolicyVersion)
        reads.append(resource)
        if len(reads) == 2:
            held = google.repositories[resource]
            google.repositories[resource] = {**held, "etag": held["etag"] + "!",
                                             "bindings": [*held["bindings"], writes_between.pop()]}
        return policy

    google.artifactregistry_projects_locations_repositories_getIamPolicy = get_then_someone_writes
    cloud.allow_registry(cloudinit.RegistryLogin(kind="gar", host="europe-west1-docker.pkg.dev"), GIMAGE)
    bindings = google.repositories[GREPO]["bindings"]
    assert bindings[0]["members"] == ["group:data@example.com", member]
    assert bindings[-1] == {"role": "roles/artifactregistry.reader", "members": ["user:new@example.com"]}
    assert [c[0] for c in google.calls].count(sets) == 3  # unknown account, stale etag, then written
    assert len(reads) == 3
    assert cloud.delete() == []
    assert google.repositories[GREPO]["bindings"] == [*REPOSITORY_POLICY["bindings"], bindings[-1]]


def test_gcp_binding_gone_already_or_repository_deleted_is_a_clean_teardown(google):
    from flowrig.backends.vm.gcp_cloud import GCPCloud

    login = cloudinit.RegistryLogin(kind="gar", host="europe-west1-docker.pkg.dev")
    cloud = GCPCloud("gcr3", GCPOptions(**GCP_OPTIONS, tls="baked"))
    cloud.prepare(dashboard=False)
    cloud.allow_registry(login, GIMAGE)
    google.repositories[GREPO] = {**google.repositories[GREPO], "bindings": REPOSITORY_POLICY["bindings"]}
    writes = [c for c in google.calls if c[0].endswith("repositories.setIamPolicy")]
    assert cloud.delete() == []
    assert [c for c in google.calls if c[0].endswith("repositories.setIamPolicy")] == writes  # nothing to remove

    cloud = GCPCloud("gcr4", GCPOptions(**GCP_OPTIONS, tls="baked"))
    cloud.prepare(dashboard=False)
    cloud.allow_registry(login, GIMAGE)
    del google.repositories[GREPO]
    assert cloud.delete() == []
    assert (google.accounts, google.firewalls) == ({}, {})


@pytest.mark.parametrize("image, options", [(PUBLIC_IMAGE, {}), ("k8s.gcr.io/pause:3.9", {}),
                                            (GIMAGE, {"registry_login": False})])
def test_gcp_public_image_or_no_registry_login_grants_nothing_on_a_repository(google, tls, image, options):
    with local_scheduler(tls, workers=1) as scheduler:
        started = GCPBackend().start(spec(tls, "gcr5", image=image, **GCP_OPTIONS, **options,
                                          scheduler_address=scheduler.scheduler_address))
        try:
            [instance] = google.instances.values()
            assert cloudinit.parse(instance["metadata"]["items"][0]["value"]).registry is None
        finally:
            started.close()
    assert not [c for c in google.calls if c[0].startswith("artifactregistry.") or c[1].get("name") == "artifactregistry"]
    assert_google_empty(google)


@pytest.mark.parametrize(
    "image, repository",
    [
        (GIMAGE, GREPO),
        ("us-docker.pkg.dev/proj-1/runs/team/seed@sha256:" + "a" * 64, "projects/proj-1/locations/us/repositories/runs"),
        ("europe-west4-docker.pkg.dev/example.com/proj/runs/seed:1",
         "projects/example.com:proj/locations/europe-west4/repositories/runs"),
        ("gcr.io/proj-1/seed:1", "projects/proj-1/locations/us/repositories/gcr.io"),
        ("eu.gcr.io/proj-1/team/seed", "projects/proj-1/locations/europe/repositories/eu.gcr.io"),
        ("asia.gcr.io/proj-1/seed", "projects/proj-1/locations/asia/repositories/asia.gcr.io"),
    ],
)
def test_gcp_image_names_its_artifact_registry_repository(image, repository):
    from flowrig.backends.vm.gcp_cloud import artifact_repository

    assert GCPBackend.registry_login(image) is not None
    assert artifact_repository(image) == repository


@pytest.mark.parametrize("image", ["europe-west1-docker.pkg.dev/proj-1/seed", "gcr.io/seed", "k8s.gcr.io/pause"])
def test_gcp_image_without_project_and_repository_is_one_line_bad_input(image):
    from flowrig.backends.vm.gcp_cloud import artifact_repository

    with pytest.raises(BadInput) as failed:
        artifact_repository(image)
    assert image in str(failed.value) and "registry_login = false" in str(failed.value)
    assert "\n" not in str(failed.value)


def test_gcp_dashboard_external_address_states_and_missing_instances(google):
    from flowrig.backends.vm.cloud import VMRequest
    from flowrig.backends.vm.gcp_cloud import GCPCloud

    options = GCPOptions(**{**GCP_OPTIONS, "projectid": "proj-2", "use_private_ip": False, "tls": "baked",
                            "scheduler_machine_type": "n2-standard-4", "subnetwork": "runs"})
    cloud = GCPCloud("gc3", options)
    cloud.prepare(dashboard=True)
    assert google.firewalls["flowrig-gc3-dask"]["allowed"] == [{"IPProtocol": "tcp", "ports": ["8786", "8787"]}]
    cloud.create([VMRequest("flowrig-gc3-scheduler", "scheduler", "#cloud-config\n")])
    instance = google.instances["flowrig-gc3-scheduler"]
    assert instance["machineType"].endswith("/n2-standard-4")
    assert instance["networkInterfaces"][0]["accessConfigs"] == [{"type": "ONE_TO_ONE_NAT", "name": "External NAT"}]
    assert cloud.private_address("flowrig-gc3-scheduler") == "10.132.0.7"
    for status, state in (("STAGING", "pending"), ("RUNNING", "running"), ("TERMINATED", "stopped")):
        google.status = status
        assert cloud.observe(["flowrig-gc3-scheduler"])["flowrig-gc3-scheduler"].status == state
    google.instances.clear()
    google.operations[cloud._operations["flowrig-gc3-scheduler"]]["error"] = {
        "errors": [{"code": "ZONE_RESOURCE_POOL_EXHAUSTED", "message": "no n2 left in europe-west1-b"}]}
    missing = cloud.observe(["flowrig-gc3-scheduler"])["flowrig-gc3-scheduler"]
    assert missing == type(missing)("stopped", "ZONE_RESOURCE_POOL_EXHAUSTED: no n2 left in europe-west1-b")
    assert cloud.delete() == []
    assert_google_empty(google)


def test_gcp_without_credentials_is_bad_input(tls, monkeypatch):
    import google.auth
    from google.auth.exceptions import DefaultCredentialsError

    def no_credentials(scopes=None):
        raise DefaultCredentialsError("Your default credentials were not found.")

    monkeypatch.setattr(google.auth, "default", no_credentials)
    with pytest.raises(BadInput, match="no usable Google credentials.*gcloud auth application-default login"):
        GCPBackend().start(spec(tls, "gcc", image=GIMAGE, **GCP_OPTIONS))


@pytest.mark.parametrize(
    "changes, project, words",
    [
        ({"zone": None}, "proj-1", "needs [cluster.options] zone"),
        ({"zone": "europe-west1"}, "proj-1", "zone = 'europe-west1' is not a zone"),
        ({}, None, "no Google Cloud project: set projectid"),
    ],
)
def test_gcp_bad_options_are_one_line_bad_input(google, tls, changes, project, words):
    google.project = project
    options = {k: v for k, v in {**GCP_OPTIONS, **changes}.items() if v is not None}
    with pytest.raises(BadInput) as failed:
        GCPBackend().start(spec(tls, "gcbad", image=GIMAGE, **options, scheduler_address="tls://127.0.0.1:1"))
    assert words in str(failed.value) and "\n" not in str(failed.value)
    assert failed.value.exit_code == 2
    assert [c for c in google.calls if c[0] != "build"] == []


@pytest.mark.parametrize(
    "backend, module, extra",
    [(AzureBackend, "azure.mgmt.compute", "azure"), (GCPBackend, "googleapiclient", "gcp")],
)
def test_a_missing_extra_names_the_install_command(tls, monkeypatch, backend, module, extra):
    monkeypatch.setitem(sys.modules, module, None)
    with pytest.raises(BadInput) as failed:
        backend().start(spec(tls, "extra1", **AZURE_OPTIONS))
    assert f"pip install 'flowrig[{extra}]'" in str(failed.value)


def test_every_google_call_is_one_the_shipped_discovery_documents_accept(google, tls):
    """Each call the fake recorded, built (not sent) by googleapiclient's real clients:
    method names, parameter names and required parameters as the APIs define them."""
    from google.auth.credentials import AnonymousCredentials

    real = {name: REAL_BUILD(name, "v1", credentials=AnonymousCredentials(), cache_discovery=False)
            for name in ("compute", "secretmanager", "iam", "artifactregistry")}
    with local_scheduler(tls, workers=1) as scheduler:
        GCPBackend().start(spec(tls, "gc9", image=GIMAGE, **GCP_OPTIONS, dashboard=True,
                                scheduler_address=scheduler.scheduler_address)).close()
    from flowrig.backends.vm.cloud import VMRequest
    from flowrig.backends.vm.gcp_cloud import GCPCloud

    cloud = GCPCloud("gc10", GCPOptions(**GCP_OPTIONS, tls="baked"))
    cloud.prepare(dashboard=False)
    cloud.create([VMRequest("flowrig-gc10-scheduler", "scheduler", "#cloud-config\n")])
    cloud.observe(["flowrig-gc10-scheduler"])
    assert cloud.delete() == []
    assert cloud.observe(["flowrig-gc10-scheduler"])["flowrig-gc10-scheduler"].status == "stopped"
    checked = set()
    for name, kwargs in google.calls:
        if name == "build":
            continue
        service, *path, method = name.split(".")
        resource = real[service]
        for part in path:
            resource = getattr(resource, part)()
        request = getattr(resource, method)(**kwargs)
        assert request.uri.startswith("https://"), name
        checked.add(name)
    assert {"compute.instances.insert", "compute.firewalls.insert", "secretmanager.projects.secrets.setIamPolicy",
            "iam.projects.serviceAccounts.create", "compute.instances.list", "compute.zoneOperations.get",
            "compute.zoneOperations.wait", "compute.globalOperations.wait", "compute.machineTypes.get",
            "artifactregistry.projects.locations.repositories.getIamPolicy",
            "artifactregistry.projects.locations.repositories.setIamPolicy"} <= checked


def test_every_azure_call_fits_the_installed_sdk_signature(azure, tls):
    """Each management call the fakes recorded binds to the real SDK method it stands for."""
    import inspect

    import azure.mgmt.compute.operations as compute_ops
    import azure.mgmt.network.operations as network_ops

    with local_scheduler(tls, workers=1) as scheduler:
        AzureBackend().start(spec(tls, "az12", **AZURE_OPTIONS, scheduler_address=scheduler.scheduler_address)).close()
    operations = {
        "Microsoft.Network/networkSecurityGroups": network_ops.NetworkSecurityGroupsOperations,
        "Microsoft.Network/networkInterfaces": network_ops.NetworkInterfacesOperations,
        "Microsoft.Network/publicIPAddresses": network_ops.PublicIPAddressesOperations,
        "Microsoft.Network/virtualNetworks/subnets": network_ops.SubnetsOperations,
        "Microsoft.Compute/virtualMachines": compute_ops.VirtualMachinesOperations,
        "Microsoft.Compute/disks": compute_ops.DisksOperations,
    }
    verbs = {"create": "begin_create_or_update", "get": "get", "list": "list", "delete": "begin_delete"}
    checked = set()
    for name, args, kwargs in azure.calls:
        client, _, rest = name.partition(".")
        if client in ("compute", "network") and rest.rsplit(".", 1)[0] in operations:
            kind, verb = rest.rsplit(".", 1)
            method = getattr(operations[kind], verbs[verb])
            inspect.signature(method).bind(None, *args, *kwargs.values())
            checked.add(f"{kind}.{verb}")
        elif client == "keyvault":
            method = getattr(REAL_SECRET_CLIENT, {"delete": "begin_delete_secret", "purge": "purge_deleted_secret"}.get(
                rest, rest))
            inspect.signature(method).bind(None, *args, **kwargs)
            checked.add(name)
    assert {"Microsoft.Compute/virtualMachines.create", "Microsoft.Network/networkInterfaces.create",
            "Microsoft.Network/networkSecurityGroups.delete", "keyvault.set_secret", "keyvault.purge"} <= checked

