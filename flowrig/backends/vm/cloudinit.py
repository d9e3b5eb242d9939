"""What one VM of a run is given at boot: its cloud-init, rendered from a typed model (pure).

A VM runs one role of one run: the run's image as the VM's only container, with host
networking (the VM is the role's machine), no capabilities and a read-only root. Its
user data is a ``#cloud-config`` document with two files and one command:

``/etc/flowrig/role.json``
    the :class:`VMRole` itself, so that ``flowrig vm run-local`` replays exactly what
    the VM would run;
``/usr/local/sbin/flowrig-role``
    the shell script that gets Docker (unless the machine image has it), logs in to a
    private registry with the VM's own identity, and runs the container.

Nothing here creates anything or needs credentials: ``flowrig vm cloud-init`` prints it.
No key material is ever part of it: per-run certificates stay in the cloud's secret
store, named by reference, and the container reads them at its start with the VM's
identity (:mod:`flowrig.certs.stores`). :func:`check_user_data` scans what was rendered
for private keys before anything is created.
"""

from __future__ import annotations

import json
import shlex
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field

from flowrig.common.environ import check_env_name
from flowrig.errors import BadInput
from flowrig.project.secret_rules import secret_looking, value_secret
from flowrig.roles import DASHBOARD_PORT

#: Where the role's model and its script are written on the VM.
ROLE_FILE = "/etc/flowrig/role.json"
SCRIPT_FILE = "/usr/local/sbin/flowrig-role"
#: The only memory file systems of a role container; /dev/shm holds delivered certificates.
SCRATCH = "/tmp:rw,nosuid,nodev,noexec"
SHM_SIZE = "64m"
#: The most processes and threads a role's container may run (as on the docker backend).
PIDS_LIMIT = {"scheduler": 256, "worker": 1024}
#: Where Prefect keeps its home inside a read-only container.
PREFECT_HOME = "/tmp/prefect"
#: Times the script tries to log in and pull the image, 10 s apart.
PULL_TRIES = 18
#: Seconds the script waits for the Docker daemon after installing or starting it.
DOCKER_WAIT = 120

#: How a VM's certificates arrive: the image's own files, or the cloud's secret store.
TLSSource = Literal["baked", "aws-secret", "azure-keyvault", "gcp-secret"]
#: Registries whose login the VM does with its own identity.
RegistryKind = Literal["ecr", "acr", "gar"]


class RegistryLogin(BaseModel):
    """A private registry the VM logs in to before it pulls the image.

    Parameters
    ----------
    kind
        ``ecr`` (Amazon ECR, with the instance profile through the AWS CLI), ``acr``
        (Azure Container Registry, with the VM's managed identity) or ``gar`` (Google
        Artifact Registry, with the VM's service account).
    host
        The registry's host name, the first part of the image reference.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: RegistryKind
    host: str


class TLSDelivery(BaseModel):
    """Where the role's certificates come from: ``baked`` (the image's files), or a
    secret-store ``source`` with the secret's ``ref`` (an ARN, a Key Vault secret URL,
    a Secret Manager resource name): a name, never the certificates themselves."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    source: TLSSource = "baked"
    ref: str | None = None


class VMRole(BaseModel):
    """One VM's role in one run: everything its cloud-init runs.

    Parameters
    ----------
    run_id, role, name
        The run, ``scheduler`` or ``worker``, and the VM's own name (a worker's Dask
        name too, so the scheduler's workers and the cloud's VMs match).
    image
        The run's image.
    command
        The image's arguments: its role and the role's flags (TLS flags are the
        entry point's own).
    environment
        What the container's environment holds besides the certificates' source;
        nothing secret (:func:`check_environment`).
    tls
        Where the certificates come from.
    registry
        A private registry to log in to first, or ``None``.
    install_docker
        Install Docker from the distribution's packages when the machine image has
        none; ``False`` when the machine image is known to have it.
    gpus
        Give the container every GPU of the VM (``docker run --gpus all``: the machine
        image needs NVIDIA's driver and container toolkit).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    version: Literal[1] = 1
    run_id: str
    role: Literal["scheduler", "worker"]
    name: str
    image: str
    command: tuple[str, ...]
    environment: dict[str, str] = Field(default_factory=dict)
    tls: TLSDelivery = TLSDelivery()
    registry: RegistryLogin | None = None
    install_docker: bool = True
    gpus: bool = False

    @property
    def container_name(self) -> str:
        return f"flowrig-{self.role}"


def scheduler_arguments(
    no_client_timeout: float | None, dashboard: bool, extra: tuple[str, ...] = ()
) -> tuple[str, ...]:
    """The image's arguments for a scheduler VM: TLS on its default port, the dashboard
    only when asked for, and the lifetime preload's ``--no-client-timeout``."""
    lifetime = () if no_client_timeout is None else ("--no-client-timeout", f"{no_client_timeout:g}")
    dash = ("--dashboard-address", f":{DASHBOARD_PORT}") if dashboard else ("--no-dashboard",)
    return ("scheduler", *dash, *lifetime, *extra)


