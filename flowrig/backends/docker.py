"""``docker``: one run's scheduler and workers as containers of the run's image.

Every role comes from one image. On the host, ``flowrig run PROJECT --backend docker
--image TAG`` calls :func:`run_in_container`: it makes a network for the run and starts
the flow runner as a container of the image, with the Docker socket mounted. Inside that
container :class:`DockerBackend` starts the scheduler and the workers as sibling
containers on the same network, so every role reaches every other by container name
and nothing is published to the host.

Every container and network carries the labels ``flowrig.run-id`` and ``flowrig.role``.
Teardown removes by label, so a run's leftovers are found even when the process that
made them was killed (``flowrig docker leftovers``).

The module has three layers: pure functions that render names, labels and container
plans; a thin layer that hands plans to the Docker daemon (docker-py); and the cluster
(:class:`DockerCluster`, a :class:`distributed.SpecCluster`), the backend and the host
side on top.

Mounting the Docker socket gives the runner container control of the Docker daemon,
which is as much as root on the host: run only images you built from projects you trust.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import io
import json
import logging
import os
import re
import signal
import socket
import sys
import tarfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator, Mapping

from distributed.deploy.spec import ProcessInterface, SpecCluster

from flowrig import defaults
from flowrig.backends.base import Backend, ClusterSpec, StartedCluster
from flowrig.errors import BadInput, FlowrigError, InfrastructureError

if TYPE_CHECKING:
    from docker import DockerClient
    from docker.models.containers import Container

    from flowrig.certs import TLSMaterial

logger = logging.getLogger("flowrig.docker")

__all__ = [
    "ContainerPlan",
    "DockerBackend",
    "DockerCluster",
    "run_in_container",
    "remove_run",
]

#: Environment variables the host sets for a runner container; the backend reads them.
ENV_NETWORK = "FLOWRIG_DOCKER_NETWORK"
ENV_RUNNER_HOST = "FLOWRIG_RUNNER_HOST"
ENV_IMAGE = "FLOWRIG_IMAGE"
ENV_RUN_ID = "FLOWRIG_RUN_ID"

#: What a scheduler logs once it listens; the scheduler is ready from then on.
SCHEDULER_READY = "Scheduler at:"

#: ``[cluster.options]`` the docker backend understands.
OPTIONS = {
    "worker_memory": "memory limit of each worker container, e.g. '2g'",
    "environment": "table of extra environment variables for the workers",
    "scheduler_start_timeout": "seconds the scheduler may take to start",
    "start_timeout": "seconds the cluster may take to get its first worker",
}

_RUN_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")


# --- names, labels, plans (pure) -----------------------------------------------------


def new_run_id() -> str:
    """A short random run id, the same shape :func:`flowrig.runner.execute` makes."""
    return uuid.uuid4().hex[:10]


def check_run_id(run_id: str) -> str:
    """Return ``run_id`` when it can be part of container and network names.

    Raises
    ------
    BadInput
        For characters Docker does not allow in names.
    """
    if not _RUN_ID.match(run_id):
        raise BadInput(
            f"run id {run_id!r} cannot name Docker containers: use letters, digits, '_', '.' or '-' "
            f"(set {ENV_RUN_ID} accordingly or leave it unset)"
        )
    return run_id


def network_name(run_id: str) -> str:
    """Name of a run's network: ``flowrig-<run id>``."""
    return f"{defaults.DOCKER_NAME_PREFIX}-{run_id}"


def container_name(run_id: str, role: str, worker: object = None) -> str:
    """Name of a run's container: ``flowrig-<run id>-<role>[-<worker name>]``."""
    name = f"{defaults.DOCKER_NAME_PREFIX}-{run_id}-{role}"
    return name if worker is None else f"{name}-{worker}"


def labels(run_id: str, role: str) -> dict[str, str]:
    """Labels that tie a container or network to its run and say what it is."""
    return {defaults.DOCKER_LABEL_RUN_ID: run_id, defaults.DOCKER_LABEL_ROLE: role}


