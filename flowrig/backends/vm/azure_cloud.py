"""The ``azure`` backend's calls to Azure: one run's NSG, identity, secret, NICs and VMs.

Every SDK client is made in :class:`~.azure_clients.AzureClients`, the one boundary
with the SDKs (:mod:`.azure_clients`). Request bodies are the REST API's own JSON.
Each resource is recorded on the run's :class:`~flowrig.backends.ledger.Ledger` in the
statement that creates it.

The run's identity is a **user-assigned managed identity**, created and granted before
any VM exists (a system-assigned one exists only with its VM, so each VM would boot
before its grant), so that one grant serves every VM of the run, replaced workers too.
The identity and the role assignments are plain ARM calls.

The grant is the built-in role "Key Vault Secrets User" scoped to the run's secret
alone; a vault that uses access policies instead of Azure RBAC is refused, since an
access policy could only grant every secret of the vault. When the run's image is in
an Azure Container Registry of the subscription, the identity is also given the
built-in role "AcrPull" on that registry alone (the VMs log in with it); both grants
are deleted with the run.

The NSG of the run admits the scheduler port (and the dashboard's, only with
``dashboard``) from the ``VirtualNetwork`` service tag; traffic between the run's VMs
(workers listen on random ports) is Azure's default ``AllowVnetInBound``, and anything
from the Internet falls to the default ``DenyAllInBound``. VMs have no public address
unless ``use_private_ip = false``, no password, and an admin SSH key whose private half
is never kept.
"""

from __future__ import annotations

import base64
import logging
import os
import re
import time
import uuid
from typing import TYPE_CHECKING, Any

from flowrig.backends.ledger import Ledger, retry, wait_until
from flowrig.backends.placement import SPOT
from flowrig.backends.pool import Observed
from flowrig.backends.vm.azure_clients import (
    AUTHORIZATION_API,
    IDENTITY_API,
    KEYVAULT_API,
    REGISTRY_API,
    RESOURCES_API,
    AzureClients,
    azure_errors,
    error_code,
    finish,
    gone,
    retryable,
)
from flowrig.backends.vm.cloud import Cloud, Created, VMRequest
from flowrig.errors import BadInput, InfrastructureError, one_line
from flowrig.roles import DASHBOARD_PORT, SCHEDULER_PORT

if TYPE_CHECKING:
    from flowrig.backends.vm.cloudinit import RegistryLogin

logger = logging.getLogger("flowrig.vm")

#: The built-in role "Key Vault Secrets User": read a secret's value, nothing else.
SECRETS_USER_ROLE = "4633458b-17de-408a-b874-0445c86b69e6"
#: The built-in role "AcrPull": pull images from one registry, nothing else.
ACR_PULL_ROLE = "7f951dda-4ed3-4680-a7ca-43fe172d538d"
#: Seconds a new identity may take to be known to role assignments.
IDENTITY_PROPAGATION = 120.0
#: Errors creating a VM that mean "not this VM now" (quota, capacity), not a bad request.
_CAPACITY_CODES = {"OperationNotAllowed", "SkuNotAvailable", "AllocationFailed", "ZonalAllocationFailed",
                   "OverconstrainedAllocationRequest", "OverconstrainedZonalAllocationRequest"}
_VAULT_URL = re.compile(r"^https://(?P<name>[0-9a-zA-Z-]{3,24})\.vault\.[a-z0-9.-]+/?$")


