"""Container plans: everything needed to create one container of a run, as data (pure).

:func:`render_scheduler`, :func:`render_worker` and :func:`render_runner` say what
each role's container looks like; :func:`flowrig.backends.docker.engine.create_container`
is the one place that hands a plan to the Docker daemon.
"""

from __future__ import annotations

import io
import json
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Mapping

from flowrig import defaults
from flowrig.backends.docker.naming import (
    ENV_IMAGE,
    ENV_NETWORK,
    ENV_RUN_ID,
    ENV_RUNNER_HOST,
    container_name,
    labels,
    network_name,
    scheduler_address,
)

if TYPE_CHECKING:
    from flowrig.certs import TLSMaterial


@dataclass(frozen=True)
class InjectedFile:
    """A file copied into a container before it starts (a name inside ``files_dir``)."""

    name: str
    data: bytes = field(repr=False)
    mode: int = 0o644


@dataclass(frozen=True)
class ContainerPlan:
    """Everything needed to create one container.

    :func:`~flowrig.backends.docker.engine.create_container` creates it.

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
