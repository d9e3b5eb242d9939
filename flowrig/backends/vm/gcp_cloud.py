"""The ``gcp`` backend's calls to Google Cloud: one run's firewall rules, service account,
secret and instances.

The API clients are made in :class:`~.gcp_clients.GCPClients`, the one boundary with
the SDK (:mod:`.gcp_clients`). Each resource is recorded on the run's
:class:`~flowrig.backends.ledger.Ledger` in the statement that creates it.

The run's firewall rules admit the scheduler port (and the dashboard's, only with
``dashboard``) from the subnetwork's own range to instances with the run's network tag,
and every TCP port between the run's instances (workers listen on random ones). The
instances have no external address unless ``use_private_ip = false``, and run as the
run's own service account, which may read the run's secret and nothing else, and pull
from the Artifact Registry repository of the run's image (``roles/artifactregistry.reader``
on that repository alone; the binding is removed with the run). Firewall rules and
service accounts take no labels: their names and descriptions name the run.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import time
from typing import TYPE_CHECKING, Any, Callable, Mapping

from flowrig.backends.ledger import Ledger, retry
from flowrig.backends.placement import SPOT
from flowrig.backends.pool import Observed
from flowrig.backends.vm.cloud import Cloud, Created, VMRequest
from flowrig.backends.vm.gcp_clients import (
    SCOPES,
    GCPClients,
    gcp_errors,
    gcp_label,
    gcp_labels,
    gone,
    http_status,
    retryable,
)
from flowrig.errors import BadInput, InfrastructureError, one_line
from flowrig.roles import DASHBOARD_PORT, SCHEDULER_PORT

if TYPE_CHECKING:
    from flowrig.backends.vm.cloudinit import RegistryLogin

logger = logging.getLogger("flowrig.vm")

#: Seconds a new service account may take to be known to IAM and Compute Engine.
ACCOUNT_PROPAGATION = 120.0
#: Seconds an operation of creating a firewall rule may take.
OPERATION_TIMEOUT = 300.0
_STATES = {"PROVISIONING": "pending", "STAGING": "pending", "RUNNING": "running",
           "STOPPING": "stopped", "TERMINATED": "stopped", "SUSPENDING": "stopped", "SUSPENDED": "stopped"}
_CAPACITY = {"ZONE_RESOURCE_POOL_EXHAUSTED", "QUOTA_EXCEEDED", "ZONE_RESOURCE_POOL_EXHAUSTED_WITH_DETAILS"}
#: What the run's service account is given on the repository of the run's image.
REGISTRY_READER = "roles/artifactregistry.reader"
#: The IAM policy version that keeps conditional bindings intact through a read and a write.
POLICY_VERSION = 3
#: ``gcr.io`` hosts as Artifact Registry serves them: ``host -> (location, repository)``.
GCR_REPOSITORIES = {"gcr.io": ("us", "gcr.io"), "us.gcr.io": ("us", "us.gcr.io"),
                    "eu.gcr.io": ("europe", "eu.gcr.io"), "asia.gcr.io": ("asia", "asia.gcr.io")}


def artifact_repository(image: str) -> str:
    """The Artifact Registry repository of ``image``: ``projects/P/locations/L/repositories/R``.

    ``LOCATION-docker.pkg.dev/PROJECT/REPOSITORY/...``, or ``[us.|eu.|asia.]gcr.io/PROJECT/...``
    (a ``gcr.io`` repository of Artifact Registry); a domain-scoped project
    (``example.com:proj``) is written ``example.com/proj`` in an image's path.

    Raises
    ------
    BadInput
        Another ``gcr.io`` host, or a path without project and repository.
    """
    host, _, path = image.partition("/")
    parts = path.split("/")
    if len(parts) > 2 and "." in parts[0]:
        parts = [f"{parts[0]}:{parts[1]}", *parts[2:]]
    if host.endswith("-docker.pkg.dev") and len(parts) >= 3:
        return f"projects/{parts[0]}/locations/{host.removesuffix('-docker.pkg.dev')}/repositories/{parts[1]}"
    if host in GCR_REPOSITORIES and len(parts) >= 2:
        location, repository = GCR_REPOSITORIES[host]
        return f"projects/{parts[0]}/locations/{location}/repositories/{repository}"
    raise BadInput(
        f"image {image} names no Artifact Registry repository of a project: use "
        "LOCATION-docker.pkg.dev/PROJECT/REPOSITORY/IMAGE, or registry_login = false for a public image"
    )


def with_member(policy: Mapping[str, Any], role: str, member: str) -> dict | None:
    """``policy`` with ``member`` in ``role``'s unconditional binding; ``None`` when it is there already."""
    bindings = [dict(b) for b in policy.get("bindings") or []]
    plain = [b for b in bindings if b.get("role") == role and not b.get("condition")]
    if any(member in b.get("members", []) for b in plain):
        return None
    if plain:
        plain[0]["members"] = [*plain[0].get("members", []), member]
    else:
        bindings.append({"role": role, "members": [member]})
    return {**policy, "version": POLICY_VERSION, "bindings": bindings}