def scheduler_address(run_id: str) -> str:
    """``tls://`` address of a run's scheduler on the run's network."""
    return f"tls://{container_name(run_id, 'scheduler')}:{defaults.SCHEDULER_PORT}"


@dataclass(frozen=True)
class InjectedFile:
    """A file copied into a container before it starts (a name inside ``files_dir``)."""

    name: str
    data: bytes = field(repr=False)
    mode: int = 0o644


@dataclass(frozen=True)
class ContainerPlan:
    """Everything needed to create one container; :func:`create_container` does it.

    Parameters
    ----------
    name, image, command
        Container name, image tag, arguments to the image's entrypoint.
    labels, environment
        Labels and environment of the container.
    network, aliases
        The network the container joins and its extra names there.
    publish
        Container ports published on 127.0.0.1, each on a free host port.
    binds
        Host path -> container path (read-write).
    group_add
        Extra groups of the container's user (the Docker socket's group).
    files, files_dir
        Files copied into ``files_dir`` before start, owned by the image's user.
    memory
        Memory limit (Docker syntax, e.g. ``"2g"``), or ``None``.
    stop_timeout
        Seconds between SIGTERM and SIGKILL on ``docker stop``.
    """

    name: str
    image: str
    command: tuple[str, ...]
    labels: Mapping[str, str]
    environment: Mapping[str, str]
    network: str
    aliases: tuple[str, ...] = ()
    publish: tuple[int, ...] = ()
    binds: Mapping[str, str] = field(default_factory=dict)
    group_add: tuple[str, ...] = ()
    files: tuple[InjectedFile, ...] = ()
    files_dir: str = defaults.DOCKER_TLS_DIR
    memory: str | None = None
    stop_timeout: int = defaults.DOCKER_STOP_TIMEOUT


def tls_files(tls: "TLSMaterial") -> tuple[InjectedFile, ...]:
    """The run's certificates as files for a container; the key is for its user only."""
    return (
        InjectedFile(defaults.CA_CERT, tls.ca_pem),
        InjectedFile(defaults.LEAF_CERT, tls.cert_pem),
        InjectedFile(defaults.LEAF_KEY, tls.key_pem, mode=0o600),
    )


def files_archive(directory: str, files: Iterable[InjectedFile], uid: int = defaults.IMAGE_UID) -> bytes:
    """A tar archive of ``directory``'s last component holding ``files``.

    It is unpacked in the directory's parent. The directory gets mode 0700 and every
    entry belongs to ``uid``, so only the image's user can read a key in it.
    """
    top = Path(directory).name
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        info = tarfile.TarInfo(top)
        info.type, info.mode, info.uid, info.gid = tarfile.DIRTYPE, 0o700, uid, uid
        archive.addfile(info)
        for item in files:
            info = tarfile.TarInfo(f"{top}/{item.name}")
            info.size, info.mode, info.uid, info.gid = len(item.data), item.mode, uid, uid
            archive.addfile(info, io.BytesIO(item.data))
    return buffer.getvalue()


def render_scheduler(
    run_id: str,
    image: str,
    network: str,
    *,
    tls: "TLSMaterial",
    publish: bool = False,
) -> ContainerPlan:
    """The scheduler container: the image's ``scheduler`` role on the run's network."""
    name = container_name(run_id, "scheduler")
    return ContainerPlan(
        name=name,
        image=image,
        command=("scheduler", "--dashboard-address", f":{defaults.DASHBOARD_PORT}"),
        labels=labels(run_id, "scheduler"),
        environment={ENV_RUN_ID: run_id, "FLOWRIG_TLS_DIR": defaults.DOCKER_TLS_DIR},
        network=network,
        aliases=("scheduler",),
        publish=(defaults.SCHEDULER_PORT, defaults.DASHBOARD_PORT) if publish else (),
        files=tls_files(tls),
    )


