"""The fake Azure SDK clients (see :mod:`tests.vm_fakes`): a world that records each call,
keeps what it was asked to make, and raises the faults a test injects."""

from __future__ import annotations

import json
from types import SimpleNamespace
from urllib.parse import parse_qs, urlsplit

SUB = "00000000-1111-2222-3333-444444444444"
GROUP_PATH = f"/subscriptions/{SUB}/resourceGroups/runs"
VAULT_ID = f"/subscriptions/{SUB}/resourceGroups/vaults/providers/Microsoft.KeyVault/vaults/runs-vault"
REGISTRIES = f"/subscriptions/{SUB}/providers/Microsoft.ContainerRegistry/registries"
REGISTRY_ID = f"/subscriptions/{SUB}/resourceGroups/images/providers/Microsoft.ContainerRegistry/registries/FlowrigRuns"


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


