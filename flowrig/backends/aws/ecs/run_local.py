"""Run an ECS task definition's containers on the local Docker engine.

:func:`plan_run` turns a task definition and ``RunTask`` overrides (as
:mod:`~flowrig.backends.aws.ecs.taskdoc` loads them) into a list of
:class:`TaskContainer` (pure data, testable without Docker); :func:`run` applies a plan
through :func:`flowrig.containers.group.run_group`: a user-defined network on which each container
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
2): the task definition's shape, NUL bytes anywhere in it or in the overrides, variable
names, secret names (:mod:`~flowrig.backends.aws.ecs.taskdoc`) and values.

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
import secrets as _random
import sys
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import Any, Mapping, TextIO

from flowrig.backends.aws.ecs.defaults import RUN_LOCAL_NETWORK
from flowrig.backends.aws.ecs.taskdoc import (
    check_network,
    is_root,
    secret_file_name,
    secret_path,
    task_memory_mib,
    uid_of,
)
from flowrig.backends.docker.plans import PIDS_LIMIT, PREFECT_HOME, hardening
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
#: Labels of a network ``--network NAME`` creates (kept for the invocations that meet there).
SHARED_NETWORK_LABELS = {"flowrig.run-local": "network"}


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
    task_memory = task_memory_mib(task_definition.get("memory"))
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


def _refuse_root_by_name(container: Any, task: TaskContainer, user: str) -> None:
    """A user given by name is root when the image's ``/etc/passwd`` gives it uid 0."""
    from flowrig.containers import engine

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
    including on Ctrl-C or SIGTERM (:func:`flowrig.containers.group.run_group`).

    Raises
    ------
    BadInput
        A secret file is missing, an image is missing, or a container would run as
        root (a user name its image maps to uid 0); nothing is started then.
    InfrastructureError
        Docker is unreachable, a container cannot be created.
    """
    from flowrig.containers import engine
    from flowrig.containers.group import Member, Network, run_group

    out = out or sys.stdout
    err = err or sys.stderr
    secret_values = read_secrets(plans, secrets_dir)
    client = client or engine.connect()
    # Every image is looked at before anything is created: a missing one, or one that
    # runs as root, is known first.
    image_users = {plan.image: engine.image_user(client, plan.image) for plan in plans}
    members = []
    for plan in plans:
        user, note = run_as(plan, image_users[plan.image])
        if note:
            print(f"flowrig: {note}", file=err, flush=True)
        members.append(Member(
            container_plan(plan, secret_values[plan.name], plan.network, user),
            label=plan.container,
            essential=plan.essential,
            after_create=partial(_refuse_root_by_name, task=plan, user=user or image_users[plan.image]),
        ))
    own = {invocation_network(plan.labels[LABEL_RUN]): plan.labels[LABEL_RUN] for plan in plans}
    networks = [
        # This invocation's alone, labelled with its run id, and removed at the end; or
        # named by the user for invocations that meet, and kept for the next one.
        Network(name, own_run_id=own[name]) if name in own else Network(name, labels=SHARED_NETWORK_LABELS)
        for name in sorted({plan.network for plan in plans})
    ]
    # One by one, each followed as it starts: the first log lines come in the task
    # definition's order.
    return run_group(client, members, networks, out=out, parallel=False)
