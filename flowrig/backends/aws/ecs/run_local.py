"""Run an ECS task definition's containers on the local Docker engine.

:func:`plan_run` turns a task definition and ``RunTask`` overrides into a list of
:class:`TaskContainer` (pure data, testable without Docker); :func:`run` applies a plan
through :mod:`flowrig.containers.engine`: a user-defined network on which each container
answers to its ECS container name (so ``dask-scheduler`` resolves), logs streamed with
the container's name in front, and every container removed at the end, Ctrl-C included.
Containers carry the labels of every flowrig run (the run id and, as role, the ECS
container name), so ``flowrig docker leftovers`` finds them too.

What ECS provides that is reproduced: image, entry point, command, environment,
``secrets`` (read from files named after them inside ``--secrets-dir``, see
:func:`secret_file_name`), ``initProcessEnabled`` (``docker run --init``), user,
working directory, memory, essential containers (the task ends when one of them
exits). What is not: IAM roles, log drivers, health checks, port mappings (containers
reach each other on the network), CPU limits, ``privileged``, added capabilities.

Every container gets the docker backend's hardening (:data:`HARDENING`): a read-only
root with a memory ``/tmp`` where nothing executes, no capabilities, no privilege gain,
a process limit; and never runs as root. A task definition that asks for root
(``user: "0"``, ``"root"``, a name the image maps to uid 0) is refused; an image that
runs as root by default runs as :data:`NON_ROOT_USER` instead. Prefect's home moves to
``/tmp`` unless the task definition sets ``PREFECT_HOME``, as on the docker backend.

Every input is checked before Docker is asked for anything, each problem one line (exit
2): the task definition's shape (:class:`TaskDefinitionDoc`), NUL bytes anywhere in it or
in the overrides, variable names, secret names and values.

Each invocation gets a network of its own (labelled with its run id, removed at the
end), so the alias ``dask-scheduler`` of one invocation never answers in another.
Invocations meant to meet, such as a replayed scheduler and its workers, name one
network explicitly (``--network``), which is created when missing and then kept.

Secret values become environment variables of the container, as ECS sets them inside
a task: on the local engine they are in the container's configuration, which only
whoever holds the Docker socket (root on this machine) can inspect.
"""

from __future__ import annotations

import json
import queue
import re
import secrets as _random
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Annotated, Any, Mapping, TextIO

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr, ValidationError

from flowrig.backends.aws.ecs.defaults import RUN_LOCAL_NETWORK
from flowrig.backends.docker.plans import PIDS_LIMIT, PREFECT_HOME, hardening
from flowrig.common.environ import check_env_name
from flowrig.containers import LABEL_ROLE, LABEL_RUN_ID, ContainerPlan
from flowrig.errors import BadInput

#: Label keys put on every container: the run id and role labels every flowrig run
#: carries (the role being the ECS container name), and the task family.
LABEL_RUN = LABEL_RUN_ID
LABEL_FAMILY = "flowrig.task-family"
LABEL_CONTAINER = LABEL_ROLE

#: What every container runs with: the docker backend's hardening (read-only root, a
#: memory /tmp mounted noexec, no capabilities, no-new-privileges), with the process
#: limit of its busiest role; stdin stays closed (run-local writes nothing to it).
HARDENING: Mapping[str, Any] = {
    **{key: value for key, value in hardening("worker").items() if key != "stdin_open"},
    "pids_limit": max(PIDS_LIMIT.values()),
}
#: Who a container runs as when its image would run it as root: nobody.
NON_ROOT_USER = "65534:65534"
#: ECS container names: letters, digits, hyphens and underscores, up to 255.
_CONTAINER_NAME = re.compile(r"^[A-Za-z0-9_-]{1,255}$")
#: Docker network names.
_NETWORK_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,254}$")
#: A user as ECS and Docker take it: ``user``, ``uid``, ``user:group``, ``uid:gid``.
_USER = re.compile(r"^[A-Za-z0-9_.][A-Za-z0-9_.-]*(:[A-Za-z0-9_.][A-Za-z0-9_.-]*)?$")


