"""Fake Azure and Google Cloud SDK clients for the ``azure`` and ``gcp`` backends' tests:
each records every call and keeps what it was asked to make, so flowrig's real code builds
every request, and a test injects the faults the clouds answer with.

The fakes stand in for the SDK's own clients (``ComputeManagementClient``,
``NetworkManagementClient``, ``SecretClient``, ``DefaultAzureCredential``; googleapiclient's
``build`` and ``google.auth.default``). The ``azure`` and ``google`` fixtures install them
(a pytest plugin of tests/conftest.py), with the ledger's retries made quick.
"""

from __future__ import annotations

import json
from types import SimpleNamespace
from urllib.parse import parse_qs, urlsplit

import pytest

from flowrig.backends import ledger

SUB = "00000000-1111-2222-3333-444444444444"
GROUP_PATH = f"/subscriptions/{SUB}/resourceGroups/runs"
VAULT_ID = f"/subscriptions/{SUB}/resourceGroups/vaults/providers/Microsoft.KeyVault/vaults/runs-vault"
REGISTRIES = f"/subscriptions/{SUB}/providers/Microsoft.ContainerRegistry/registries"
REGISTRY_ID = f"/subscriptions/{SUB}/resourceGroups/images/providers/Microsoft.ContainerRegistry/registries/FlowrigRuns"
GREPO = "projects/proj-1/locations/europe-west1/repositories/runs"
@pytest.fixture
def quick_retries(monkeypatch):
    monkeypatch.setattr(ledger, "RETRY_SECONDS", 0.05)


# --- Azure: the fake SDK --------------------------------------------------------------
def azure_error(status: int, code: str, message: str = "refused"):
    from azure.core.exceptions import HttpResponseError, ODataV4Format, ResourceNotFoundError

    exc = (ResourceNotFoundError if status == 404 else HttpResponseError)(message=f"({code}) {message}")
    exc.status_code = status
    exc.error = ODataV4Format({"error": {"code": code, "message": message}})
    return exc


class Done:
    """A long-running operation that has finished."""

    def __init__(self, value=None):
        self.value = value

    def wait(self, timeout=None):
        pass

    def done(self):
        return True

    def result(self, timeout=None):
        return self.value


class AzureWorld:
    """What the fake Azure holds, every call made to it, and the faults to inject."""

    def __init__(self):
        self.calls: list[tuple] = []
        self.held: dict[tuple[str, str], dict] = {}
        self.arm: dict[str, dict] = {}
        self.secrets: dict[str, dict] = {}
        self.purged: list[str] = []
        self.faults: dict[str, BaseException] = {}
        self.rbac = True
        self.power = "PowerState/running"
        self.private_ip = "10.1.0.4"
        self.secret_write = None
        #: ``(code, message)`` of Spot VMs to fail after their create call returned, as
        #: ARM's long-running operation does when it finds no capacity: one each.
        self.allocation_failures: list[tuple[str, str]] = []
        self.failed_vms: dict[str, tuple[str, str]] = {}
        #: The location's marketplace images: ``(publisher, offer, sku) -> architecture``.
        self.images = {("Canonical", "ubuntu-24_04-lts", "server"): "x64",
                       ("Canonical", "ubuntu-24_04-lts", "server-arm64"): "Arm64",
                       ("microsoft-dsvm", "ubuntu-hpc", "2204"): "x64"}
        #: The location's VM sizes: ``name -> (CpuArchitectureType, GPUs, barred from the subscription)``.
        self.sizes = {"Standard_DS1_v2": ("x64", 0, False), "Standard_D2s_v5": ("x64", 0, False),
                      "Standard_D4s_v5": ("x64", 0, False), "Standard_D2ps_v5": ("Arm64", 0, False),
                      "Standard_NC4as_T4_v3": ("x64", 1, False), "Standard_NC24ads_A100_v4": ("x64", 1, True)}
        # The subscription's registries, one a page (ARM pages a list with nextLink).
        self.registries = [
            {"id": REGISTRY_ID.replace("FlowrigRuns", "Other"), "name": "Other",
             "properties": {"loginServer": "other.azurecr.io"}},
            {"id": REGISTRY_ID, "name": "FlowrigRuns", "properties": {"loginServer": "flowrigruns.azurecr.io"}},
        ]

    def call(self, name, *args, **kwargs):
        entry = (name, args, kwargs)
        self.calls.append(entry)
        fault = self.faults.get(name)
        if isinstance(fault, list):  # these once each, then the answer
            if fault:
                raise fault.pop(0)
        elif fault is not None:
            raise fault
        return entry

    def names(self, kind):
        return [name for (k, name) in self.held if k == kind]

    def install(self, monkeypatch):
        import azure.identity
        import azure.keyvault.secrets
        import azure.mgmt.compute
        import azure.mgmt.network

        world = self
        monkeypatch.setenv("AZURE_SUBSCRIPTION_ID", SUB)
        monkeypatch.setattr(azure.identity, "DefaultAzureCredential", lambda **kw: world.call("credential", **kw))
        monkeypatch.setattr(azure.mgmt.compute, "ComputeManagementClient", lambda c, s: FakeCompute(world, s))
        monkeypatch.setattr(azure.mgmt.network, "NetworkManagementClient", lambda c, s: FakeNetwork(world, s))
        monkeypatch.setattr(azure.keyvault.secrets, "SecretClient", lambda url, c: FakeSecrets(world, url))
        return self