def render_worker(
    run_id: str,
    image: str,
    network: str,
    worker: object,
    *,
    tls: "TLSMaterial",
    threads: int = defaults.WORKER_THREADS,
    environment: Mapping[str, str] | None = None,
    memory: str | None = None,
    preload: Iterable[str] = defaults.DOCKER_WORKER_PRELOAD,
) -> ContainerPlan:
    """A worker container: the image's ``worker`` role, connecting to the run's scheduler."""
    env = dict(environment or {})
    env.update({ENV_RUN_ID: run_id, "FLOWRIG_TLS_DIR": defaults.DOCKER_TLS_DIR})
    return ContainerPlan(
        name=container_name(run_id, "worker", worker),
        image=image,
        command=(
            "worker", scheduler_address(run_id),
            "--name", str(worker),
            "--nthreads", str(threads),
            *(item for module in preload for item in ("--preload", module)),
        ),
        labels=labels(run_id, "worker"),
        environment=env,
        network=network,
        files=tls_files(tls),
        memory=memory,
    )


def render_runner(
    run_id: str,
    image: str,
    *,
    parameters: Mapping[str, Any],
    output: str,
    socket_path: str,
    socket_gid: int | None,
    environ: Mapping[str, str],
) -> ContainerPlan:
    """The runner container ``run_in_container`` starts on the host.

    It runs the image's baked project with the ``docker`` backend. Parameters travel as
    ``FLOWRIG_PARAMETERS`` (one JSON object), which the runner merges like a parameters
    file. ``environ`` is the host's environment; only
    :data:`flowrig.defaults.DOCKER_PASSTHROUGH_ENV` is taken from it.
    """
    name = container_name(run_id, "runner")
    env = {k: environ[k] for k in defaults.DOCKER_PASSTHROUGH_ENV if environ.get(k)}
    env.update(
        {
            ENV_RUN_ID: run_id,
            ENV_NETWORK: network_name(run_id),
            ENV_IMAGE: image,
            ENV_RUNNER_HOST: name,
            "FLOWRIG_PARAMETERS": json.dumps(dict(parameters), separators=(",", ":")),
        }
    )
    return ContainerPlan(
        name=name,
        image=image,
        command=("run", "--backend", "docker", "--output", output),
        labels=labels(run_id, "runner"),
        environment=env,
        network=network_name(run_id),
        aliases=("runner",),
        binds={socket_path: defaults.DOCKER_SOCKET},
        # The image runs as a non-root user: the socket's group lets it use Docker.
        group_add=(str(socket_gid),) if socket_gid is not None else (),
        stop_timeout=defaults.DOCKER_RUNNER_STOP_TIMEOUT,
    )


def log_tail(text: str, lines: int = defaults.DOCKER_LOG_TAIL, width: int = 400) -> str:
    """The last non-empty log lines folded into one line for an error message."""
    kept = [line.strip() for line in text.splitlines() if line.strip()][-lines:]
    folded = " | ".join(kept) or "no output"
    return folded if len(folded) <= width else "..." + folded[-(width - 3):]


# --- the Docker daemon (thin) ------------------------------------------------------


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= 300 else text[:297] + "..."


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
            f"Docker is not reachable ({_one_line(exc)}): start the Docker daemon or set DOCKER_HOST"
        ) from None
    return client


def require_image(client: "DockerClient", image: str) -> None:
    """Raise :class:`BadInput` unless ``image`` exists locally (nothing is pulled)."""
    import docker

    try:
        client.images.get(image)
    except docker.errors.ImageNotFound:
        raise BadInput(
            f"image {image!r} not found: build it with flowrig build PROJECT --tag {image}"
        ) from None
    except docker.errors.APIError as exc:
        raise InfrastructureError(f"cannot inspect image {image!r}: {_one_line(exc)}") from None