@dataclass(frozen=True)
class TaskContainer:
    """One container to create, as data.

    Attributes
    ----------
    name
        Docker container name, unique per run (``<container>-<run id>``).
    container
        The ECS container name: the container's hostname and network alias.
    image, entrypoint, command
        What to run; ``None`` keeps the image's own entry point or command.
    environment
        Plain variables, overrides applied.
    secrets
        ``variable -> file name`` inside the secrets directory (:func:`secret_file_name`).
    init
        Run an init as PID 1 (``initProcessEnabled``).
    essential
        The run ends when this container exits.
    memory_mib
        Hard memory limit, when the task definition sets one.
    network
        Docker network the container joins.
    labels
        Labels naming the run, the task family and the container.
    """

    name: str
    container: str
    image: str
    command: tuple[str, ...] | None
    entrypoint: tuple[str, ...] | None
    environment: Mapping[str, str]
    secrets: Mapping[str, str]
    init: bool
    essential: bool
    network: str
    labels: Mapping[str, str]
    user: str | None = None
    working_dir: str | None = None
    memory_mib: int | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly form (tuples as lists, mappings as dicts)."""
        return asdict(self)


class _Doc(BaseModel):
    # Only the keys run-local reads are checked, under ECS's own (camelCase) names; ECS
    # has many more, which run-local ignores.
    model_config = ConfigDict(extra="allow", strict=True)


class KeyValue(_Doc):
    name: StrictStr
    value: StrictStr = ""


class SecretRef(_Doc):
    name: StrictStr
    valueFrom: StrictStr


class LinuxParameters(_Doc):
    initProcessEnabled: StrictBool | None = None


class ContainerDoc(_Doc):
    """The part of an ECS container definition run-local reads."""

    name: StrictStr
    image: Annotated[StrictStr, Field(min_length=1)]
    command: list[StrictStr] | None = None
    entryPoint: list[StrictStr] | None = None
    environment: list[KeyValue] | None = None
    secrets: list[SecretRef] | None = None
    essential: StrictBool | None = None
    user: StrictStr | None = None
    workingDirectory: StrictStr | None = None
    memory: Annotated[StrictInt, Field(gt=0)] | None = None
    linuxParameters: LinuxParameters | None = None


class TaskDefinitionDoc(_Doc):
    """The part of an ECS task definition run-local reads."""

    family: StrictStr | None = None
    memory: StrictStr | Annotated[StrictInt, Field(gt=0)] | None = None
    containerDefinitions: Annotated[list[ContainerDoc], Field(min_length=1)]


def _where(location: tuple[Any, ...]) -> str:
    text = ""
    for part in location:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


def check_no_nul(value: Any, what: str, location: tuple[Any, ...] = ()) -> None:
    """Refuse a NUL byte in any key or string of a JSON document (Docker and the file
    system cannot take one; a C string would silently end there).

    Raises
    ------
    BadInput
        Naming where in the document it is.
    """
    # A stack, not recursion: a document nested as deep as the JSON parser allows is
    # still one line of error, never a RecursionError.
    pending = [(value, location)]
    while pending:
        item, where = pending.pop()
        if isinstance(item, str):
            if "\x00" in item:
                place = f" at {_where(where)}" if where else ""
                raise BadInput(f"{what} holds a NUL byte{place}: remove it")
        elif isinstance(item, Mapping):
            pending += [(key, where) for key in item]
            pending += [(child, (*where, key)) for key, child in item.items()]
        elif isinstance(item, list):
            pending += [(child, (*where, index)) for index, child in enumerate(item)]


def load_task_definition(document: Mapping[str, Any]) -> dict[str, Any]:
    """The task definition in ``document``: ``register-task-definition`` input, or the
    output of ``describe-task-definition`` (``{"taskDefinition": {...}}``).

    Raises
    ------
    BadInput
        When there are no container definitions, or a key run-local reads has the
        wrong type or a value ECS would refuse (one line naming it).
    """
    if not isinstance(document, Mapping):
        raise BadInput("the task definition must be a JSON object")
    data = document.get("taskDefinition", document)
    if not isinstance(data, Mapping):
        raise BadInput("the task definition's taskDefinition must be a JSON object")
    data = dict(data)
    containers = data.get("containerDefinitions")
    if not isinstance(containers, list) or not containers:
        raise BadInput("the task definition has no containerDefinitions")
    for container in containers:
        if not isinstance(container, Mapping) or not container.get("name") or not container.get("image"):
            raise BadInput("every container definition needs a name and an image")
    check_no_nul(data, "the task definition")
    try:
        parsed = TaskDefinitionDoc.model_validate(data)
    except ValidationError as exc:
        error = exc.errors(include_url=False)[0]
        raise BadInput(
            f"the task definition's {_where(error['loc'])} = {error.get('input')!r}: {error['msg'].lower()}"
        ) from None
    _task_memory_mib(parsed.memory)
    names = [container.name for container in parsed.containerDefinitions]
    for index, container in enumerate(parsed.containerDefinitions):
        where = f"containerDefinitions[{index}]"
        if not _CONTAINER_NAME.match(container.name):
            raise BadInput(
                f"the task definition's {where}.name {container.name!r} is not an ECS container name: "
                "use up to 255 letters, digits, '-' and '_'"
            )
        if any(ch.isspace() or not ch.isprintable() for ch in container.image):
            raise BadInput(f"the task definition's {where}.image {container.image!r} is not an image name")
        for item in container.environment or ():
            check_env_name(f"{where}.environment", item.name)
        for item in container.secrets or ():
            check_env_name(f"{where}.secrets", item.name)
        if container.user is not None:
            check_user(container.user, container.name)
    if len(set(names)) != len(names):
        raise BadInput(f"the task definition names a container twice: {', '.join(names)}")
    return data


def _task_memory_mib(memory: str | int | None) -> int | None:
    """A task's memory in MiB: ECS takes ``1024`` or ``"1024"`` (MiB) and ``"1 GB"``."""
    if memory is None or isinstance(memory, int):
        return memory
    match = re.fullmatch(r"\s*(\d+)\s*(GB)?\s*", memory, flags=re.IGNORECASE)
    if not match or int(match.group(1)) == 0:
        raise BadInput(
            f"the task definition's memory {memory!r} is not a size ECS takes: MiB as a number (2048), or '2 GB'"
        )
    return int(match.group(1)) * (1024 if match.group(2) else 1)