class FakeKind:
    """One operations group of a management client: create, get, delete, list."""

    def __init__(self, world, kind, model, client):
        self.world, self.kind, self.model, self.client = world, kind, model, client

    def _id(self, group, name):
        return f"/subscriptions/{SUB}/resourceGroups/{group}/providers/{self.kind}/{name}"

    def begin_create_or_update(self, group, name, body):
        self.world.call(f"{self.client}.{self.kind}.create", group, name, body=body)
        stored = {**body, "id": self._id(group, name), "name": name}
        if self.kind.endswith("networkInterfaces"):
            for config in stored["properties"]["ipConfigurations"]:
                config["properties"]["privateIPAddress"] = self.world.private_ip
        self.world.held[(self.kind, name)] = stored
        return Done(self.model(stored))

    def get(self, group, name, *rest):
        self.world.call(f"{self.client}.{self.kind}.get", group, name, *rest)
        key = (self.kind, "/".join((name, *rest)))
        if key not in self.world.held:
            raise azure_error(404, "ResourceNotFound")
        return self.model(self.world.held[key])

    def list(self, group, name):
        self.world.call(f"{self.client}.{self.kind}.list", group, name)
        return [self.model(v) for (k, n), v in self.world.held.items() if k == self.kind and n.startswith(name + "/")]

    def begin_delete(self, group, name):
        self.world.call(f"{self.client}.{self.kind}.delete", group, name)
        self.world.held.pop((self.kind, name), None)  # ARM answers 204 for what is gone
        return Done()