def worker_arguments(scheduler_address: str, name: str, threads: int, extra: tuple[str, ...] = ()) -> tuple[str, ...]:
    """The image's arguments for a worker VM: its scheduler, its name, its threads."""
    dash = () if any(a.startswith(("--dashboard", "--no-dashboard")) for a in extra) else ("--no-dashboard",)
    return (
        "worker", scheduler_address, "--name", name, "--nthreads", str(threads),
        "--memory-limit", "auto", *dash, *extra,
    )


def check_environment(environment: dict[str, str], allowed: frozenset[str] = frozenset()) -> None:
    """Refuse a variable that is no variable name or whose name says it is secret:
    user data is readable by anyone who may describe the VM, and from its metadata
    service.

    Raises
    ------
    BadInput
        One line naming the variable and where a secret goes instead.
    """
    for name, value in environment.items():
        check_env_name("environment variable", name)
        if name not in allowed and (secret_looking(name) or value_secret(str(value), name) is not None):
            raise BadInput(
                f"environment variable {name} looks like a secret (by its name or value), and a VM's user data "
                "is readable by anyone who may describe the VM: give the flow its secrets through your cloud's "
                "secret store or Prefect blocks"
            )


def container_arguments(role: VMRole) -> list[str]:
    """``docker run`` and its arguments for ``role`` (without the image's arguments)."""
    env = {"FLOWRIG_RUN_ID": role.run_id, "PREFECT_HOME": PREFECT_HOME, **role.environment}
    if role.tls.source != "baked":
        env["FLOWRIG_TLS_FROM"] = role.tls.source
        env["FLOWRIG_TLS_SECRET_REF"] = str(role.tls.ref)
    args = [
        "docker", "run", "--name", role.container_name, "--net=host", "--restart=no",
        "--read-only", "--tmpfs", SCRATCH, "--shm-size", SHM_SIZE,
        "--cap-drop", "ALL", "--security-opt", "no-new-privileges:true",
        "--pids-limit", str(PIDS_LIMIT[role.role]),
        "--label", f"flowrig.run-id={role.run_id}", "--label", f"flowrig.role={role.role}",
        *(["--gpus", "all"] if role.gpus else []),
    ]
    for key, value in sorted(env.items()):
        args += ["-e", f"{key}={value}"]
    return args


def _docker_setup(role: VMRole) -> str:
    if not role.install_docker:
        return (
            "command -v docker >/dev/null 2>&1 || "
            "fail 'the machine image has no docker, yet bootstrap = false: use an image with Docker, "
            "or leave bootstrap out of [cluster.options]'\n"
        )
    # The distribution's own packages: its mirrors are reachable from private subnets
    # (through the cloud's package mirror or proxy) where Docker's download site is not.
    return (
        "if ! command -v docker >/dev/null 2>&1; then\n"
        "    if command -v apt-get >/dev/null 2>&1; then\n"
        "        export DEBIAN_FRONTEND=noninteractive\n"
        "        apt-get update -q && apt-get install -y -q docker.io\n"
        "    elif command -v dnf >/dev/null 2>&1; then dnf install -y -q docker\n"
        "    elif command -v yum >/dev/null 2>&1; then yum install -y -q docker\n"
        "    else fail 'no docker and no package manager to install it: use a machine image with Docker'\n"
        "    fi\n"
        "fi\n"
    )


def _registry_login(login: RegistryLogin | None) -> str:
    if login is None:
        return ""
    host = shlex.quote(login.host)
    if login.kind == "ecr":
        # The instance profile's credentials, through the AWS CLI of the machine image.
        region = login.host.split(".")[3] if login.host.count(".") >= 5 else ""
        return (
            "command -v aws >/dev/null 2>&1 || fail 'logging in to ECR needs the AWS CLI on the machine image'\n"
            f"aws ecr get-login-password --region {shlex.quote(region)} | "
            f"docker login --username AWS --password-stdin {host}\n"
        )
    if login.kind == "acr":
        # The managed identity's token for Azure Resource Manager, exchanged for a
        # registry refresh token (the Azure CLI is not needed).
        return (
            "aad=$(curl -fsS -H Metadata:true 'http://169.254.169.254/metadata/identity/oauth2/token"
            "?api-version=2018-02-01&resource=https://management.azure.com/' "
            "| sed -n 's/.*\"access_token\":\"\\([^\"]*\\)\".*/\\1/p')\n"
            f"acr=$(curl -fsS -X POST -d \"grant_type=access_token&service={login.host}&access_token=$aad\" "
            f"https://{login.host}/oauth2/exchange | sed -n 's/.*\"refresh_token\":\"\\([^\"]*\\)\".*/\\1/p')\n"
            "printf '%s' \"$acr\" | docker login --username 00000000-0000-0000-0000-000000000000 "
            f"--password-stdin {host}\n"
        )
    # gar: the service account's access token from the metadata server.
    return (
        "token=$(curl -fsS -H Metadata-Flavor:Google "
        "http://metadata.google.internal/computeMetadata/v1/instance/service-accounts/default/token "
        "| sed -n 's/.*\"access_token\":\"\\([^\"]*\\)\".*/\\1/p')\n"
        f"printf '%s' \"$token\" | docker login --username oauth2accesstoken --password-stdin {host}\n"
    )