def check_user(user: str, container: str) -> str:
    """Return ``user`` unless it is malformed or names root.

    Raises
    ------
    BadInput
        For root (uid 0 or ``root``, with any group) and for a user Docker could not
        take; the message says how to run the container instead.
    """
    if not _USER.match(user):
        raise BadInput(f"container {container}'s user {user!r} is not a user: use NAME, UID, NAME:GROUP or UID:GID")
    if is_root(user):
        raise BadInput(
            f"container {container} would run as {user!r}, which is root, and run-local never runs a container as "
            "root: remove 'user' to run as the image's user (flowrig images: uid 10001), or give a non-root uid"
        )
    return user


def is_root(user: str) -> bool:
    """Whether ``user`` (``name``, ``uid``, with ``:group``) names root by itself."""
    who = user.split(":", 1)[0]
    return who == "root" or (who.isdigit() and int(who) == 0)


def uid_of(passwd: str, name: str) -> int | None:
    """The uid ``/etc/passwd`` text gives ``name``, or ``None`` when it has no such line."""
    for line in passwd.splitlines():
        fields = line.split(":")
        if len(fields) >= 3 and fields[0] == name and fields[2].isdigit():
            return int(fields[2])
    return None


def load_overrides(document: Mapping[str, Any] | None) -> dict[str, Any]:
    """``RunTask`` overrides: the ``overrides`` object itself, a whole ``RunTask``
    request (``{"overrides": {...}}``) or a described task, validated against the ECS API.

    Raises
    ------
    BadInput
        When the object does not match the ECS ``TaskOverride`` shape.
    """
    from flowrig.backends.aws.ecs.validate import check_task_overrides

    if not document:
        return {}
    check_no_nul(document, "the task overrides")
    overrides = document.get("overrides", document)
    if not isinstance(overrides, Mapping):
        raise BadInput("the task overrides' overrides must be a JSON object")
    overrides = dict(overrides)
    check_task_overrides(overrides)
    for index, item in enumerate(overrides.get("containerOverrides", ())):
        for pair in item.get("environment", ()):
            check_env_name(f"containerOverrides[{index}].environment", pair.get("name", ""))
    return overrides


