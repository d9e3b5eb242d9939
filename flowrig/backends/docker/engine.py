"""The thin layer that talks to the Docker daemon (docker-py).

Each function does one thing to the daemon and turns docker-py's errors into
one-line :class:`~flowrig.errors.BadInput` or :class:`~flowrig.errors.InfrastructureError`.
"""

from __future__ import annotations

import contextlib
import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING, Iterable

from flowrig import defaults
from flowrig.backends._util import one_line
from flowrig.backends.docker.naming import labels
from flowrig.backends.docker.plans import ContainerPlan, files_archive
from flowrig.errors import BadInput, InfrastructureError

if TYPE_CHECKING:
    from docker import DockerClient
    from docker.models.containers import Container

logger = logging.getLogger("flowrig.docker")


def log_tail(text: str, lines: int = defaults.DOCKER_LOG_TAIL, width: int = 400) -> str:
    """The last non-empty log lines folded into one line for an error message."""
    kept = [line.strip() for line in text.splitlines() if line.strip()][-lines:]
    folded = " | ".join(kept) or "no output"
    return folded if len(folded) <= width else "..." + folded[-(width - 3):]


def connect() -> "DockerClient":
    """A client of the Docker daemon named by the environment (``DOCKER_HOST``).

    Raises
    ------
    InfrastructureError
        When the daemon does not answer.
    """
    try:
        import docker
    except ImportError:
        raise BadInput("the docker backend needs the Docker SDK for Python: pip install docker") from None
    try:
        client = docker.from_env()
        client.ping()
    except docker.errors.DockerException as exc:
        raise InfrastructureError(
            f"Docker is not reachable ({one_line(exc)}): start the Docker daemon or set DOCKER_HOST"
        ) from None
    return client


def _image_not_found(image: str) -> BadInput:
    # Nothing is ever pulled: images come from flowrig build on this machine.
    return BadInput(f"image {image!r} not found: build it with flowrig build PROJECT --tag {image}")


def require_image(client: "DockerClient", image: str) -> None:
    """Raise :class:`BadInput` unless ``image`` exists locally (nothing is pulled)."""
    import docker

    try:
        client.images.get(image)
    except docker.errors.ImageNotFound:
        raise _image_not_found(image) from None
    except docker.errors.APIError as exc:
        raise InfrastructureError(f"cannot inspect image {image!r}: {one_line(exc)}") from None


def create_network(client: "DockerClient", name: str, run_id: str) -> None:
    """Create the run's bridge network (a user-defined one: containers resolve names)."""
    import docker

    try:
        client.networks.create(name, driver="bridge", labels=labels(run_id, "network"), check_duplicate=True)
    except docker.errors.APIError as exc:
        raise InfrastructureError(f"cannot create Docker network {name}: {one_line(exc)}") from None


def create_container(client: "DockerClient", plan: ContainerPlan) -> "Container":
    """Create (but do not start) the container ``plan`` describes."""
    import docker

    api = client.api
    try:
        host_config = api.create_host_config(
            network_mode=plan.network,
            port_bindings={port: ("127.0.0.1",) for port in plan.publish} or None,
            binds={src: {"bind": dst, "mode": "rw"} for src, dst in plan.binds.items()} or None,
            group_add=list(plan.group_add) or None,
            mem_limit=plan.memory,
        )
        networking = api.create_networking_config(
            {plan.network: api.create_endpoint_config(aliases=list(plan.aliases) or None)}
        )
        created = api.create_container(
            plan.image,
            command=list(plan.command),
            name=plan.name,
            environment=dict(plan.environment),
            labels=dict(plan.labels),
            ports=list(plan.publish) or None,
            host_config=host_config,
            networking_config=networking,
            stop_timeout=plan.stop_timeout,
            detach=True,
        )
        if plan.files:
            parent = str(Path(plan.files_dir).parent)
            api.put_archive(created["Id"], parent, files_archive(plan.files_dir, plan.files))
        return client.containers.get(created["Id"])
    except docker.errors.ImageNotFound:
        raise _image_not_found(plan.image) from None
    except docker.errors.APIError as exc:
        raise InfrastructureError(f"cannot create container {plan.name}: {one_line(exc)}") from None


