"""The inputs of ``flowrig ecs run-local``, checked before Docker is asked anything (pure).

A task definition (:class:`TaskDefinitionDoc`, only the keys run-local reads, under
ECS's own camelCase names), ``RunTask`` overrides, the files secrets are read from, the
user a container runs as, and the network it joins: each problem is one line
(:class:`~flowrig.errors.BadInput`, exit 2), NUL bytes anywhere included.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Mapping

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr, ValidationError

from flowrig.common.environ import check_env_name
from flowrig.errors import BadInput

#: ECS container names: letters, digits, hyphens and underscores, up to 255.
_CONTAINER_NAME = re.compile(r"^[A-Za-z0-9_-]{1,255}$")
#: Docker network names.
_NETWORK_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,254}$")
#: A user as ECS and Docker take it: ``user``, ``uid``, ``user:group``, ``uid:gid``.
_USER = re.compile(r"^[A-Za-z0-9_.][A-Za-z0-9_.-]*(:[A-Za-z0-9_.][A-Za-z0-9_.-]*)?$")


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
    task_memory_mib(parsed.memory)
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


def task_memory_mib(memory: str | int | None) -> int | None:
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