def _secret_name(value_from: str) -> str:
    """The name a ``valueFrom`` gives its secret or parameter.

    A Secrets Manager name keeps its slashes (``team/token``); a parameter's path is
    cut to its last part (``/ci/token`` -> ``token``).
    """
    parts = value_from.split(":")
    if value_from.startswith("arn:") and len(parts) > 6 and parts[2] == "secretsmanager":
        return parts[6]
    tail = ":".join(parts[5:]) if value_from.startswith("arn:") else value_from
    if tail.startswith("parameter/"):
        tail = tail[len("parameter") :]
    return tail.rstrip("/").rsplit("/", 1)[-1]


def secret_file_name(value_from: str) -> str:
    """The file a secret is read from, relative to the secrets directory.

    ``arn:aws:secretsmanager:REGION:ACCOUNT:secret:NAME[:json-key::]`` -> ``NAME``
    (a name with slashes, ``team/token``, is a file in a subdirectory);
    ``arn:aws:ssm:REGION:ACCOUNT:parameter/path/NAME`` and ``/path/NAME`` -> ``NAME``.

    Raises
    ------
    BadInput
        When the name would leave the directory: an absolute name
        (``...:secret:/etc/passwd``), a ``..``, ``.`` or empty part
        (``...:secret:../../x``), a backslash.
    """
    if "\x00" in value_from:
        raise BadInput(f"secret valueFrom {value_from!r} holds a NUL byte: remove it")
    name = _secret_name(value_from)
    parts = name.split("/")
    if not name or name.startswith("/") or "\\" in name or any(part in ("", ".", "..") for part in parts):
        raise BadInput(
            f"secret valueFrom {value_from!r} names {name!r}, which is not a file inside --secrets-dir: "
            "use a secret name without a leading '/', '.' or '..' parts"
        )
    return name


def secret_path(secrets_dir: Path, file_name: str) -> Path:
    """``secrets_dir / file_name``, which must stay inside ``secrets_dir`` once symbolic
    links are resolved (``file_name`` as :func:`secret_file_name` gives it).

    Raises
    ------
    BadInput
        When a link on the way leads out of the directory.
    """
    base = secrets_dir.resolve()
    path = base / file_name
    if base not in path.resolve().parents:
        raise BadInput(
            f"secret file {file_name} leads to {path.resolve()}, outside --secrets-dir {base}: "
            "put the secret's value in a file there"
        )
    return path


def check_network(name: str) -> str:
    """Return ``name`` when Docker takes it as a network name.

    Raises
    ------
    BadInput
        Otherwise, naming the characters allowed.
    """
    if not _NETWORK_NAME.match(name):
        raise BadInput(
            f"--network {name!r} is not a Docker network name: start with a letter or digit, then letters, "
            "digits, '_', '.' or '-'"
        )
    return name


def invocation_network(run_id: str) -> str:
    """The network of one invocation that names none: ``flowrig-ecs-local-<run id>``."""
    return f"{RUN_LOCAL_NETWORK}-{run_id}"


def _env(pairs: Any) -> dict[str, str]:
    return {item["name"]: str(item.get("value", "")) for item in pairs or ()}


