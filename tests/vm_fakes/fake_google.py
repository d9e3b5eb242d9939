"""The fake Google Cloud SDK clients (see :mod:`tests.vm_fakes`): a world that records each
call, keeps what it was asked to make, and raises the faults a test injects; and a check
of request bodies against the discovery documents googleapiclient ships."""

from __future__ import annotations

import json

GREPO = "projects/proj-1/locations/europe-west1/repositories/runs"


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