def create_network(client: "DockerClient", name: str, run_id: str) -> None:
    """Create the run's bridge network (a user-defined one: containers resolve names)."""
    import docker

    try:
        client.networks.create(name, driver="bridge", labels=labels(run_id, "network"), check_duplicate=True)
    except docker.errors.APIError as exc:
        raise InfrastructureError(f"cannot create Docker network {name}: {_one_line(exc)}") from None


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
        raise BadInput(
            f"image {plan.image!r} not found: build it with flowrig build PROJECT --tag {plan.image}"
        ) from None
    except docker.errors.APIError as exc:
        raise InfrastructureError(f"cannot create container {plan.name}: {_one_line(exc)}") from None


def start_container(container: "Container") -> None:
    """Start a created container."""
    import docker

    try:
        container.start()
    except docker.errors.APIError as exc:
        raise InfrastructureError(
            f"container {container.name} did not start: {_one_line(exc)}; "
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
                logger.warning("removing container %s failed: %s", container.name, _one_line(exc))


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
                    logger.warning("removing container %s failed: %s", container.name, _one_line(exc))
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
                    logger.warning("removing network %s failed: %s", net.name, _one_line(exc))
                    break
                time.sleep(0.25)
    return removed


# --- the cluster ---------------------------------------------------------------------


@dataclass(frozen=True)
class _RunSettings:
    """What the scheduler and every worker container of one cluster share."""

    client: Any
    run_id: str
    image: str
    network: str
    tls: Any
    own_network: bool
    publish: bool
    worker_threads: int
    environment: Mapping[str, str]
    worker_memory: str | None
    worker_preload: tuple[str, ...]
    scheduler_start_timeout: float


async def _in_thread(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    # docker-py blocks; the cluster's event loop must not.
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(None, functools.partial(fn, *args, **kwargs))


class _ContainerProcess(ProcessInterface):
    """A Dask role living in one container; closing it removes the container."""

    def __init__(self, settings: _RunSettings) -> None:
        super().__init__()
        self.settings = settings
        self.container: "Container | None" = None

    async def _launch(self, plan: ContainerPlan) -> "Container":
        self.container = await _in_thread(create_container, self.settings.client, plan)
        await _in_thread(start_container, self.container)
        return self.container

    async def close(self) -> None:
        if self.container is not None:
            await _in_thread(stop_and_remove, self.container)
        await super().close()


class DockerScheduler(_ContainerProcess):
    """The scheduler container; ready once it logs that it listens."""

    def __init__(self, settings: _RunSettings) -> None:
        super().__init__(settings)
        self.address = scheduler_address(settings.run_id)
        self.contact_address = self.address
        self.dashboard_address: str | None = None

    async def start(self) -> None:
        s = self.settings
        if s.own_network:
            await _in_thread(create_network, s.client, s.network, s.run_id)
        plan = render_scheduler(s.run_id, s.image, s.network, tls=s.tls, publish=s.publish)
        container = await self._launch(plan)
        await _in_thread(wait_for_log, container, SCHEDULER_READY, s.scheduler_start_timeout, "scheduler")
        if s.publish:
            port = await _in_thread(published_port, container, defaults.SCHEDULER_PORT)
            dashboard = await _in_thread(published_port, container, defaults.DASHBOARD_PORT)
            self.external_address = f"tls://127.0.0.1:{port}"
            self.dashboard_address = f"http://127.0.0.1:{dashboard}/status"
        else:
            self.dashboard_address = f"http://{plan.name}:{defaults.DASHBOARD_PORT}/status"
        await super().start()


class DockerWorker(_ContainerProcess):
    """One worker container. Ready as soon as it runs: the cluster waits for workers
    to join the scheduler, which is the readiness that counts.

    ``scheduler`` (what :class:`SpecCluster` passes) is not used: a worker always
    reaches the scheduler by its container name on the run's network.
    """

    def __init__(self, scheduler: str, name: object = None, *, settings: _RunSettings) -> None:
        super().__init__(settings)
        self.name = name

    async def start(self) -> None:
        s = self.settings
        plan = render_worker(
            s.run_id, s.image, s.network, self.name,
            tls=s.tls, threads=s.worker_threads, environment=s.environment, memory=s.worker_memory,
            preload=s.worker_preload,
        )
        await self._launch(plan)
        await super().start()


def _flowrig_cause(exc: BaseException) -> FlowrigError | None:
    # SpecCluster wraps a failed start in RuntimeError; the cause says what went wrong.
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, FlowrigError):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


class DockerCluster(SpecCluster):
    """A Dask cluster whose scheduler and workers are containers of one flowrig image.

    Parameters
    ----------
    image
        The image (built by ``flowrig build``); it must exist locally.
    n_workers
        Workers to start with; :meth:`adapt` and :meth:`scale` work as usual.
    run_id
        Names and labels of the containers; a new one when omitted.
    network
        Network the containers join, which this process must be on too (a runner
        container). When omitted the cluster makes its own network, publishes the
        scheduler on 127.0.0.1 and removes the network again on close.
    tls
        Certificates every role uses; copied into each container. Default: the image's
        baked files when running in the image, else new ones for this cluster.
    worker_threads
        Threads per worker.
    environment
        Environment of every worker (e.g. ``PREFECT_API_URL``).
    worker_memory
        Memory limit of each worker container, e.g. ``"2g"``.
    worker_preload
        Modules each worker imports before it joins (``--preload``).
    scheduler_start_timeout
        Seconds the scheduler may take to listen.
    client
        A ``docker.DockerClient``; default: from the environment.
    asynchronous, loop
        As for every ``distributed`` cluster.
    """

    def __init__(
        self,
        image: str,
        *,
        n_workers: int = 1,
        run_id: str | None = None,
        network: str | None = None,
        tls: "TLSMaterial | None" = None,
        worker_threads: int = defaults.WORKER_THREADS,
        environment: Mapping[str, str] | None = None,
        worker_memory: str | None = None,
        worker_preload: Iterable[str] = defaults.DOCKER_WORKER_PRELOAD,
        scheduler_start_timeout: float = defaults.DOCKER_SCHEDULER_START_TIMEOUT,
        client: "DockerClient | None" = None,
        asynchronous: bool = False,
        loop: Any = None,
    ) -> None:
        run_id = check_run_id(run_id or new_run_id())
        client = client or connect()
        tls = tls or _default_tls()
        self.settings = _RunSettings(
            client=client,
            run_id=run_id,
            image=image,
            network=network or network_name(run_id),
            tls=tls,
            own_network=network is None,
            publish=network is None,
            worker_threads=worker_threads,
            environment=dict(environment or {}),
            worker_memory=worker_memory,
            worker_preload=tuple(worker_preload),
            scheduler_start_timeout=scheduler_start_timeout,
        )
        self.run_id = run_id
        self._closed_once = False
        worker = {"cls": DockerWorker, "options": {"settings": self.settings}}
        workers = {i: worker for i in range(n_workers)}
        try:
            super().__init__(
                workers=workers,
                scheduler={"cls": DockerScheduler, "options": {"settings": self.settings}},
                worker=worker,
                security=tls.to_security(),
                asynchronous=asynchronous,
                loop=loop,
                name=f"flowrig-{run_id}",
            )
        except BaseException as exc:
            # A failed start must not leave containers, a network or a loop thread.
            with contextlib.suppress(Exception):
                self._loop_runner.stop()
            self._sweep()
            cause = _flowrig_cause(exc)
            if cause is not None:
                raise cause from None
            raise

    def _sweep(self) -> None:
        s = self.settings
        roles = None if s.own_network else ("scheduler", "worker")
        remove_run(s.client, s.run_id, roles=roles, network=s.own_network)

    async def _close(self) -> None:
        try:
            await super()._close()
        finally:
            # Whatever the graceful close missed (a worker still starting, a failed start).
            await _in_thread(self._sweep)

    @property
    def dashboard_link(self) -> str:
        """Dashboard URL: on 127.0.0.1 when published, else by name on the run's network."""
        if "dashboard" not in (self.scheduler_info or {}).get("services", {}):
            return ""
        return getattr(self.scheduler, "dashboard_address", None) or ""

    def worker_containers(self) -> list["Container"]:
        """This cluster's worker containers, running or not."""
        return run_containers(self.settings.client, self.run_id, roles=("worker",))

    def wait_for_first_workers(self, n: int, timeout: float) -> None:
        """Block until ``n`` workers have joined the scheduler.

        Raises
        ------
        InfrastructureError
            When every worker container has exited, or after ``timeout`` seconds;
            the message holds a worker's last log lines.
        """
        deadline = time.monotonic() + timeout
        while len(self.scheduler_info.get("workers", {})) < n:
            containers = self.worker_containers()
            for c in containers:
                c.reload()
            if containers and all(c.status in ("exited", "dead") for c in containers):
                c = containers[0]
                raise InfrastructureError(
                    f"worker container {c.name} exited (code {c.attrs['State'].get('ExitCode')}) "
                    f"before joining the scheduler: {container_logs_tail(c)}"
                )
            if time.monotonic() > deadline:
                tail = container_logs_tail(containers[0]) if containers else "no worker container"
                raise InfrastructureError(f"no worker joined the scheduler within {timeout:.0f} s: {tail}")
            time.sleep(0.25)


def _default_tls() -> "TLSMaterial":
    from flowrig.certs import TLSMaterial

    if os.environ.get("FLOWRIG_IN_IMAGE") and defaults.IMAGE_TLS_DIR.is_dir():
        return TLSMaterial.from_dir(defaults.IMAGE_TLS_DIR)
    return TLSMaterial.ephemeral()


# --- the backend ----------------------------------------------------------------------


def _positive_seconds(options: Mapping[str, Any], key: str, default: float) -> float:
    value = options.get(key, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
        raise BadInput(f"[cluster.options] {key} = {value!r}: use a number of seconds > 0")
    return float(value)


def _check_options(options: Mapping[str, Any]) -> dict[str, Any]:
    unknown = sorted(set(options) - set(OPTIONS))
    if unknown:
        known = ", ".join(f"{k} ({v})" for k, v in OPTIONS.items())
        raise BadInput(f"[cluster.options] {', '.join(unknown)} not known to the docker backend; it takes {known}")
    environment = options.get("environment") or {}
    if not isinstance(environment, Mapping):
        raise BadInput(f"[cluster.options] environment must be a table of strings, got {environment!r}")
    memory = options.get("worker_memory")
    if memory is not None and not isinstance(memory, (str, int)):
        raise BadInput(f"[cluster.options] worker_memory = {memory!r}: use a size such as '2g'")
    return {
        "environment": {str(k): str(v) for k, v in environment.items()},
        "worker_memory": None if memory is None else str(memory),
        "scheduler_start_timeout": _positive_seconds(
            options, "scheduler_start_timeout", defaults.DOCKER_SCHEDULER_START_TIMEOUT
        ),
        "start_timeout": _positive_seconds(options, "start_timeout", defaults.CLUSTER_START_TIMEOUT),
    }


def _loopback_url(url: str | None) -> bool:
    from urllib.parse import urlparse

    host = urlparse(url).hostname if url else None
    return host in ("127.0.0.1", "localhost", "::1")


class DockerBackend(Backend):
    """Scheduler and workers as containers of the run's image.

    Meant to run inside a runner container that :func:`run_in_container` started
    (``FLOWRIG_DOCKER_NETWORK`` set): every role is then on the run's network and the
    run's Prefect API listens there too. Used elsewhere (directly on a host), it makes
    a network of its own and publishes the scheduler on 127.0.0.1; workers then reach
    Prefect only through a ``PREFECT_API_URL`` that is not on loopback.
    """

    name = "docker"

    def prefect_api_hosts(self) -> tuple[str, str]:
        """In a runner container: listen on all interfaces, advertise the container's name.

        Nothing is published to the host: only containers on the run's network can reach it.
        """
        if os.environ.get(ENV_NETWORK):
            return "0.0.0.0", os.environ.get(ENV_RUNNER_HOST) or socket.gethostname()
        return super().prefect_api_hosts()

    def start(self, spec: ClusterSpec) -> StartedCluster:
        image = spec.image or os.environ.get(ENV_IMAGE)
        if not image:
            raise BadInput("the docker backend needs an image: pass --image TAG (build one with flowrig build)")
        options = _check_options(spec.options)
        check_run_id(spec.run_id)
        network = os.environ.get(ENV_NETWORK) or None
        environment = {**spec.worker_env, **options["environment"]}
        if network is None and _loopback_url(environment.get("PREFECT_API_URL")):
            logger.warning(
                "the docker backend runs outside a runner container: workers cannot reach the "
                "Prefect API at %s; use `flowrig run --backend docker` from the host, or set "
                "PREFECT_API_URL to a server the containers can reach",
                environment["PREFECT_API_URL"],
            )
        client = connect()
        require_image(client, image)
        cluster = DockerCluster(
            image,
            n_workers=spec.size.n_workers,
            run_id=spec.run_id,
            network=network,
            tls=spec.tls,
            worker_threads=spec.worker_threads,
            environment=environment,
            worker_memory=options["worker_memory"],
            scheduler_start_timeout=options["scheduler_start_timeout"],
            client=client,
        )
        close = _close_once(cluster)
        try:
            if spec.size.adapt:
                cluster.adapt(minimum=spec.size.adapt[0], maximum=spec.size.adapt[1])
            if spec.size.n_workers > 0:
                cluster.wait_for_first_workers(1, options["start_timeout"])
        except BaseException:
            close()
            raise
        return StartedCluster(
            scheduler_address=cluster.scheduler_address,
            dashboard_link=cluster.dashboard_link or None,
            close=close,
            cluster=cluster,
        )


def _close_once(cluster: DockerCluster) -> Callable[[], None]:
    lock = threading.Lock()
    done: list[bool] = []

    def close() -> None:
        with lock:
            if done:
                return
            done.append(True)
            try:
                cluster.close()
            finally:
                # Even when the graceful close failed, nothing of the cluster may stay.
                cluster._sweep()

    return close


# --- the host side: the runner in a container -----------------------------------------


def _socket_of(client: "DockerClient") -> tuple[str, int | None]:
    """Path and group of the daemon's Unix socket, to mount into the runner container."""
    base = str(client.api.base_url)
    host = os.environ.get("DOCKER_HOST", "")
    path = host[len("unix://"):] if host.startswith("unix://") else defaults.DOCKER_SOCKET
    if not (base.startswith("http+docker://") and Path(path).exists()):
        raise BadInput(
            f"the docker backend mounts the Docker socket into the runner container, but Docker is "
            f"reached at {host or base}: use a local daemon through a Unix socket"
        )
    return path, os.stat(path).st_gid


def _host_image(project: str | Path | None, image: str | None) -> str:
    """The image to run: ``--image``, else ``[cluster] image`` of the host's project."""
    if image:
        return image
    if project is not None:
        path = Path(project)
        if not path.exists():
            raise BadInput(f"project directory {str(path)!r} does not exist")
        if (path / defaults.PROJECT_FILE).is_file() or path.is_file():
            from flowrig.project import load_project

            found = load_project(path).cluster.image
            if found:
                return found
    raise BadInput(
        "the docker backend needs an image: pass --image TAG or set [cluster] image; "
        "build one with flowrig build PROJECT --tag TAG"
    )


class _LogPump:
    """Copies a container's stdout to ours and its stderr to our stderr, as it comes."""

    def __init__(self, container: "Container") -> None:
        self.threads = [
            threading.Thread(target=self._copy, args=(container, True, sys.stdout), daemon=True),
            threading.Thread(target=self._copy, args=(container, False, sys.stderr), daemon=True),
        ]
        for thread in self.threads:
            thread.start()

    @staticmethod
    def _copy(container: "Container", stdout: bool, target: Any) -> None:
        sink = getattr(target, "buffer", None)
        with contextlib.suppress(Exception):  # the container may vanish mid-stream
            for chunk in container.logs(stream=True, follow=True, stdout=stdout, stderr=not stdout):
                if sink is not None:
                    sink.write(chunk)
                else:
                    target.write(chunk.decode(errors="replace"))
                target.flush()

    def join(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        for thread in self.threads:
            thread.join(max(deadline - time.monotonic(), 0))


@contextlib.contextmanager
def _sigterm_as_exception() -> Iterator[None]:
    """SIGTERM raises :class:`flowrig.errors.Terminated`, so ``finally`` blocks tear down."""
    from flowrig.errors import Terminated

    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: Any) -> None:
        raise Terminated(signum)

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextlib.contextmanager
def _signals_ignored() -> Iterator[None]:
    """A second Ctrl-C or SIGTERM during teardown must not leave half a run behind."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.signal(s, signal.SIG_IGN) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def run_in_container(
    project: str | Path | None,
    *,
    image: str | None,
    params: Iterable[str] = (),
    params_file: str | Path | None = None,
    output: str = "text",
) -> int:
    """Run the image's flow once, with the runner in a container: ``flowrig run --backend docker``.

    The image carries its project, so ``project`` only supplies ``[cluster] image`` when
    ``image`` is not given; rebuild the image after editing the project. Parameters are
    read here (bad JSON fails before anything starts) and validated by the runner.

    The runner's stdout goes to stdout (with ``--output json`` its last line is the
    outcome) and its stderr to stderr. On every way out (success, failure, an
    exception, Ctrl-C, SIGTERM) every container labelled with the run id and the run's
    network are removed; after Ctrl-C or SIGTERM the runner first gets
    :data:`~flowrig.defaults.DOCKER_RUNNER_STOP_TIMEOUT` seconds to stop its cluster.

    Returns
    -------
    int
        The runner's exit code: 0 completed, 1 flow failed, 2 bad input, 3 infrastructure.

    Raises
    ------
    BadInput
        Bad parameters, no image given, or the image does not exist locally.
    InfrastructureError
        Docker is not reachable, or the runner container cannot be created or started.
    """
    from flowrig import parameters as params_mod

    parameters = params_mod.gather(params, params_file)
    image = _host_image(project, image)
    client = connect()
    require_image(client, image)
    socket_path, socket_gid = _socket_of(client)
    run_id = check_run_id(os.environ.get(ENV_RUN_ID) or new_run_id())
    plan = render_runner(
        run_id,
        image,
        parameters=parameters,
        output=output,
        socket_path=socket_path,
        socket_gid=socket_gid,
        environ=os.environ,
    )
    if _loopback_url(os.environ.get("PREFECT_API_URL")):
        logger.warning("PREFECT_API_URL points at this machine's loopback, which containers cannot reach")
    runner: "Container | None" = None
    finished = False
    with _sigterm_as_exception():
        try:
            create_network(client, network_name(run_id), run_id)
            runner = create_container(client, plan)
            print(
                f"flowrig run {run_id}: runner container {plan.name} of {image} on network {plan.network}",
                file=sys.stderr,
                flush=True,
            )
            start_container(runner)
            pump = _LogPump(runner)
            code = int(runner.wait()["StatusCode"])
            finished = True
            pump.join(timeout=10)
            return code
        finally:
            with _signals_ignored():
                if runner is not None and not finished:
                    # Interrupted: the runner tears its own cluster down first.
                    stop_and_remove(runner, timeout=defaults.DOCKER_RUNNER_STOP_TIMEOUT)
                remove_run(client, run_id)