def plan_run(
    task_definition: Mapping[str, Any],
    overrides: Mapping[str, Any] | None = None,
    *,
    run_id: str,
    network: str | None = None,
) -> list[TaskContainer]:
    """The containers that run ``task_definition`` with ``overrides``, as ECS would.

    Parameters
    ----------
    task_definition
        As returned by :func:`load_task_definition`.
    overrides
        As returned by :func:`load_overrides`; container overrides replace the command
        and add or replace environment variables, by container name.
    run_id
        Short id naming this run's containers and labels.
    network
        Docker network of every container; default: one of this invocation's own
        (:func:`invocation_network`), which :func:`run` creates and removes.

    Raises
    ------
    BadInput
        When an override names a container the task definition does not have.
    """
    by_name = {item["name"]: item for item in (overrides or {}).get("containerOverrides", [])}
    containers = task_definition["containerDefinitions"]
    unknown = sorted(set(by_name) - {container["name"] for container in containers})
    if unknown:
        raise BadInput(
            f"overrides name container(s) {', '.join(unknown)} that the task definition does not have "
            f"(it has {', '.join(container['name'] for container in containers)})"
        )
    network = check_network(network) if network else invocation_network(run_id)
    family = str(task_definition.get("family", "task"))
    task_memory = _task_memory_mib(task_definition.get("memory"))
    plans = []
    for container in containers:
        name = container["name"]
        override = by_name.get(name, {})
        command = override.get("command", container.get("command"))
        environment = {**_env(container.get("environment")), **_env(override.get("environment"))}
        memory = container.get("memory") or task_memory
        plans.append(
            TaskContainer(
                name=f"{name}-{run_id}",
                container=name,
                image=container["image"],
                command=tuple(command) if command is not None else None,
                entrypoint=tuple(container["entryPoint"]) if container.get("entryPoint") else None,
                environment=environment,
                secrets={
                    item["name"]: secret_file_name(item["valueFrom"]) for item in container.get("secrets", ())
                },
                init=bool(container.get("linuxParameters", {}).get("initProcessEnabled", False)),
                # ECS treats a container without the key as essential.
                essential=bool(container.get("essential", True)),
                network=network,
                labels={LABEL_RUN: run_id, LABEL_FAMILY: family, LABEL_CONTAINER: name},
                user=container.get("user"),
                working_dir=container.get("workingDirectory"),
                memory_mib=int(memory) if memory else None,
            )
        )
    if not any(plan.essential for plan in plans):
        raise BadInput("the task definition has no essential container, so it would never end")
    return plans


def plan_to_json(plans: list[TaskContainer]) -> str:
    """The plan as stable JSON text."""
    return json.dumps([plan.to_dict() for plan in plans], sort_keys=True, indent=2) + "\n"


def new_run_id() -> str:
    """A short random id for one run's containers."""
    return _random.token_hex(4)


# --- applying a plan (the one place that talks to Docker) ---------------------------
def read_secrets(plans: list[TaskContainer], secrets_dir: Path | None) -> dict[str, dict[str, str]]:
    """``container name -> {variable: value}`` read from ``secrets_dir``.

    Raises
    ------
    BadInput
        When a secret's file is missing (checked before any container is created).
    """
    values: dict[str, dict[str, str]] = {}
    for plan in plans:
        values[plan.name] = {}
        for variable, file_name in plan.secrets.items():
            if secrets_dir is None:
                raise BadInput(
                    f"container {plan.container} needs secret {variable}: "
                    f"pass --secrets-dir with a file named {file_name}"
                )
            path = secret_path(secrets_dir, file_name)
            try:
                # Secret files usually end with a newline that is not part of the value.
                value = path.read_text(encoding="utf-8").rstrip("\r\n")
            except OSError:
                raise BadInput(
                    f"secret {variable} of container {plan.container}: cannot read {path} "
                    "(one file per secret, named after it)"
                ) from None
            except UnicodeDecodeError:
                raise BadInput(
                    f"secret {variable} of container {plan.container}: {path} is not UTF-8 text, and an "
                    "environment variable must be: store the value as text (base64 for binary data)"
                ) from None
            if "\x00" in value:
                raise BadInput(
                    f"secret {variable} of container {plan.container}: {path} holds a NUL byte, which no "
                    "environment variable can: store the value as text (base64 for binary data)"
                )
            values[plan.name][variable] = value
    return values


def container_plan(
    task: TaskContainer, secret_env: Mapping[str, str], network: str, user: str | None = None
) -> ContainerPlan:
    """What the engine creates for one container of the task: secrets as variables, the
    docker backend's hardening (:data:`HARDENING`), ``user`` (default: the task's)."""
    # The root file system is read-only: Prefect's home goes to the memory /tmp, as on
    # the docker backend, unless the task definition puts it elsewhere.
    environment = {"PREFECT_HOME": PREFECT_HOME, **task.environment, **secret_env}
    return ContainerPlan(
        name=task.name,
        image=task.image,
        command=task.command,
        entrypoint=task.entrypoint,
        environment=environment,
        labels=dict(task.labels),
        network=network,
        # The container answers to its ECS container name, as it would in the task.
        hostname=task.container,
        aliases=(task.container,),
        init=task.init,
        user=user or task.user,
        working_dir=task.working_dir,
        memory=f"{task.memory_mib}m" if task.memory_mib else None,
        **HARDENING,
    )