def _throwaway_ssh_key() -> str:
    """An SSH public key whose private half is dropped: Azure wants a login, nobody gets one."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH).decode()


class AzureCloud(Cloud):
    """One run's resources in one resource group (see the module's docstring).

    Parameters
    ----------
    run_id
        The run.
    options
        The project's :class:`~flowrig.backends.vm.azure.AzureOptions`.
    clients
        The SDK clients; made from the options and the environment by default.
    """

    name = "azure"
    kind = "VM"
    market_words = {"spot": "Azure Spot", "on-demand": "pay-as-you-go Azure"}

    def __init__(self, run_id: str, options: Any, clients: AzureClients | None = None) -> None:
        for key, example in (("resource_group", "flowrig-runs"), ("location", "westeurope")):
            if not getattr(options, key):
                raise BadInput(f"the azure backend needs [cluster.options] {key}, e.g. {key} = {example!r}")
        subscription = options.subscription_id or os.environ.get("AZURE_SUBSCRIPTION_ID")
        if not subscription:
            raise BadInput("no Azure subscription: set subscription_id in [cluster.options] or AZURE_SUBSCRIPTION_ID")
        self.vault_name: str | None = None
        if options.key_vault:
            match = _VAULT_URL.match(options.key_vault)
            self.vault_name = match["name"] if match else options.key_vault
            if not re.fullmatch(r"[0-9a-zA-Z-]{3,24}", self.vault_name):
                raise BadInput(f"[cluster.options] key_vault = {options.key_vault!r} is not a Key Vault name or URL")
        elif options.tls == "per-run":
            raise BadInput(
                "the azure backend's per-run certificates go through a Key Vault: set key_vault in "
                "[cluster.options] (a vault with Azure RBAC), or tls = 'baked'"
            )
        vault_url = options.key_vault if options.key_vault and "://" in options.key_vault else (
            f"https://{self.vault_name}.vault.azure.net" if self.vault_name else None
        )
        self.run_id = run_id
        self.options = options
        self.group = options.resource_group
        self.tags = self.labels(run_id, options.tags)
        self.clients = clients or AzureClients(subscription, vault_url.rstrip("/") if vault_url else None)
        self.ledger = Ledger(float(options.cleanup_timeout), gone=gone, retryable=retryable)
        self.identity_id = ""
        self.principal_id = ""
        self.subnet_id = ""
        self.nsg_id = ""
        self._ssh_key = ""
        #: Each role's and each worker size's (lower-cased) architecture (``amd64``, ``arm64``) (:meth:`check`).
        self.archs: dict[str, str] = {}

    # --- names -------------------------------------------------------------------------
    @property
    def _group_path(self) -> str:
        return f"/subscriptions/{self.clients.subscription_id}/resourceGroups/{self.group}"

    @property
    def secret_name(self) -> str:
        return f"flowrig-{self.run_id}-tls"

    def network_description(self) -> str:
        return f"virtual network {self.options.vnet or self.subnet_id} of resource group {self.group}"

    def check(self, image: str) -> None:
        """VM sizes, GPUs and architectures, read-only (:mod:`.azure_shapes`)."""
        from flowrig.backends.vm.azure_shapes import check_run

        self.archs = check_run(self.clients.compute, self.options.location, self.options, image, self.worker_groups)

    # --- prepare -----------------------------------------------------------------------
    def prepare(self, dashboard: bool) -> None:
        self.subnet_id = self._subnet()
        if self.options.security_group:
            with azure_errors(f"reading network security group {self.options.security_group}"):
                self.nsg_id = self.clients.network.network_security_groups.get(
                    self.group, self.options.security_group).id
        else:
            self.nsg_id = self._create_nsg(dashboard)
        self._create_identity()

    def _subnet(self) -> str:
        options = self.options
        if options.subnet and options.subnet.startswith("/subscriptions/"):
            return options.subnet
        if not options.vnet:
            raise BadInput("the azure backend needs [cluster.options] vnet (the run's virtual network) and subnet")
        network = self.clients.network
        with azure_errors(f"reading the subnets of virtual network {options.vnet}"):
            if options.subnet:
                return network.subnets.get(self.group, options.vnet, options.subnet).id
            subnets = list(network.subnets.list(self.group, options.vnet))
        if len(subnets) != 1:
            raise BadInput(
                f"virtual network {options.vnet} has {len(subnets)} subnets: set subnet in [cluster.options]"
            )
        return subnets[0].id

    def _create_nsg(self, dashboard: bool) -> str:
        name = f"flowrig-{self.run_id}"
        ports = [(SCHEDULER_PORT, "scheduler")] + ([(DASHBOARD_PORT, "dashboard")] if dashboard else [])
        rules = [
            {"name": f"flowrig-{what}-from-vnet", "properties": {
                "protocol": "Tcp", "direction": "Inbound", "access": "Allow", "priority": 1000 + i,
                "sourceAddressPrefix": "VirtualNetwork", "sourcePortRange": "*",
                "destinationAddressPrefix": "*", "destinationPortRange": str(port),
                "description": f"Dask {what} of flowrig run {self.run_id}, from the virtual network only",
            }}
            for i, (port, what) in enumerate(ports)
        ]
        body = {"location": self.options.location, "tags": self.tags, "properties": {"securityRules": rules}}
        network = self.clients.network
        with azure_errors(f"creating network security group {name}"):
            poller = network.network_security_groups.begin_create_or_update(self.group, name, body)
            self.ledger.record("network-security-group", name, lambda deadline: finish(
                network.network_security_groups.begin_delete(self.group, name), deadline, f"deleting NSG {name}"))
            return finish(poller, time.monotonic() + 300, f"creating NSG {name}").id

    def _create_identity(self) -> None:
        name = f"flowrig-{self.run_id}"
        path = f"{self._group_path}/providers/Microsoft.ManagedIdentity/userAssignedIdentities/{name}"
        with azure_errors(f"creating managed identity {name}"):
            answer = self.clients.arm(
                "PUT", path, IDENTITY_API, {"location": self.options.location, "tags": self.tags})
            self.ledger.record("managed-identity", name, lambda _: self.clients.arm("DELETE", path, IDENTITY_API))
        self.identity_id = answer.get("id") or path
        self.principal_id = answer["properties"]["principalId"]

    # --- the run's secret ----------------------------------------------------------------
    def store_certificates(self, line: str) -> str:
        vault = self._vault_resource_id()
        name = self.secret_name
        secrets = self.clients.secrets
        with azure_errors(f"storing secret {name} in Key Vault {self.vault_name}"):
            secrets.set_secret(name, line, tags=self.tags, content_type="application/x-flowrig-tls")
            self.ledger.record("key-vault-secret", name, self._delete_secret)
        self._grant_read(f"{vault}/secrets/{name}")
        return f"{self.clients.vault_url}/secrets/{name}"

    def _vault_resource_id(self) -> str:
        subscription = f"/subscriptions/{self.clients.subscription_id}"
        with azure_errors(f"looking up Key Vault {self.vault_name}"):
            found = self.clients.arm(
                "GET", f"{subscription}/resources", RESOURCES_API,
                **{"$filter": f"resourceType eq 'Microsoft.KeyVault/vaults' and name eq '{self.vault_name}'"},
            ).get("value") or []
            if not found:
                raise BadInput(f"Key Vault {self.vault_name} is not in subscription {self.clients.subscription_id}")
            vault = self.clients.arm("GET", found[0]["id"], KEYVAULT_API)
        if not (vault.get("properties") or {}).get("enableRbacAuthorization"):
            raise BadInput(
                f"Key Vault {self.vault_name} uses access policies, which grant every secret of the vault: "
                "switch it to the Azure RBAC permission model"
            )
        return found[0]["id"]

    def _grant_read(self, scope: str) -> None:
        self._grant(scope, SECRETS_USER_ROLE, "its VMs read its certificates",
                    f"granting the run's identity read access to secret {self.secret_name}")

    def _grant(self, scope: str, role: str, why: str, action: str) -> None:
        """Give the run's identity ``role`` on ``scope`` alone; the assignment goes with the run."""
        assignment = uuid.uuid5(uuid.NAMESPACE_URL, f"{scope}#{self.principal_id}")
        path = f"{scope}/providers/Microsoft.Authorization/roleAssignments/{assignment}"
        roles = f"/subscriptions/{self.clients.subscription_id}/providers/Microsoft.Authorization/roleDefinitions/"
        body = {"properties": {
            "roleDefinitionId": roles + role,
            "principalId": self.principal_id,
            # Said outright, so that a just-made identity need not be replicated yet.
            "principalType": "ServicePrincipal",
            "description": f"flowrig run {self.run_id}: {why}",
        }}
        with azure_errors(action):
            # A just-made identity may be unknown to role assignments for a while.
            retry(lambda: self.clients.arm("PUT", path, AUTHORIZATION_API, body),
                  until=time.monotonic() + IDENTITY_PROPAGATION, when=retryable)
            self.ledger.record("role-assignment", str(assignment),
                               lambda _: self.clients.arm("DELETE", path, AUTHORIZATION_API))

    # --- the run's image -----------------------------------------------------------------
    def allow_registry(self, login: "RegistryLogin", image: str) -> None:
        if login.kind != "acr":
            return
        registry = self._registry_resource_id(login.host)
        self._grant(registry, ACR_PULL_ROLE, f"its VMs pull {image}",
                    f"letting the run's identity pull from container registry {login.host}")

    def _registry_resource_id(self, login_server: str) -> str:
        """The ARM id of the subscription's registry whose login server is ``login_server``."""
        subscription = self.clients.subscription_id
        path = f"/subscriptions/{subscription}/providers/Microsoft.ContainerRegistry/registries"
        with azure_errors(f"looking up container registry {login_server}"):
            for registry in self.clients.arm_pages(path, REGISTRY_API):
                # A registry's name may have capitals; its login server is the name in lower case.
                if str((registry.get("properties") or {}).get("loginServer", "")).lower() == login_server:
                    return registry["id"]
        raise BadInput(
            f"container registry {login_server} is not in subscription {subscription}: set subscription_id "
            "in [cluster.options] to the registry's subscription, or registry_login = false when the VMs "
            "may pull the image without logging in"
        )

    def _delete_secret(self, deadline: float) -> None:
        from azure.core.exceptions import HttpResponseError

        secrets = self.clients.secrets
        finish(secrets.begin_delete_secret(self.secret_name), deadline, f"deleting secret {self.secret_name}")
        try:
            retry(lambda: secrets.purge_deleted_secret(self.secret_name), until=deadline, when=retryable, gone=gone)
        except HttpResponseError as exc:
            # Purge protection, or no purge permission: the secret stays soft-deleted.
            logger.warning("secret %s is deleted but not purged: %s", self.secret_name, one_line(exc, 200))

    # --- VMs -------------------------------------------------------------------------------
    def create(self, requests: list[VMRequest]) -> Created:
        from azure.core.exceptions import HttpResponseError

        created = Created()
        for request in requests:
            try:
                with azure_errors(f"creating VM {request.name}"):
                    self._create_vm(request)
                created.started[request.name] = request.name
            except InfrastructureError as exc:
                cause = exc.__context__
                if not isinstance(cause, HttpResponseError) or error_code(cause) not in _CAPACITY_CODES:
                    raise
                created.refuse(request.name, one_line(exc, 300))
        return created

    def _create_vm(self, request: VMRequest) -> None:
        options, network, compute = self.options, self.clients.network, self.clients.compute
        name, nic = request.name, f"{request.name}-nic"
        disk = f"{name}-osdisk"
        self.ledger.record("disk", disk, lambda d: finish(
            compute.disks.begin_delete(self.group, disk), d, f"deleting disk {disk}"))
        ip_config: dict[str, Any] = {"subnet": {"id": self.subnet_id}, "privateIPAllocationMethod": "Dynamic"}
        if not options.use_private_ip:
            ip_config["publicIPAddress"] = {"id": self._create_public_ip(f"{name}-ip")}
        body = {"location": options.location, "tags": self.tags, "properties": {
            "ipConfigurations": [{"name": "primary", "properties": ip_config}],
            "networkSecurityGroup": {"id": self.nsg_id},
        }}
        # ARM makes the resource before its operation can fail: recorded before it is waited on.
        creating = network.network_interfaces.begin_create_or_update(self.group, nic, body)
        self.ledger.record("network-interface", nic, lambda d: finish(
            network.network_interfaces.begin_delete(self.group, nic), d, f"deleting NIC {nic}"))
        nic_id = finish(creating, time.monotonic() + 300, f"creating NIC {nic}").id
        compute.virtual_machines.begin_create_or_update(self.group, name, self._vm_body(request, nic_id))
        self.ledger.record("vm", name, lambda d: finish(
            compute.virtual_machines.begin_delete(self.group, name), d, f"deleting VM {name}"))

    def _create_public_ip(self, name: str) -> str:
        network = self.clients.network
        body = {"location": self.options.location, "tags": self.tags, "sku": {"name": "Standard"},
                "properties": {"publicIPAllocationMethod": "Static", "publicIPAddressVersion": "IPv4"}}
        creating = network.public_ip_addresses.begin_create_or_update(self.group, name, body)
        self.ledger.record("public-ip", name, lambda d: finish(
            network.public_ip_addresses.begin_delete(self.group, name), d, f"deleting public IP {name}"))
        return finish(creating, time.monotonic() + 300, f"creating public IP {name}").id

    def _vm_body(self, request: VMRequest, nic_id: str) -> dict:
        from flowrig.backends.vm.azure_shapes import image_reference, vm_boot_image

        options = self.options
        size = (options.scheduler_vm_size if request.role == "scheduler"
                else request.options.get("worker_vm_size") or options.worker_vm_size) or options.vm_size
        if not self._ssh_key:
            self._ssh_key = _throwaway_ssh_key()
        body: dict[str, Any] = {
            "location": options.location,
            "tags": {**self.tags, "flowrig-role": request.role},
            "identity": {"type": "UserAssigned", "userAssignedIdentities": {self.identity_id: {}}},
            "properties": {
                "hardwareProfile": {"vmSize": size},
                "storageProfile": {
                    "imageReference": image_reference(  # per VM: a GPU worker's has NVIDIA's driver
                        vm_boot_image(options, worker=request.role == "worker", gpus=request.gpu, own=request.options),
                        self.archs.get(size.lower()) or self.archs.get(request.role, "")),
                    "osDisk": {"name": f"{request.name}-osdisk", "createOption": "FromImage",
                               "diskSizeGB": options.disk_size, "deleteOption": "Delete"},
                },
                "osProfile": {
                    "computerName": request.name[:64],
                    "adminUsername": "flowrig",
                    "customData": base64.b64encode(request.user_data.encode()).decode(),
                    "linuxConfiguration": {"disablePasswordAuthentication": True, "ssh": {"publicKeys": [
                        {"path": "/home/flowrig/.ssh/authorized_keys", "keyData": self._ssh_key}]}},
                },
                "networkProfile": {"networkInterfaces": [
                    {"id": nic_id, "properties": {"primary": True, "deleteOption": "Delete"}}]},
            },
        }
        if request.market == SPOT:
            # Deleted when evicted (a deallocated VM keeps its disk), at up to the on-demand price (-1).
            body["properties"].update(priority="Spot", evictionPolicy="Delete", billingProfile={"maxPrice": -1})
        return body

    def observe(self, handles: list[str]) -> dict[str, Observed]:
        seen = {}
        for handle in handles:
            try:
                with azure_errors(f"reading the state of VM {handle}"):
                    view = self.clients.compute.virtual_machines.instance_view(self.group, handle)
            except InfrastructureError as exc:
                if exc.__context__ is not None and gone(exc.__context__):
                    seen[handle] = Observed("stopped", "the VM was deleted")
                    continue
                raise
            seen[handle] = _state(view.statuses or [])
        return seen

    def short_of_capacity(self, reason: str) -> bool:
        # A failed creation, as _state words it: "provisioning failed (CODE): message".
        return reason.startswith("provisioning failed (") and reason[21:].split(")", 1)[0] in _CAPACITY_CODES

    def private_address(self, handle: str) -> str:
        with azure_errors(f"reading the address of VM {handle}"):
            nic = self.clients.network.network_interfaces.get(self.group, f"{handle}-nic")
        return nic.ip_configurations[0].private_ip_address or ""

    def public_address(self, handle: str) -> str | None:
        if self.options.use_private_ip:
            return None
        with azure_errors(f"reading the public address of VM {handle}"):
            return self.clients.network.public_ip_addresses.get(self.group, f"{handle}-ip").ip_address

    def terminate(self, handles: list[str]) -> None:
        for handle in handles:
            try:
                with azure_errors(f"deleting VM {handle}"):
                    self.clients.compute.virtual_machines.begin_delete(self.group, handle)
            except InfrastructureError as exc:
                if exc.__context__ is None or not gone(exc.__context__):
                    raise

    def delete(self) -> list[str]:
        # Every VM at once first (minutes each); the ledger then finds them gone.
        deadline = time.monotonic() + float(self.options.cleanup_timeout)
        compute = self.clients.compute
        pollers = []
        for name in self.ledger.of_kind("vm"):
            try:
                pollers.append(compute.virtual_machines.begin_delete(self.group, name))
            except Exception as exc:
                if not gone(exc):
                    logger.warning("could not delete VM %s: %s", name, one_line(exc, 200))
        try:
            wait_until(lambda: all(p.done() for p in pollers), deadline, "deleting the run's VMs")
        except InfrastructureError as exc:
            logger.warning("%s", exc)
        return self.ledger.delete()


def _state(statuses: list[Any]) -> Observed:
    """A VM's instance view as pending, running or stopped (with Azure's reason)."""
    codes = {str(s.code): s for s in statuses if s.code}
    for code, status in codes.items():
        if code.startswith("ProvisioningState/failed"):
            why = code.split("/")[2] if code.count("/") >= 2 else "failed"
            return Observed("stopped", f"provisioning failed ({why}): {one_line(status.message or code, 300)}")
    power = next((c.split("/", 1)[1] for c in codes if c.startswith("PowerState/")), "")
    if power == "running":
        return Observed("running")
    if power in ("stopped", "stopping", "deallocated", "deallocating"):
        return Observed("stopped", f"the VM is {power}")
    return Observed("pending")