class FakeCompute:
    def __init__(self, world, subscription):
        from azure.mgmt.compute.models import Disk, VirtualMachine

        self.world = world
        world.call("ComputeManagementClient", subscription)
        self.virtual_machines = FakeKind(world, "Microsoft.Compute/virtualMachines", VirtualMachine, "compute")
        self.disks = FakeKind(world, "Microsoft.Compute/disks", Disk, "compute")
        create, delete = self.virtual_machines.begin_create_or_update, self.virtual_machines.begin_delete

        def create_vm(group, name, body):
            world.call("compute.vm.create", name)
            done = create(group, name, body)
            if world.allocation_failures and body["properties"].get("priority") == "Spot":
                world.failed_vms[name] = world.allocation_failures.pop(0)
            disk = body["properties"]["storageProfile"]["osDisk"]["name"]
            world.held[("Microsoft.Compute/disks", disk)] = {"id": disk, "tags": body["tags"]}
            return done

        def delete_vm(group, name):
            vm = world.held.get(("Microsoft.Compute/virtualMachines", name))
            done = delete(group, name)
            if vm:  # deleteOption: Delete takes the NIC and the disk along
                world.held.pop(("Microsoft.Compute/disks", f"{name}-osdisk"), None)
                world.held.pop(("Microsoft.Network/networkInterfaces", f"{name}-nic"), None)
            return done

        self.virtual_machines.begin_create_or_update = create_vm
        self.virtual_machines.begin_delete = delete_vm
        self.virtual_machines.instance_view = self.instance_view
        self.resource_skus = SimpleNamespace(list=self.list_skus)
        self.virtual_machine_images = SimpleNamespace(list=self.list_images, get=self.get_image)

    def list_images(self, location, publisher_name, offer, skus, *, expand=None, top=None, orderby=None):
        from azure.mgmt.compute.models import VirtualMachineImageResource

        self.world.call("compute.virtual_machine_images.list", location, publisher_name, offer, skus, top=top,
                        orderby=orderby)
        known = (publisher_name, offer, skus) in self.world.images
        return [VirtualMachineImageResource({"name": "24.04.202611010", "location": location})] if known else []

    def get_image(self, location, publisher_name, offer, skus, version):
        from azure.mgmt.compute.models import VirtualMachineImage

        self.world.call("compute.virtual_machine_images.get", location, publisher_name, offer, skus, version)
        if (publisher_name, offer, skus) not in self.world.images:
            raise azure_error(404, "ImageNotFound")
        return VirtualMachineImage({"name": version, "location": location, "properties": {
            "architecture": self.world.images[(publisher_name, offer, skus)]}})

    def list_skus(self, *, filter=None, include_extended_locations=None):
        """The location's VM sizes, as the SDK's own models (``location eq '...'`` only)."""
        from azure.mgmt.compute.models import ResourceSku

        self.world.call("compute.resource_skus.list", filter=filter)
        location = filter.split("'")[1]
        return [ResourceSku({"name": name, "resourceType": "virtualMachines", "locations": [location],
                             "capabilities": [{"name": "CpuArchitectureType", "value": arch},
                                              {"name": "GPUs", "value": str(gpus)}],
                             "restrictions": [{"type": "Location", "values": [location],
                                               "reasonCode": "NotAvailableForSubscription"}] if barred else []})
                for name, (arch, gpus, barred) in self.world.sizes.items()]

    def instance_view(self, group, name):
        from azure.mgmt.compute.models import VirtualMachineInstanceView

        self.world.call("compute.vm.instance_view", name)
        if ("Microsoft.Compute/virtualMachines", name) not in self.world.held:
            raise azure_error(404, "ResourceNotFound")
        if name in self.world.failed_vms:
            code, message = self.world.failed_vms[name]
            return VirtualMachineInstanceView(
                {"statuses": [{"code": f"ProvisioningState/failed/{code}", "message": message}]})
        return VirtualMachineInstanceView(
            {"statuses": [{"code": "ProvisioningState/succeeded"}, {"code": self.world.power}]})

    def send_request(self, request):
        """ARM REST: the identity, the vault's and the registry's lookups, the role assignments."""
        parts = urlsplit(request.url)
        path, query = parts.path, parse_qs(parts.query)
        body = json.loads(request.content) if request.content else None
        self.world.call(f"arm.{request.method}", path, query=query, body=body)
        answer: dict = {}
        if request.method == "PUT":
            answer = {**body, "id": path}
            if "userAssignedIdentities" in path:
                answer["properties"] = {"principalId": "pid-of-the-run", "clientId": "cid-of-the-run"}
            self.world.arm[path] = answer
        elif request.method == "DELETE":
            self.world.arm.pop(path, None)
        elif path.endswith("/resources"):
            answer = {"value": [{"id": VAULT_ID}] if "runs-vault" in query["$filter"][0] else []}
        elif path == VAULT_ID:
            answer = {"id": VAULT_ID, "properties": {"enableRbacAuthorization": self.world.rbac}}
        elif path == REGISTRIES:
            page = int(query.get("$skipToken", ["0"])[0])
            answer = {"value": self.world.registries[page:page + 1]}
            if page + 1 < len(self.world.registries):
                answer["nextLink"] = (f"https://management.azure.com{REGISTRIES}"
                                      f"?api-version=2023-07-01&%24skipToken={page + 1}")
        return SimpleNamespace(content=json.dumps(answer).encode(), json=lambda: answer,
                               raise_for_status=lambda: None)


class FakeNetwork:
    def __init__(self, world, subscription):
        from azure.mgmt.network.models import NetworkInterface, NetworkSecurityGroup, PublicIPAddress, Subnet

        world.call("NetworkManagementClient", subscription)
        self.network_security_groups = FakeKind(
            world, "Microsoft.Network/networkSecurityGroups", NetworkSecurityGroup, "network")
        self.network_interfaces = FakeKind(world, "Microsoft.Network/networkInterfaces", NetworkInterface, "network")
        self.public_ip_addresses = FakeKind(world, "Microsoft.Network/publicIPAddresses", PublicIPAddress, "network")
        self.subnets = FakeKind(world, "Microsoft.Network/virtualNetworks/subnets", Subnet, "network")
        world.held.setdefault(("Microsoft.Network/virtualNetworks/subnets", "runs-vnet/vms"),
                              {"id": f"{GROUP_PATH}/providers/Microsoft.Network/virtualNetworks/runs-vnet/subnets/vms"})


