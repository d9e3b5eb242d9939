"""Replay a VM's role with the local Docker engine: ``flowrig vm run-local``.

The plan of each container is read from the very ``docker run`` line the VM's script
runs (:func:`~flowrig.backends.vm.cloudinit.container_arguments`), so a replay cannot
drift from the VM: the same image, command, environment, labels, read-only root,
memory file systems, dropped capabilities, ``no-new-privileges`` and process limit,
and host networking by default (a VM is its role's machine). Three things differ:

- the container is named after the VM (``flowrig-RUN-ROLE[-N]``), since several roles
  share one engine here where each VM has one container;
- a role whose certificates come from a cloud's secret store cannot read it without
  the VM's identity: it gets the certificates of ``--certs DIR`` on its stdin instead
  (``FLOWRIG_TLS_FROM=stdin``, :mod:`flowrig.certs.delivery`), the secret's reference
  left out; a ``baked`` role keeps the image's own;
- nothing logs in to a registry: the engine must have the image already.

:func:`plan_replay` is pure; :func:`run` applies a replay through
:func:`flowrig.containers.group.run_group`.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Iterable, Mapping, TextIO

from flowrig.backends.vm import cloudinit
from flowrig.backends.vm.cloudinit import VMRole
from flowrig.certs.delivery import FROM_ENV, SECRET_REF_ENV
from flowrig.containers import ContainerPlan
from flowrig.errors import BadInput

if TYPE_CHECKING:
    from flowrig.certs import TLSMaterial

#: The network a replayed role joins unless told otherwise: the host's, as on its VM.
HOST_NETWORK = "host"
#: Labels of a network ``--network NAME`` creates (kept for the invocations that meet there).
NETWORK_LABELS = {"flowrig.run-local": "network"}
#: The line that begins every document :func:`cloudinit.render` writes.
HEADER = "#cloud-config"


@dataclass(frozen=True)
class Replay:
    """One role to replay: where it came from, the role, and the container to create.

    Attributes
    ----------
    source
        The file the role was read from (for messages).
    role
        The role as its VM would run it.
    plan
        The local container.
    delivers_certificates
        The role's certificates are written to its stdin at its start.
    """

    source: str
    role: VMRole
    plan: ContainerPlan
    delivers_certificates: bool

    @property
    def label(self) -> str:
        """What its log lines are prefixed with."""
        return self.role.name


def split_documents(text: str) -> list[str]:
    """The cloud-init documents in ``text``: one file each, or the concatenation
    ``flowrig vm cloud-init --role both`` prints (each begins with ``#cloud-config``;
    inside a document that line only ever appears indented)."""
    documents: list[list[str]] = []
    for line in text.splitlines(keepends=True):
        if line.rstrip("\r\n") == HEADER or not documents:
            documents.append([])
        documents[-1].append(line)
    # The blank line between two documents belongs to neither.
    return ["".join(lines).rstrip() + "\n" for lines in documents if "".join(lines).strip()]


def load_roles(texts: Mapping[str, str]) -> list[tuple[str, VMRole]]:
    """``(source, role)`` of every document in ``texts`` (source -> its text).

    Raises
    ------
    BadInput
        Naming the file that is no flowrig cloud-init.
    """
    roles = []
    for source, text in texts.items():
        documents = split_documents(text)
        if not documents:
            raise BadInput(f"{source} is empty: pass a file that flowrig vm cloud-init wrote")
        for document in documents:
            try:
                roles.append((source, cloudinit.parse(document)))
            except BadInput as exc:
                raise BadInput(f"{source}: {exc}; pass a file that flowrig vm cloud-init wrote") from None
    return roles


def _docker_run_options(args: list[str]) -> dict[str, Any]:
    """What the ``docker run`` flags of :func:`cloudinit.container_arguments` ask for.

    Every flag it renders must be known here: one that is not fails loudly (and the
    unit tests with it) instead of being left out of the replay.
    """
    if args[:2] != ["docker", "run"]:
        raise ValueError(f"not a docker run line: {args[:2]}")
    found: dict[str, Any] = {
        "tmpfs": {}, "cap_drop": [], "security_opt": [], "labels": {}, "environment": {},
    }
    words = iter(args[2:])
    for flag in words:
        if flag.startswith("--net="):
            found["network"] = flag.split("=", 1)[1]
        elif flag == "--restart=no":
            pass  # the engine's default: a replayed role that exits stays exited
        elif flag == "--read-only":
            found["read_only"] = True
        elif flag == "--name":
            found["name"] = next(words)
        elif flag == "--tmpfs":
            path, _, mount = next(words).partition(":")
            found["tmpfs"][path] = mount
        elif flag == "--shm-size":
            found["shm_size"] = next(words)
        elif flag == "--cap-drop":
            found["cap_drop"].append(next(words))
        elif flag == "--security-opt":
            found["security_opt"].append(next(words))
        elif flag == "--pids-limit":
            found["pids_limit"] = int(next(words))
        elif flag == "--label":
            key, _, value = next(words).partition("=")
            found["labels"][key] = value
        elif flag == "-e":
            key, _, value = next(words).partition("=")
            found["environment"][key] = value
        else:
            raise ValueError(f"the VM's docker run line has {flag}, which a replay does not reproduce")
    return found


def vm_container_plan(role: VMRole) -> ContainerPlan:
    """The container ``role``'s VM runs, exactly as its script's ``docker run`` line has it."""
    options = _docker_run_options(cloudinit.container_arguments(role))
    return ContainerPlan(
        name=options["name"],
        image=role.image,
        command=tuple(role.command),
        labels=options["labels"],
        environment=options["environment"],
        network=options["network"],
        read_only=options.get("read_only", False),
        tmpfs=options["tmpfs"],
        shm_size=options.get("shm_size"),
        cap_drop=tuple(options["cap_drop"]),
        security_opt=tuple(options["security_opt"]),
        pids_limit=options.get("pids_limit"),
    )


def replay_plan(role: VMRole, network: str = HOST_NETWORK, *, deliver: bool) -> ContainerPlan:
    """The local container of ``role``: its VM's, named after the VM, on ``network``,
    with its certificates on stdin when ``deliver``."""
    plan = vm_container_plan(role)
    environment = dict(plan.environment)
    if deliver:
        environment[FROM_ENV] = "stdin"
        environment.pop(SECRET_REF_ENV, None)
    # On the host's network a container has the host's name; elsewhere it answers to its VM's.
    named = network != HOST_NETWORK
    return replace(
        plan,
        name=role.name,
        network=network,
        environment=environment,
        stdin_open=deliver,
        hostname=role.name if named else None,
        aliases=(role.name,) if named else (),
    )


def plan_replay(
    roles: Iterable[tuple[str, VMRole]], *, network: str = HOST_NETWORK, have_certs: bool
) -> list[Replay]:
    """The containers that replay ``roles`` (``(source, role)`` as :func:`load_roles` gives).

    Raises
    ------
    BadInput
        A role reads its certificates from a cloud's secret store and ``have_certs`` is
        false; ``have_certs`` while every role uses the image's baked certificates; the
        same VM twice.
    """
    replays: list[Replay] = []
    seen: dict[str, str] = {}
    for source, role in roles:
        if role.name in seen:
            raise BadInput(
                f"{source} and {seen[role.name]} both hold the {role.role} VM {role.name}: pass each VM's file once"
            )
        seen[role.name] = source
        deliver = role.tls.source != "baked"
        if deliver and not have_certs:
            raise BadInput(
                f"the {role.role} in {source} reads its certificates from {role.tls.source}, which needs its VM's "
                "identity: pass --certs DIR (ca.crt, tls.crt, tls.key, e.g. from flowrig certs generate) "
                "to hand them over stdin"
            )
        replays.append(Replay(source, role, replay_plan(role, network, deliver=deliver), deliver))
    if have_certs and replays and not any(replay.delivers_certificates for replay in replays):
        raise BadInput(
            "--certs is for roles with per-run certificates, and these use the image's baked ones "
            "(tls = \"baked\"): leave --certs out"
        )
    return replays


# --- applying a replay (side effects through flowrig.containers) ----------------------
def _require_images(client: Any, replays: list[Replay]) -> None:
    from flowrig.containers import engine

    for image in sorted({replay.plan.image for replay in replays}):
        try:
            engine.require_image(client, image)
        except BadInput:
            raise BadInput(
                f"image {image!r} is not on this machine's Docker engine, and run-local logs in to no registry: "
                f"docker pull {image} (after docker login), or build it with flowrig build PROJECT --tag {image}"
            ) from None


def run(
    replays: list[Replay],
    tls: "TLSMaterial | None" = None,
    *,
    detach: bool = False,
    out: TextIO | None = None,
    client: Any = None,
) -> int:
    """Create and start the containers of ``replays``.

    With ``detach``, print their names and leave them running. Otherwise stream their
    logs to ``out`` (each line prefixed with its VM's name) until one exits or this
    process is interrupted (Ctrl-C, SIGTERM), then remove every container started
    here, and return the exit code of the one that exited
    (:func:`flowrig.containers.group.run_group`).

    Raises
    ------
    BadInput
        An image is not on the engine.
    InfrastructureError
        Docker is unreachable, a container cannot be created or started.
    """
    from flowrig.certs import delivery
    from flowrig.containers import engine
    from flowrig.containers.group import Member, Network, run_group

    out = out or sys.stdout
    client = client or engine.connect()
    _require_images(client, replays)
    members = []
    for replay in replays:
        stdin = None
        if replay.delivers_certificates:
            if tls is None:
                raise ValueError(f"{replay.label} reads its certificates from stdin: pass them")
            stdin = delivery.encode(tls)
        # Every role is essential: a VM whose role exits has nothing else to do.
        members.append(Member(replay.plan, label=replay.label, stdin=stdin))
    networks = [
        Network(name, labels=NETWORK_LABELS)
        for name in sorted({replay.plan.network for replay in replays} - {HOST_NETWORK})
    ]
    # In parallel: a worker retries its scheduler until it listens.
    return run_group(client, members, networks, out=out, detach=detach)