def run_as(task: TaskContainer, image_user: str) -> tuple[str | None, str | None]:
    """Who the container runs as, and a note when that is not who its image would say.

    The task's own user was checked when it was planned (:func:`check_user`); with
    none, the image's (``image_user``, its ``USER``) is kept unless it is root, which
    becomes :data:`NON_ROOT_USER`.
    """
    if task.user:
        return task.user, None
    if image_user and not is_root(image_user):
        return None, None
    return NON_ROOT_USER, (
        f"container {task.container}: image {task.image} runs as root, so run-local runs it as "
        f"{NON_ROOT_USER} (nobody); set 'user' in the task definition to choose another non-root user"
    )


def _refuse_root_by_name(engine: Any, container: Any, task: TaskContainer, user: str) -> None:
    """A user given by name is root when the image's ``/etc/passwd`` gives it uid 0."""
    name = user.split(":", 1)[0]
    if not name or name.isdigit():
        return  # numeric: checked already
    passwd = engine.container_file(container, "/etc/passwd")
    uid = uid_of(passwd.decode("utf-8", "replace"), name) if passwd else None
    if uid == 0:
        raise BadInput(
            f"container {task.container} would run as {name!r}, which image {task.image} maps to uid 0 (root), "
            "and run-local never runs a container as root: give a non-root uid as 'user' in the task definition"
        )


def run(
    plans: list[TaskContainer],
    *,
    secrets_dir: Path | None = None,
    out: TextIO | None = None,
    err: TextIO | None = None,
    client: Any = None,
) -> int:
    """Create and start the containers of ``plans``; return the exit code of the first
    essential container to exit.

    Logs of every container are written to ``out`` (stdout by default), each line
    prefixed with its ECS container name. When an essential container exits, the others
    are stopped, as ECS stops a task; every container is removed on the way out,
    including on Ctrl-C or SIGTERM (see :mod:`flowrig.common.signals`).

    Raises
    ------
    BadInput
        A secret file is missing, an image is missing, or a container would run as
        root (a user name its image maps to uid 0); nothing is started then.
    InfrastructureError
        Docker is unreachable, a container cannot be created.
    """
    from flowrig.common.signals import shielded, terminating
    from flowrig.containers import engine

    out = out or sys.stdout
    err = err or sys.stderr
    secret_values = read_secrets(plans, secrets_dir)
    client = client or engine.connect()
    # Every image is looked at before anything is created: a missing one, or one that
    # runs as root, is known first.
    image_users = {plan.image: engine.image_user(client, plan.image) for plan in plans}
    users = {plan.name: run_as(plan, image_users[plan.image]) for plan in plans}
    for _, note in users.values():
        if note:
            print(f"flowrig: {note}", file=err, flush=True)
    own = {invocation_network(p.labels[LABEL_RUN]): p.labels[LABEL_RUN] for p in plans}
    created: list[Any] = []
    with terminating():
        try:
            network_ids = {}
            for network in sorted({p.network for p in plans}):
                if network in own:
                    # This invocation's alone: labelled with its run id, removed below.
                    network_ids[network] = engine.create_network(client, network, own[network])
                else:
                    # Named by the user for invocations that meet: kept for the next one.
                    network_ids[network] = engine.ensure_network(client, network, {"flowrig.run-local": "network"})
            for plan in plans:
                user = users[plan.name][0]
                created.append(engine.create_container(
                    client, container_plan(plan, secret_values[plan.name], network_ids[plan.network], user)
                ))
                _refuse_root_by_name(engine, created[-1], plan, user or image_users[plan.image])
            pump = engine.LogPump(prefix=True)
            for plan, container in zip(plans, created):
                engine.start_container(container)
                pump.follow(container, plan.container, both_to=out)
            results = engine.first_exit(created)
            essential = {plan.name for plan in plans if plan.essential}
            while True:
                try:
                    # A timeout keeps the main thread responsive to Ctrl-C.
                    name, code = results.get(timeout=0.5)
                except queue.Empty:
                    continue
                if name in essential:
                    # Let the last lines through before the containers go.
                    pump.join(timeout=5, label=next(p.container for p in plans if p.name == name))
                    return code
        finally:
            with shielded():
                for container in created:
                    engine.remove_container(container)
                for network in {p.network for p in plans} & set(own):
                    engine.remove_run(client, own[network], network=True)
