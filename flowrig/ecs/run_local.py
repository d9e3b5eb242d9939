"""Run an ECS task definition's containers on the local Docker engine.

:func:`plan_run` turns a task definition and ``RunTask`` overrides into a list of
:class:`ContainerPlan` (pure data, testable without Docker); :func:`run` applies a plan
with docker-py: a user-defined network on which each container answers to its ECS
container name (so ``dask-scheduler`` resolves), logs streamed with the container's
name in front, and every container removed at the end, Ctrl-C included.

What ECS provides that is reproduced: image, entry point, command, environment,
``secrets`` (read from files, see :func:`secret_file_name`), ``initProcessEnabled``
(``docker run --init``), user, working directory, memory, essential containers (the
task ends when one of them exits). What is not: IAM roles, log drivers, health checks,
port mappings (containers reach each other on the network), CPU limits.
"""

from __future__ import annotations

import json
import queue
import secrets as _random
import signal
import sys
import threading
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Mapping, TextIO

from flowrig import defaults
from flowrig.errors import BadInput, InfrastructureError, Terminated

#: Label keys put on every container, so leftovers of a run can be found.
LABEL_RUN = "flowrig.run-local"
LABEL_FAMILY = "flowrig.task-family"
LABEL_CONTAINER = "flowrig.container"


@dataclass(frozen=True)
class ContainerPlan:
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
        ``variable -> file name`` in the secrets directory.
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
    from flowrig.ecs.validate import check_task_overrides

    if not document:
        return {}
    overrides = dict(document.get("overrides", document))
    check_task_overrides(overrides)
    return overrides


def secret_file_name(value_from: str) -> str:
    """The file a secret is read from: the secret's or parameter's own name.

    ``arn:aws:secretsmanager:REGION:ACCOUNT:secret:NAME[:json-key::]`` -> ``NAME``;
    ``arn:aws:ssm:REGION:ACCOUNT:parameter/path/NAME`` and ``/path/NAME`` -> ``NAME``.
    """
    parts = value_from.split(":")
    if value_from.startswith("arn:") and len(parts) > 6 and parts[2] == "secretsmanager":
        return parts[6]
    tail = parts[-1] if value_from.startswith("arn:") else value_from
    return tail.rstrip("/").rsplit("/", 1)[-1]


def _env(pairs: Any) -> dict[str, str]:
    return {item["name"]: str(item.get("value", "")) for item in pairs or ()}


def plan_run(
    task_definition: Mapping[str, Any],
    overrides: Mapping[str, Any] | None = None,
    *,
    run_id: str,
    network: str = defaults.ECS_RUN_LOCAL_NETWORK,
) -> list[ContainerPlan]:
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
        Docker network of every container.

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
            ContainerPlan(
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


def plan_to_json(plans: list[ContainerPlan]) -> str:
    """The plan as stable JSON text."""
    return json.dumps([plan.to_dict() for plan in plans], sort_keys=True, indent=2) + "\n"


def new_run_id() -> str:
    """A short random id for one run's containers."""
    return _random.token_hex(4)


# --- applying a plan (the one place that talks to Docker) ---------------------------
def read_secrets(plans: list[ContainerPlan], secrets_dir: Path | None) -> dict[str, dict[str, str]]:
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
                    f"container {plan.container} needs secret {variable}: pass --secrets-dir with a file named {file_name}"
                )
            path = secrets_dir / file_name
            try:
                # Secret files usually end with a newline that is not part of the value.
                values[plan.name][variable] = path.read_text().rstrip("\r\n")
            except OSError:
                raise BadInput(
                    f"secret {variable} of container {plan.container}: cannot read {path} (one file per secret, named after it)"
                ) from None
    return values


def docker_client() -> Any:
    """A docker-py client for the local engine.

    Raises
    ------
    InfrastructureError
        When the engine does not answer.
    """
    import docker

    try:
        client = docker.from_env()
        client.ping()
    except Exception as exc:
        raise InfrastructureError(f"cannot reach the Docker engine: {' '.join(str(exc).split())}") from None
    return client


def ensure_network(client: Any, name: str) -> str:
    """The id of the user-defined bridge network ``name``, created when missing.

    User-defined networks give containers DNS by name and alias; the default bridge
    does not. The network is left in place for later runs to join.
    """

    def named() -> list[Any]:
        # The name filter matches substrings; only the exact name counts.
        found = [network for network in client.networks.list(names=[name]) if network.name == name]
        return sorted(found, key=lambda network: (network.attrs.get("Created", ""), network.id))

    found = named()
    if not found:
        client.networks.create(name, driver="bridge", labels={LABEL_RUN: "network"}, check_duplicate=True)
        found = named()
    # Invocations started together (scheduler, workers, runner) may each create one:
    # Docker checks names only loosely. All of them use the oldest; spare ones go.
    for spare in found[1:]:
        try:
            spare.remove()
        except Exception:  # someone already joined it; it does no harm
            pass
    return found[0].id