class FakeSecrets:
    def __init__(self, world, url):
        self.world = world
        world.call("SecretClient", url)

    def set_secret(self, name, value, **kwargs):
        self.world.secret_write = self.world.call("keyvault.set_secret", name, value, **kwargs)
        self.world.secrets[name] = {"value": value, **kwargs}

    def begin_delete_secret(self, name):
        self.world.call("keyvault.delete", name)
        if self.world.secrets.pop(name, None) is None:
            raise azure_error(404, "SecretNotFound")
        return Done()

    def purge_deleted_secret(self, name):
        self.world.call("keyvault.purge", name)
        self.world.purged.append(name)


@pytest.fixture
def azure(monkeypatch, quick_retries):
    return AzureWorld().install(monkeypatch)


AZURE_OPTIONS = {"resource_group": "runs", "location": "westeurope", "vnet": "runs-vnet", "subnet": "vms",
                 "key_vault": "runs-vault", "tags": {"team": "data"}, "provision_timeout": 60}


def assert_azure_empty(world: AzureWorld, run_id: str) -> None:
    left = [key for key, value in world.held.items() if run_id in json.dumps(value)]
    assert left == [], left
    assert not [p for p in world.arm if run_id in p or "roleAssignments" in p], world.arm
    assert world.secrets == {}
    assert f"flowrig-{run_id}-tls" in world.purged


class Failing(Done):
    """A long-running operation that ended in failure, its resource made all the same."""

    def __init__(self, error):
        super().__init__()
        self.error = error

    def result(self, timeout=None):
        raise self.error


# --- Google Cloud: the fake SDK --------------------------------------------------------
def http_error(status: int, message: str):
    import httplib2
    from googleapiclient.errors import HttpError

    return HttpError(httplib2.Response({"status": status}), json.dumps({"error": {"message": message}}).encode())


_METHODS = {"get", "list", "insert", "delete", "create", "addVersion", "getIamPolicy", "setIamPolicy", "wait",
            "getFromFamily"}


class _Request:
    def __init__(self, world, path, kwargs):
        self.world, self.path, self.kwargs = world, path, kwargs

    def execute(self):
        name = ".".join(self.path)
        entry = (name, self.kwargs)
        self.world.calls.append(entry)
        fault = self.world.faults.get(name)
        if isinstance(fault, list):  # these once each, then the answer
            if fault:
                raise fault.pop(0)
        elif fault is not None:
            raise fault
        return getattr(self.world, name.replace(".", "_"))(**self.kwargs)


class _Resource:
    def __init__(self, world, path):
        self.world, self.path = world, path

    def list_next(self, request, answer):
        return None

    def __getattr__(self, attr):
        if attr in _METHODS:
            return lambda **kwargs: _Request(self.world, (*self.path, attr), kwargs)
        return lambda: _Resource(self.world, (*self.path, attr))