def start_container(container: "Container") -> None:
    """Start a created container."""
    import docker

    try:
        container.start()
    except docker.errors.APIError as exc:
        raise InfrastructureError(
            f"container {container.name} did not start: {one_line(exc)}; "
            f"last log lines: {container_logs_tail(container)}"
        ) from None


def container_logs_tail(container: "Container") -> str:
    """The container's last log lines folded into one line (``""`` when gone)."""
    with contextlib.suppress(Exception):
        return log_tail(container.logs(stdout=True, stderr=True, tail=50).decode(errors="replace"))
    return ""


def published_port(container: "Container", port: int) -> int:
    """Host port that ``port`` of the (running) container is published on."""
    container.reload()
    bindings = (container.ports or {}).get(f"{port}/tcp") or []
    for binding in bindings:
        if binding.get("HostIp") in ("127.0.0.1", "", "0.0.0.0"):
            return int(binding["HostPort"])
    raise InfrastructureError(f"container {container.name} has no published port for {port}")


def wait_for_log(container: "Container", marker: str, timeout: float, what: str) -> None:
    """Block until ``marker`` appears in the container's log.

    Raises
    ------
    InfrastructureError
        When the container exits first or ``timeout`` seconds pass; the message holds
        the container's last log lines.
    """
    deadline = time.monotonic() + timeout
    while True:
        text = container.logs(stdout=True, stderr=True).decode(errors="replace")
        if marker in text:
            return
        container.reload()
        if container.status in ("exited", "dead"):
            code = container.attrs.get("State", {}).get("ExitCode")
            raise InfrastructureError(
                f"the {what} container {container.name} exited (code {code}) before it was ready: "
                f"{log_tail(text)}"
            )
        if time.monotonic() > deadline:
            raise InfrastructureError(
                f"the {what} container {container.name} was not ready within {timeout:.0f} s: {log_tail(text)}"
            )
        time.sleep(0.2)


def stop_and_remove(container: "Container", timeout: int = defaults.DOCKER_STOP_TIMEOUT) -> None:
    """Stop a container (SIGTERM, SIGKILL after ``timeout`` s) and remove it; quiet if gone."""
    import docker

    with contextlib.suppress(docker.errors.NotFound, docker.errors.APIError):
        container.stop(timeout=timeout)
    with contextlib.suppress(docker.errors.NotFound):
        try:
            container.remove(force=True)
        except docker.errors.APIError as exc:
            # "removal already in progress" is fine; anything else is worth a line.
            if "in progress" not in str(exc):
                logger.warning("removing container %s failed: %s", container.name, one_line(exc))


def run_containers(client: "DockerClient", run_id: str, roles: Iterable[str] | None = None) -> list["Container"]:
    """All containers (running or not) labelled with ``run_id``, optionally of some roles."""
    found = client.containers.list(all=True, filters={"label": f"{defaults.DOCKER_LABEL_RUN_ID}={run_id}"})
    if roles is None:
        return found
    wanted = set(roles)
    return [c for c in found if c.labels.get(defaults.DOCKER_LABEL_ROLE) in wanted]


def remove_run(
    client: "DockerClient",
    run_id: str,
    *,
    roles: Iterable[str] | None = None,
    network: bool = True,
    timeout: float = 30.0,
) -> list[str]:
    """Remove a run's containers (all, or those of ``roles``) and, with ``network``, its networks.

    Containers are removed by force: by the time this runs, their processes have had
    their chance to stop. A network still in use by a container being removed is
    retried until ``timeout``.

    Returns
    -------
    list of str
        Names of what was removed.
    """
    import docker

    removed: list[str] = []
    containers = run_containers(client, run_id, roles)
    for container in containers:
        with contextlib.suppress(docker.errors.NotFound):
            try:
                container.remove(force=True)
                removed.append(container.name)
            except docker.errors.APIError as exc:
                if "in progress" not in str(exc):
                    logger.warning("removing container %s failed: %s", container.name, one_line(exc))
    if not network:
        return removed
    deadline = time.monotonic() + timeout
    for net in client.networks.list(filters={"label": f"{defaults.DOCKER_LABEL_RUN_ID}={run_id}"}):
        while True:
            try:
                net.remove()
                removed.append(net.name)
                break
            except docker.errors.NotFound:
                break
            except docker.errors.APIError as exc:
                if time.monotonic() > deadline:
                    logger.warning("removing network %s failed: %s", net.name, one_line(exc))
                    break
                time.sleep(0.25)
    return removed