def _create(client: Any, plan: ContainerPlan, secret_env: Mapping[str, str], network_id: str) -> Any:
    import docker

    try:
        return client.containers.create(
            image=plan.image,
            command=list(plan.command) if plan.command is not None else None,
            entrypoint=list(plan.entrypoint) if plan.entrypoint else None,
            environment={**plan.environment, **secret_env},
            name=plan.name,
            hostname=plan.container,
            labels=dict(plan.labels),
            init=plan.init,
            user=plan.user,
            working_dir=plan.working_dir,
            mem_limit=f"{plan.memory_mib}m" if plan.memory_mib else None,
            # By id: a name can be ambiguous while concurrent invocations tidy up.
            network=network_id,
            networking_config={network_id: client.api.create_endpoint_config(aliases=[plan.container])},
            detach=True,
        )
    except docker.errors.ImageNotFound:
        raise InfrastructureError(
            f"image {plan.image} is not on this Docker engine: build it (flowrig build) or pull it first"
        ) from None
    except docker.errors.APIError as exc:
        raise InfrastructureError(f"cannot create container {plan.name}: {exc.explanation or exc}") from None


def _start(container: Any, plan: ContainerPlan) -> None:
    import docker

    try:
        container.start()
    except docker.errors.APIError as exc:
        raise InfrastructureError(f"cannot start container {plan.name}: {exc.explanation or exc}") from None


def _stream_logs(container: Any, label: str, out: TextIO, lock: threading.Lock) -> None:
    pending = b""
    try:
        for chunk in container.logs(stream=True, follow=True):
            pending += chunk
            *lines, pending = pending.split(b"\n")
            with lock:
                for line in lines:
                    out.write(f"{label} | {line.decode(errors='replace')}\n")
                out.flush()
    except Exception:  # the container was removed under us: nothing more to show
        return
    if pending:
        with lock:
            out.write(f"{label} | {pending.decode(errors='replace')}\n")
            out.flush()


def _wait(container: Any, results: "queue.Queue[tuple[str, int]]") -> None:
    try:
        code = int(container.wait()["StatusCode"])
    except Exception:
        code = 137
    results.put((container.name, code))


def run(
    plans: list[ContainerPlan],
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
    including on Ctrl-C or SIGTERM (raised as :class:`~flowrig.errors.Terminated`).

    Raises
    ------
    BadInput
        A secret file is missing.
    InfrastructureError
        Docker is unreachable, an image is missing, a container cannot be created.
    """
    out = out or sys.stdout
    secret_values = read_secrets(plans, secrets_dir)
    client = client or docker_client()
    network_ids = {network: ensure_network(client, network) for network in sorted({p.network for p in plans})}
    previous_term = None
    if threading.current_thread() is threading.main_thread():
        # SIGTERM unwinds like Ctrl-C, so the containers are still removed.
        previous_term = signal.signal(signal.SIGTERM, _raise_terminated)
    created: list[Any] = []
    try:
        for plan in plans:
            created.append(_create(client, plan, secret_values[plan.name], network_ids[plan.network]))
        results: queue.Queue[tuple[str, int]] = queue.Queue()
        lock = threading.Lock()
        essential = {plan.name for plan in plans if plan.essential}
        log_threads = {}
        for plan, container in zip(plans, created):
            _start(container, plan)
            log_threads[plan.name] = threading.Thread(
                target=_stream_logs, args=(container, plan.container, out, lock), daemon=True
            )
            log_threads[plan.name].start()
            threading.Thread(target=_wait, args=(container, results), daemon=True).start()
        while True:
            try:
                # A timeout keeps the main thread responsive to Ctrl-C.
                name, code = results.get(timeout=0.5)
            except queue.Empty:
                continue
            if name in essential:
                # Let the last lines through before the containers go.
                log_threads[name].join(timeout=5)
                return code
    finally:
        for container in created:
            try:
                container.remove(force=True)
            except Exception:  # already gone
                pass
        if previous_term is not None:
            signal.signal(signal.SIGTERM, previous_term)


def _raise_terminated(signum: int, frame: Any) -> None:
    raise Terminated(signum)
