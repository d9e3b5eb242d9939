"""Removing containers and networks: one, by name, or all of a run's."""

from __future__ import annotations

import contextlib
import time
from typing import TYPE_CHECKING, Any, Callable, Iterable

from flowrig.containers.engine.client import logger
from flowrig.containers.labels import LABEL_ROLE, LABEL_RUN_ID
from flowrig.containers.plans import STOP_TIMEOUT
from flowrig.errors import one_line

if TYPE_CHECKING:
    from docker import DockerClient
    from docker.models.containers import Container

#: Containers removed at once by :func:`remove_run`.
REMOVE_THREADS = 8


def stop_and_remove(
    container: "Container",
    timeout: int = STOP_TIMEOUT,
    on_stopped: "Callable[[Container], None] | None" = None,
    *,
    first_signal: str | None = None,
) -> None:
    """Stop a container (SIGTERM, SIGKILL after ``timeout`` s) and remove it; quiet if gone.
    ``on_stopped`` is called in between, while the engine still knows the container
    (to read its lifetime). ``first_signal`` is sent before the stop: a role that tells
    "stop now" from SIGTERM gets it first (a worker's drain supervisor, for instance)."""
    import docker

    with contextlib.suppress(docker.errors.NotFound, docker.errors.APIError):
        if first_signal:
            container.kill(signal=first_signal)
        container.stop(timeout=timeout)
    if on_stopped is not None:
        try:
            on_stopped(container)
        except Exception as exc:  # a report must not keep a container
            logger.debug("after stopping %s: %s", container.name, one_line(exc))
    remove_container(container)


def remove_container(container: "Container") -> bool:
    """Remove a container by force; ``False`` when it was gone already."""
    import docker

    try:
        container.remove(force=True)
        return True
    except docker.errors.NotFound:
        return False
    except docker.errors.APIError as exc:
        # "removal already in progress" is fine; anything else is worth a line.
        if "in progress" not in str(exc):
            logger.warning("removing container %s failed: %s", container.name, one_line(exc))
        return False


def remove_named(client: "DockerClient", name: str) -> bool:
    """Remove the container called ``name`` by force, if there is one; whether there was."""
    import docker

    try:
        container = client.containers.get(name)
    except docker.errors.NotFound:
        return False
    except docker.errors.APIError as exc:
        logger.debug("looking up container %s failed: %s", name, one_line(exc))
        return False
    return remove_container(container)


def run_containers(client: "DockerClient", run_id: str, roles: Iterable[str] | None = None) -> list["Container"]:
    """All containers (running or not) labelled with ``run_id``, optionally of some roles.

    A container removed between the listing and its inspection is left out.
    """
    import docker

    wanted = None if roles is None else set(roles)
    found = []
    for item in client.api.containers(all=True, filters={"label": f"{LABEL_RUN_ID}={run_id}"}):
        if wanted is not None and (item.get("Labels") or {}).get(LABEL_ROLE) not in wanted:
            continue
        with contextlib.suppress(docker.errors.NotFound):
            found.append(client.containers.get(item["Id"]))
    return found


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
    from concurrent.futures import ThreadPoolExecutor

    import docker

    containers = run_containers(client, run_id, roles)
    # At once: a run of many workers is gone in the time of one removal.
    with ThreadPoolExecutor(max_workers=max(1, min(REMOVE_THREADS, len(containers)))) as pool:
        done = list(pool.map(remove_container, containers))
    removed = [c.name for c, gone in zip(containers, done) if gone]
    if not network:
        return removed
    deadline = time.monotonic() + timeout
    for net in client.networks.list(filters={"label": f"{LABEL_RUN_ID}={run_id}"}):
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


def labelled(client: "DockerClient") -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Every container and network carrying a run id label, as the engine lists them."""
    label = {"label": LABEL_RUN_ID}
    return client.api.containers(all=True, filters=label), client.api.networks(filters=label)