def role_script(role: VMRole) -> str:
    """The shell script a VM runs at boot (``runcmd``) for ``role``."""
    run = shlex.join([*container_arguments(role), role.image, *role.command])
    return (
        "#!/bin/sh\n"
        f"# flowrig {role.role} {role.name} of run {role.run_id}: the run's image is this VM's only workload.\n"
        "set -eu\n"
        "fail() { echo \"flowrig: $*\" >&2; exit 1; }\n"
        + _docker_setup(role)
        + "docker info >/dev/null 2>&1 || { command -v systemctl >/dev/null 2>&1 && systemctl start docker; } || true\n"
        + f"i=0; until docker info >/dev/null 2>&1; do i=$((i+1)); [ $i -lt {DOCKER_WAIT} ] "
        "|| fail 'the docker daemon did not start'; sleep 1; done\n"
        # A pull right granted to the run's identity moments ago may take a minute to
        # hold: the login and the pull are tried again for up to PULL_TRIES x 10 s.
        + "pull() {\n"
        + _registry_login(role.registry)
        + f"docker pull {shlex.quote(role.image)}\n"
        + "}\n"
        + f"n=0; until pull; do n=$((n+1)); [ $n -lt {PULL_TRIES} ] "
        f"|| fail 'could not pull {role.image}'; sleep 10; done\n"
        + f"docker rm -f {role.container_name} >/dev/null 2>&1 || true\n"
        + f"exec {run}\n"
    )


class _Dumper(yaml.SafeDumper):
    """Multi-line strings as literal blocks, so the user data reads as the files it writes."""


def _text(dumper: yaml.SafeDumper, value: str) -> yaml.Node:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _text)


def render(role: VMRole) -> str:
    """The ``#cloud-config`` user data of the VM that runs ``role``."""
    document = {
        "write_files": [
            {"path": ROLE_FILE, "permissions": "0644", "owner": "root:root",
             "content": role.model_dump_json(indent=2) + "\n"},
            {"path": SCRIPT_FILE, "permissions": "0755", "owner": "root:root", "content": role_script(role)},
        ],
        "runcmd": [[SCRIPT_FILE]],
    }
    header = f"#cloud-config\n# flowrig: {role.role} {role.name} of run {role.run_id}\n"
    return header + yaml.dump(document, Dumper=_Dumper, sort_keys=False, width=10_000)


def parse(text: str) -> VMRole:
    """The :class:`VMRole` of user data that :func:`render` made.

    Raises
    ------
    BadInput
        Not cloud-config, or no flowrig role in it.
    """
    if not text.startswith("#cloud-config"):
        raise BadInput("this is not cloud-config user data (its first line is not #cloud-config)")
    try:
        document = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise BadInput(f"the cloud-config is not valid YAML: {str(exc).splitlines()[0]}") from None
    files = document.get("write_files") if isinstance(document, dict) else None
    for entry in files or ():
        if isinstance(entry, dict) and entry.get("path") == ROLE_FILE:
            try:
                return VMRole.model_validate(json.loads(entry.get("content") or ""))
            except ValueError as exc:
                why = str(exc).splitlines()[0]
                raise BadInput(f"{ROLE_FILE} in the cloud-config is not a flowrig role: {why}") from None
    raise BadInput(f"the cloud-config holds no {ROLE_FILE}: it was not rendered by flowrig")


def check_user_data(text: str, what: str) -> None:
    """Refuse user data that holds a private key in any form flowrig knows.

    Raises
    ------
    BadInput
        Naming ``what`` (the role's VM) and the form found.
    """
    from flowrig.certs.scan import private_keys_in_bytes

    for found in private_keys_in_bytes(text.encode()):
        raise BadInput(
            f"the user data of {what} holds a private key ({found.form}): nothing was created; "
            "certificates go through the cloud's secret store"
        )