class GoogleWorld:
    """What the fake Google Cloud holds, every call made to it, and the faults to inject."""

    def __init__(self):
        self.calls: list[tuple] = []
        self.faults: dict[str, BaseException] = {}
        self.firewalls: dict[str, dict] = {}
        self.accounts: dict[str, dict] = {}
        self.secrets: dict[str, dict] = {}
        self.instances: dict[str, dict] = {}
        self.operations: dict[str, dict] = {}
        self.project = "proj-1"
        self.status = "RUNNING"
        self.secret_write = None
        #: The zone's machine types (``name -> machineTypes.get``) and accelerator types (``name -> max cards``).
        self.machine_types = {
            name: {"name": name, "architecture": arch, **({"accelerators": [
                {"guestAcceleratorType": gpu, "guestAcceleratorCount": count}]} if gpu else {})}
            for name, arch, gpu, count in (
                ("n1-standard-1", "X86_64", "", 0), ("n1-standard-4", "X86_64", "", 0),
                ("e2-standard-2", "X86_64", "", 0), ("t2a-standard-2", "ARM64", "", 0),
                ("g2-standard-4", "X86_64", "nvidia-l4", 1), ("a2-highgpu-1g", "X86_64", "nvidia-tesla-a100", 1))
        }
        self.accelerator_types = {"nvidia-tesla-t4": 4, "nvidia-l4": 8}
        #: ``(code, message)`` of Spot instances whose insert operation is to end in that
        #: error (no instance made), as Compute Engine's does when the zone has no room: one each.
        self.exhausted: list[tuple[str, str]] = []
        #: Called with each instance made (a test starts the worker a VM would run).
        self.on_insert = None
        # The project's repository of the run's image; its policy names others already.
        self.repositories: dict[str, dict] = {GREPO: dict(REPOSITORY_POLICY)}

    def install(self, monkeypatch):
        import google.auth
        import googleapiclient.discovery

        world = self

        def build(name, version, **kwargs):
            world.calls.append(("build", {"name": name, "version": version,
                                          "cache_discovery": kwargs.get("cache_discovery")}))
            return _Resource(world, (name,))

        monkeypatch.setattr(google.auth, "default", lambda scopes=None: (object(), world.project))
        monkeypatch.setattr(googleapiclient.discovery, "build", build)
        return self

    def _op(self, kind, zone=None):
        name = f"op-{len(self.operations)}"
        self.operations[name] = {"name": name, "status": "DONE", **({"zone": f"zones/{zone}"} if zone else {})}
        return {**self.operations[name], "status": "RUNNING"}

    # compute
    def compute_subnetworks_get(self, project, region, subnetwork):
        return {"selfLink": f"projects/{project}/regions/{region}/subnetworks/{subnetwork}",
                "ipCidrRange": "10.132.0.0/20"}

    def compute_firewalls_insert(self, project, body):
        self.firewalls[body["name"]] = body
        return self._op("firewall")

    def compute_firewalls_delete(self, project, firewall):
        if self.firewalls.pop(firewall, None) is None:
            raise http_error(404, "not found")
        return self._op("firewall")

    def compute_globalOperations_wait(self, project, operation):
        return self.operations[operation]

    def compute_zoneOperations_wait(self, project, zone, operation):
        return self.operations[operation]

    def compute_zoneOperations_get(self, project, zone, operation):
        return self.operations[operation]

    def compute_machineTypes_get(self, project, zone, machineType):
        if machineType not in self.machine_types:
            raise http_error(404, f"The resource 'projects/{project}/zones/{zone}/machineTypes/{machineType}' "
                                  "was not found")
        return self.machine_types[machineType]

    def compute_images_getFromFamily(self, project, family):
        arch = {"arm64": "ARM64", "amd64": "X86_64"}.get(family.rsplit("-", 1)[-1], "X86_64")
        if family.startswith("no-such"):
            raise http_error(404, f"The resource 'projects/{project}/global/images/family/{family}' was not found")
        return {"name": f"{family}-v1", "family": family, "architecture": arch}

    def compute_images_get(self, project, image):
        return {"name": image, "architecture": "ARM64" if "arm64" in image else "X86_64"}

    def compute_acceleratorTypes_get(self, project, zone, acceleratorType):
        if acceleratorType not in self.accelerator_types:
            raise http_error(404, f"The resource 'acceleratorTypes/{acceleratorType}' was not found")
        return {"name": acceleratorType, "maximumCardsPerInstance": self.accelerator_types[acceleratorType]}

    def compute_instances_insert(self, project, zone, body):
        if self.exhausted and (body.get("scheduling") or {}).get("provisioningModel") == "SPOT":
            code, message = self.exhausted.pop(0)
            operation = self._op("instance", zone)
            self.operations[operation["name"]]["error"] = {"errors": [{"code": code, "message": message}]}
            return operation
        self.instances[body["name"]] = {**body, "status": self.status,
                                        "networkInterfaces": [{**body["networkInterfaces"][0],
                                                               "networkIP": "10.132.0.7"}]}
        if self.on_insert is not None:
            self.on_insert(body)
        return self._op("instance", zone)

    def compute_instances_list(self, project, zone, filter):
        key, value = filter.removeprefix("labels.").split(" = ")
        items = [i for i in self.instances.values() if i["labels"].get(key) == json.loads(value)]
        return {"items": [{**i, "status": self.status} for i in items]}

    def compute_instances_get(self, project, zone, instance):
        if instance not in self.instances:
            raise http_error(404, "not found")
        return self.instances[instance]

    def compute_instances_delete(self, project, zone, instance):
        if self.instances.pop(instance, None) is None:
            raise http_error(404, f"instance {instance} not found")
        return self._op("instance", zone)

    # iam
    def iam_projects_serviceAccounts_create(self, name, body):
        email = f"{body['accountId']}@{name.removeprefix('projects/')}.iam.gserviceaccount.com"
        self.accounts[email] = body
        return {"email": email}

    def iam_projects_serviceAccounts_delete(self, name):
        if self.accounts.pop(name.rsplit("/", 1)[1], None) is None:
            raise http_error(404, "not found")
        return {}

    # secret manager
    def secretmanager_projects_secrets_create(self, parent, secretId, body):
        self.secrets[f"{parent}/secrets/{secretId}"] = {**body, "versions": [], "policy": None}
        return {}

    def secretmanager_projects_secrets_addVersion(self, parent, body):
        self.secret_write = self.calls[-1]
        self.secrets[parent]["versions"].append(body["payload"]["data"])
        return {}

    def secretmanager_projects_secrets_setIamPolicy(self, resource, body):
        self.secrets[resource]["policy"] = body["policy"]
        return body["policy"]

    def secretmanager_projects_secrets_delete(self, name):
        if self.secrets.pop(name, None) is None:
            raise http_error(404, "not found")
        return {}

    # artifact registry: a policy's etag changes with each write, and a write must name the current one
    def artifactregistry_projects_locations_repositories_getIamPolicy(self, resource, options_requestedPolicyVersion):
        if resource not in self.repositories:
            raise http_error(404, f"Requested entity was not found: {resource}")
        return json.loads(json.dumps(self.repositories[resource]))

    def artifactregistry_projects_locations_repositories_setIamPolicy(self, resource, body):
        policy, held = body["policy"], self.repositories[resource]
        if policy.get("etag") != held["etag"]:
            raise http_error(409, "There were concurrent policy changes.")
        self.repositories[resource] = {**policy, "etag": f"{held['etag']}+"}
        return self.repositories[resource]


