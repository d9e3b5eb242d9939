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
reach each other on the network), CPU limits.

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
import secrets as _random
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Mapping, TextIO

from flowrig.backends.ecs.defaults import RUN_LOCAL_NETWORK
from flowrig.containers import LABEL_ROLE, LABEL_RUN_ID, ContainerPlan
from flowrig.errors import BadInput

#: Label keys put on every container: the run id and role labels every flowrig run
#: carries (the role being the ECS container name), and the task family.
LABEL_RUN = LABEL_RUN_ID
LABEL_FAMILY = "flowrig.task-family"
LABEL_CONTAINER = LABEL_ROLE


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


def load_task_definition(document: Mapping[str, Any]) -> dict[str, Any]:
    """The task definition in ``document``: ``register-task-definition`` input, or the
    output of ``describe-task-definition`` (``{"taskDefinition": {...}}``).

    Raises
    ------
    BadInput
        When there are no container definitions.
    """
    data = dict(document.get("taskDefinition", document))
    containers = data.get("containerDefinitions")
    if not isinstance(containers, list) or not containers:
        raise BadInput("the task definition has no containerDefinitions")
    for container in containers:
        if not isinstance(container, Mapping) or not container.get("name") or not container.get("image"):
            raise BadInput("every container definition needs a name and an image")
    return data


def load_overrides(document: Mapping[str, Any] | None) -> dict[str, Any]:
    """``RunTask`` overrides: the ``overrides`` object itself, a whole ``RunTask``
    request (``{"overrides": {...}}``) or a described task, validated against the ECS API.

    Raises
    ------
    BadInput
        When the object does not match the ECS ``TaskOverride`` shape.
    """
    from flowrig.backends.ecs.validate import check_task_overrides

    if not document:
        return {}
    overrides = dict(document.get("overrides", document))
    check_task_overrides(overrides)
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
    network = network or invocation_network(run_id)
    family = str(task_definition.get("family", "task"))
    task_memory = task_definition.get("memory")
    plans = []
    for container in containers:
        name = container["name"]
        override = by_name.get(name, {})
        command = override.get("command", container.get("command"))
        environment = {**_env(container.get("environment")), **_env(override.get("environment"))}
        memory = container.get("memory") or (int(task_memory) if task_memory else None)
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
                values[plan.name][variable] = path.read_text().rstrip("\r\n")
            except OSError:
                raise BadInput(
                    f"secret {variable} of container {plan.container}: cannot read {path} "
                    "(one file per secret, named after it)"
                ) from None
    return values


def container_plan(task: TaskContainer, secret_env: Mapping[str, str], network: str) -> ContainerPlan:
    """What the engine creates for one container of the task (secrets as variables)."""
    return ContainerPlan(
        name=task.name,
        image=task.image,
        command=task.command,
        entrypoint=task.entrypoint,
        environment={**task.environment, **secret_env},
        labels=dict(task.labels),
        network=network,
        # The container answers to its ECS container name, as it would in the task.
        hostname=task.container,
        aliases=(task.container,),
        init=task.init,
        user=task.user,
        working_dir=task.working_dir,
        memory=f"{task.memory_mib}m" if task.memory_mib else None,
    )


def run(
    plans: list[TaskContainer],
    *,
    secrets_dir: Path | None = None,
    out: TextIO | None = None,
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
        A secret file is missing.
    InfrastructureError
        Docker is unreachable, an image is missing, a container cannot be created.
    """
    from flowrig.common.signals import shielded, terminating
    from flowrig.containers import engine

    out = out or sys.stdout
    secret_values = read_secrets(plans, secrets_dir)
    client = client or engine.connect()
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
                created.append(engine.create_container(
                    client, container_plan(plan, secret_values[plan.name], network_ids[plan.network])
                ))
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