def without_member(policy: Mapping[str, Any], role: str, member: str) -> dict | None:
    """``policy`` without ``member`` in ``role``'s unconditional bindings; ``None`` when it is not there."""
    bindings, changed = [], False
    for binding in policy.get("bindings") or []:
        members = binding.get("members", [])
        if binding.get("role") == role and not binding.get("condition") and member in members:
            changed = True
            members = [m for m in members if m != member]
            if not members:
                continue
        bindings.append({**binding, "members": members})
    return {**policy, "version": POLICY_VERSION, "bindings": bindings} if changed else None


class GCPCloud(Cloud):
    """One run's resources in one project and zone (see the module's docstring).

    Parameters
    ----------
    run_id
        The run.
    options
        The project's :class:`~flowrig.backends.vm.gcp.GCPOptions`.
    clients
        The API clients; made from the environment's credentials by default.
    """

    name = "gcp"
    market_words = {"spot": "Compute Engine Spot", "on-demand": "standard Compute Engine"}

    def __init__(self, run_id: str, options: Any, clients: GCPClients | None = None) -> None:
        if not options.zone:
            raise BadInput("the gcp backend needs [cluster.options] zone, e.g. zone = 'europe-west1-b'")
        self.clients = clients or GCPClients()
        self.project = options.projectid or self.clients.project
        if not self.project:
            raise BadInput("no Google Cloud project: set projectid in [cluster.options] or GOOGLE_CLOUD_PROJECT")
        self.run_id = run_id
        self.options = options
        self.zone = options.zone
        self.region = options.zone.rsplit("-", 1)[0]
        self.network_project = options.network_projectid or self.project
        self.labels_ = gcp_labels(self.labels(run_id, options.tags))
        self.tag = gcp_label(f"flowrig-{run_id}")
        self.ledger = Ledger(float(options.cleanup_timeout), gone=gone, retryable=retryable)
        self.subnetwork = ""
        self.subnet_range = ""
        self._operations: dict[str, str] = {}
        #: Each role's and each worker machine type's architecture (``amd64``, ``arm64``) (:meth:`check`).
        self.archs: dict[str, str] = {}
        account = gcp_label(f"flowrig-{run_id}").replace("_", "-")
        if len(account) > 30:
            account = "flowrig-" + hashlib.sha256(run_id.encode()).hexdigest()[:22]
        self.account_email = f"{account}@{self.project}.iam.gserviceaccount.com"
        self._account_id = account

    @property
    def secret_name(self) -> str:
        return f"projects/{self.project}/secrets/flowrig-{self.run_id}-tls"

    def network_description(self) -> str:
        where = self.subnet_range or "its subnetwork"
        return f"network {self.options.network} ({where}) of project {self.network_project}"

    # --- operations ----------------------------------------------------------------------
    def _wait(self, operation: Mapping[str, Any], deadline: float, what: str) -> None:
        """Wait on a zone or global operation until DONE; its error raised as one line."""
        compute, name = self.clients.compute, operation["name"]
        while operation.get("status") != "DONE":
            if time.monotonic() > deadline:
                raise TimeoutError(f"{what} had not finished in time")
            if operation.get("zone"):
                operation = compute.zoneOperations().wait(
                    project=self.project, zone=self.zone, operation=name).execute()
            else:
                operation = compute.globalOperations().wait(project=self.network_project, operation=name).execute()
        errors = (operation.get("error") or {}).get("errors") or []
        if errors:
            first = errors[0]
            raise InfrastructureError(f"Google Cloud refused {what}: {first.get('code')}: {first.get('message')}")

    # --- check ---------------------------------------------------------------------------
    def check(self, image: str) -> None:
        """The machine types exist in the zone, the workers' (each worker group's) have their GPUs, and
        each runs the image's architecture (read-only); each VM's default boot image follows
        its machine type's architecture."""
        from flowrig.backends.vm.gcp_shapes import check_run

        self.archs = check_run(self.clients.compute, self.project, self.zone, self.options, image, self.worker_groups)

    # --- prepare -------------------------------------------------------------------------
    def prepare(self, dashboard: bool) -> None:
        compute = self.clients.compute
        subnet = self.options.subnetwork or self.options.network
        with gcp_errors(f"reading subnetwork {subnet} in {self.region}"):
            found = compute.subnetworks().get(project=self.network_project, region=self.region,
                                              subnetwork=subnet).execute()
        self.subnetwork, self.subnet_range = found["selfLink"], found["ipCidrRange"]
        network = f"projects/{self.network_project}/global/networks/{self.options.network}"
        ports = [str(SCHEDULER_PORT)] + ([str(DASHBOARD_PORT)] if dashboard else [])
        self._firewall("dask", network, {
            "allowed": [{"IPProtocol": "tcp", "ports": ports}], "sourceRanges": [self.subnet_range],
            "description": f"flowrig run {self.run_id}: Dask ports from subnetwork {subnet} only",
        })
        self._firewall("internal", network, {
            "allowed": [{"IPProtocol": "tcp"}], "sourceTags": [self.tag],
            "description": f"flowrig run {self.run_id}: between the run's instances",
        })
        self._create_account()

    def _firewall(self, suffix: str, network: str, rule: dict) -> None:
        name = f"{self.tag}-{suffix}"
        compute = self.clients.compute
        body = {"name": name, "network": network, "direction": "INGRESS", "priority": 1000,
                "targetTags": [self.tag], **rule}
        with gcp_errors(f"creating firewall rule {name}"):
            operation = compute.firewalls().insert(project=self.network_project, body=body).execute()
            self.ledger.record("firewall", name, lambda d: self._wait(
                compute.firewalls().delete(project=self.network_project, firewall=name).execute(),
                d, f"deleting firewall rule {name}"))
            self._wait(operation, time.monotonic() + OPERATION_TIMEOUT, f"creating firewall rule {name}")

    def _create_account(self) -> None:
        accounts = self.clients.iam.projects().serviceAccounts()
        path = f"projects/{self.project}/serviceAccounts/{self.account_email}"
        body = {"accountId": self._account_id, "serviceAccount": {
            "displayName": f"flowrig run {self.run_id}",
            "description": f"flowrig run {self.run_id}: its instances; reads the run's certificates only",
        }}
        with gcp_errors(f"creating service account {self.account_email}"):
            accounts.create(name=f"projects/{self.project}", body=body).execute()
            self.ledger.record("service-account", self.account_email,
                               lambda _: accounts.delete(name=path).execute())

    # --- the run's secret ----------------------------------------------------------------
    def store_certificates(self, line: str) -> str:
        secrets = self.clients.secretmanager.projects().secrets()
        name = self.secret_name
        with gcp_errors(f"creating secret {name}"):
            secrets.create(parent=f"projects/{self.project}", secretId=name.rsplit("/", 1)[1],
                           body={"replication": {"automatic": {}}, "labels": self.labels_}).execute()
            self.ledger.record("secret", name, lambda _: secrets.delete(name=name).execute())
            secrets.addVersion(parent=name, body={"payload": {"data": base64.b64encode(line.encode()).decode()}}
                               ).execute()
            policy = {"bindings": [{"role": "roles/secretmanager.secretAccessor",
                                    "members": [f"serviceAccount:{self.account_email}"]}]}
            # A just-made account may be unknown to IAM for a little while (400).
            self._retry_new_account(lambda: secrets.setIamPolicy(resource=name, body={"policy": policy}).execute())
        return name

    def _retry_new_account(self, call: Any, *, conflicts: bool = False) -> Any:
        """``call``, again while the answer says the run's service account does not exist
        (and, with ``conflicts``, while a policy changed between its read and its write)."""
        def unknown(exc: BaseException) -> bool:
            return (http_status(exc) in (400, 404) and self.account_email in str(exc)) or (
                conflicts and http_status(exc) == 409)

        return retry(call, until=time.monotonic() + ACCOUNT_PROPAGATION, when=unknown)

    # --- the run's image ------------------------------------------------------------------
    def allow_registry(self, login: "RegistryLogin", image: str) -> None:
        from googleapiclient.errors import HttpError

        if login.kind != "gar":
            return
        repository = artifact_repository(image)
        member = f"serviceAccount:{self.account_email}"

        def grant() -> None:
            self._change_policy(repository, lambda policy: with_member(policy, REGISTRY_READER, member))

        def revoke(_: float) -> None:
            self._change_policy(repository, lambda policy: without_member(policy, REGISTRY_READER, member))

        with gcp_errors(f"letting the run's service account pull from repository {repository}"):
            try:
                self._retry_new_account(grant, conflicts=True)
            except HttpError as exc:
                if http_status(exc) in (403, 404):
                    raise BadInput(
                        f"cannot grant {REGISTRY_READER} on Artifact Registry repository {repository} "
                        f"({http_status(exc)} {one_line(exc.reason or exc, 160)}): give the runner's credentials "
                        "artifactregistry.repositories.getIamPolicy and setIamPolicy on it, or set "
                        "registry_login = false when the VMs may pull the image without logging in"
                    ) from None
                # The write may have been made and its answer lost: the teardown looks.
                self.ledger.record("repository-binding", repository, revoke)
                raise
            self.ledger.record("repository-binding", repository, revoke)

    def _change_policy(self, repository: str, change: Callable[[Mapping[str, Any]], dict | None]) -> None:
        """One read and (when ``change`` changes it) one write of the repository's IAM policy;
        the read's etag makes the write fail (409) when someone else wrote in between."""
        repositories = self.clients.artifactregistry.projects().locations().repositories()
        policy = repositories.getIamPolicy(resource=repository, options_requestedPolicyVersion=POLICY_VERSION
                                           ).execute()
        changed = change(policy)
        if changed is not None:
            repositories.setIamPolicy(resource=repository, body={"policy": changed}).execute()

    # --- instances -------------------------------------------------------------------------
    def create(self, requests: list[VMRequest]) -> Created:
        created = Created()
        instances = self.clients.compute.instances()
        for request in requests:
            try:
                with gcp_errors(f"creating instance {request.name}"):
                    insert = instances.insert(project=self.project, zone=self.zone, body=self._instance_body(request))
                    # The run's just-made service account may be unknown to Compute Engine for a while.
                    operation = self._retry_new_account(insert.execute)
            except InfrastructureError as exc:
                if not any(code in str(exc) for code in _CAPACITY):
                    raise
                created.refuse(request.name, one_line(exc, 300))
                continue
            self.ledger.record("instance", request.name, lambda d, name=request.name: self._delete_instance(name, d))
            self._operations[request.name] = operation["name"]
            created.started[request.name] = request.name
        return created

    def _instance_body(self, request: VMRequest) -> dict:
        from flowrig.backends.vm.gcp_shapes import boot_image, gpu_fields, vm_boot_image

        options = self.options
        machine = (options.scheduler_machine_type if request.role == "scheduler" else
                   request.options.get("worker_machine_type") or options.worker_machine_type) or options.machine_type
        interface: dict[str, Any] = {"subnetwork": self.subnetwork}
        if not options.use_private_ip:
            interface["accessConfigs"] = [{"type": "ONE_TO_ONE_NAT", "name": "External NAT"}]
        body: dict[str, Any] = {
            "name": request.name,
            "machineType": f"zones/{self.zone}/machineTypes/{machine}",
            "labels": {**self.labels_, "flowrig-role": request.role},
            "tags": {"items": [self.tag]},
            "metadata": {"items": [{"key": "user-data", "value": request.user_data}]},
            "disks": [{"boot": True, "autoDelete": True, "initializeParams": {
                # Per VM: a GPU worker's image has NVIDIA's driver, the others keep theirs.
                "sourceImage": boot_image(
                    vm_boot_image(options, worker=request.role == "worker", gpus=request.gpu, own=request.options),
                    self.archs.get(machine) or self.archs.get(request.role, "")),
                "diskSizeGb": str(options.filesystem_size),
                "labels": self.labels_}}],
            "networkInterfaces": [interface],
            "serviceAccounts": [{"email": self.account_email, "scopes": SCOPES}],
        }
        if request.role == "worker":
            accelerator = request.options.get("accelerator_type") or options.accelerator_type
            gpus = gpu_fields(request.gpu, accelerator, self.zone)
            body["metadata"]["items"] += gpus.pop("metadata_items", [])
            body.update(gpus)
        if request.market == SPOT:
            # Deleted, not stopped, when taken back: a stopped Spot VM would hold its disk.
            body["scheduling"] = {"provisioningModel": "SPOT", "instanceTerminationAction": "DELETE",
                                  "automaticRestart": False, "onHostMaintenance": "TERMINATE"}
        return body

    def observe(self, handles: list[str]) -> dict[str, Observed]:
        instances = self.clients.compute.instances()
        listed: dict[str, str] = {}
        with gcp_errors("listing the run's instances"):
            request = instances.list(project=self.project, zone=self.zone,
                                     filter=f'labels.flowrig-run-id = "{self.labels_["flowrig-run-id"]}"')
            while request is not None:
                answer = request.execute()
                listed.update({item["name"]: item["status"] for item in answer.get("items", [])})
                request = instances.list_next(request, answer)
        seen = {}
        for handle in handles:
            if handle in listed:
                status = listed[handle]
                state = _STATES.get(status, "pending")
                seen[handle] = Observed(state, f"the instance is {status}" if state == "stopped" else "")
            else:
                seen[handle] = Observed("stopped", self._why_missing(handle))
        return seen

    def short_of_capacity(self, reason: str) -> bool:
        # The insert operation's error, as _why_missing words it: "CODE: message".
        return reason.split(":", 1)[0] in _CAPACITY

    def _why_missing(self, handle: str) -> str:
        """The insert operation's error, when the instance was never made (capacity, quota)."""
        operation = self._operations.get(handle)
        if operation:
            with gcp_errors(f"reading the creation of instance {handle}"):
                answer = self.clients.compute.zoneOperations().get(
                    project=self.project, zone=self.zone, operation=operation).execute()
            errors = (answer.get("error") or {}).get("errors") or []
            if errors:
                return f"{errors[0].get('code')}: {one_line(errors[0].get('message') or '', 300)}"
            if answer.get("status") != "DONE":
                return "still being created"
        return "the instance was deleted"

    def _instance(self, handle: str) -> dict:
        with gcp_errors(f"reading instance {handle}"):
            return self.clients.compute.instances().get(project=self.project, zone=self.zone,
                                                         instance=handle).execute()

    def private_address(self, handle: str) -> str:
        return self._instance(handle)["networkInterfaces"][0].get("networkIP", "")

    def public_address(self, handle: str) -> str | None:
        configs = self._instance(handle)["networkInterfaces"][0].get("accessConfigs") or []
        return configs[0].get("natIP") if configs else None

    def _delete_instance(self, name: str, deadline: float | None = None) -> Any:
        operation = self.clients.compute.instances().delete(project=self.project, zone=self.zone,
                                                             instance=name).execute()
        if deadline is not None:
            self._wait(operation, deadline, f"deleting instance {name}")
        return operation

    def terminate(self, handles: list[str]) -> None:
        for handle in handles:
            try:
                with gcp_errors(f"deleting instance {handle}"):
                    self._delete_instance(handle)
            except InfrastructureError as exc:
                if exc.__context__ is None or not gone(exc.__context__):
                    raise

    def delete(self) -> list[str]:
        # Every instance at once first; the ledger then waits on each, and finds the rest gone.
        deadline = time.monotonic() + float(self.options.cleanup_timeout)
        deleting = []
        for name in self.ledger.of_kind("instance"):
            try:
                deleting.append((name, self._delete_instance(name)))
            except Exception as exc:
                if not gone(exc):
                    logger.warning("could not delete instance %s: %s", name, one_line(exc, 200))
        for name, operation in deleting:
            try:
                self._wait(operation, deadline, f"deleting instance {name}")
            except Exception as exc:
                logger.warning("instance %s: %s", name, one_line(exc, 200))
        return self.ledger.delete()