#: What the image's repository grants before (and so after) a run.
REPOSITORY_POLICY = {"version": 1, "etag": "BwYa", "bindings": [
    {"role": "roles/artifactregistry.reader", "members": ["group:data@example.com"]},
    {"role": "roles/artifactregistry.reader", "members": ["user:ops@example.com"],
     "condition": {"title": "office hours", "expression": "request.time.getHours('UTC') < 18"}},
    {"role": "roles/artifactregistry.writer", "members": ["serviceAccount:ci@proj-1.iam.gserviceaccount.com"]},
]}


@pytest.fixture
def google(monkeypatch, quick_retries):
    return GoogleWorld().install(monkeypatch)


GCP_OPTIONS = {"zone": "europe-west1-b", "tags": {"Team Name": "Data/ML"}, "provision_timeout": 60}


def assert_google_empty(world: GoogleWorld) -> None:
    assert (world.firewalls, world.accounts, world.secrets, world.instances) == ({}, {}, {}, {})
    # The image's repository grants exactly what it did before the run.
    assert world.repositories[GREPO]["bindings"] == REPOSITORY_POLICY["bindings"]


def discovery_errors(value, schema: str = "Instance", api: str = "compute") -> list[str]:
    """Where ``value`` strays from ``schema`` of the discovery document googleapiclient ships
    (``api`` v1): a key the schema does not have, a value outside its enum, a wrong JSON type."""
    from pathlib import Path

    import googleapiclient

    document = json.loads((Path(googleapiclient.__file__).parent / "discovery_cache" / "documents"
                           / f"{api}.v1.json").read_text())
    schemas, errors = document["schemas"], []
    kinds = {"string": str, "boolean": bool, "integer": (int, str), "array": list, "object": dict}

    def walk(node, spec, where):
        spec = schemas[spec["$ref"]] if "$ref" in spec else spec
        kind = spec.get("type")
        if kind and not isinstance(node, kinds.get(kind, object)):
            errors.append(f"{where}: {type(node).__name__} where the schema has {kind}")
        elif "enum" in spec and node not in spec["enum"]:
            errors.append(f"{where}: {node!r} is none of {spec['enum']}")
        elif kind == "array":
            for i, item in enumerate(node):
                walk(item, spec["items"], f"{where}[{i}]")
        elif kind == "object" and "properties" in spec:
            for key, item in node.items():
                if key not in spec["properties"]:
                    errors.append(f"{where}.{key}: not a field of the schema")
                else:
                    walk(item, spec["properties"][key], f"{where}.{key}")

    walk(value, {"$ref": schema}, schema)
    return errors
