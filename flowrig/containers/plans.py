"""Container plans: everything needed to create one container, as data (pure).

:func:`flowrig.containers.engine.create_container` is the one place that hands a plan
to the Docker engine.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping

#: Seconds ``docker stop`` waits before SIGKILL. Every role stops on SIGTERM in well
#: under a second, so this only bounds a stuck container.
STOP_TIMEOUT = 5


@dataclass(frozen=True)
class ContainerPlan:
    """Everything needed to create one container.

    Parameters
    ----------
    name, image, command
        Container name, image, arguments to the image's entry point (``None``: the
        image's own command).
    labels, environment
        Labels and environment of the container.
    network, aliases
        The network the container joins and its extra names there.
    publish
        Container ports published on 127.0.0.1, each on a free host port.
    binds
        Host path -> container path (read-write).
    group_add
        Extra groups of the container's user.
    stdin_open
        Keep stdin open for whoever starts the container to write to (certificates, a
        control channel); :func:`~flowrig.containers.engine.attach_stdin`.
    read_only, tmpfs, shm_size
        A read-only root file system, memory file systems (path -> mount options), and
        the size of ``/dev/shm`` (Docker syntax; ``None``: the engine's default).
    cap_drop, security_opt, pids_limit
        Capabilities dropped, security options (``no-new-privileges:true``), and the
        most processes and threads the container may run.
    memory
        Memory limit (Docker syntax, e.g. ``"2g"``), or ``None``.
    cpus, gpus
        CPU limit in CPUs (``None``: none), and GPUs the container is given (a device
        request of that many, which needs an engine with a GPU runtime).
    stop_timeout
        Seconds between SIGTERM and SIGKILL on ``docker stop``.
    entrypoint, hostname, init, user, working_dir
        As ``docker run`` has them; ``None`` keeps the image's.
    """

    name: str
    image: str
    command: tuple[str, ...] | None
    labels: Mapping[str, str]
    environment: Mapping[str, str]
    network: str
    aliases: tuple[str, ...] = ()
    publish: tuple[int, ...] = ()
    binds: Mapping[str, str] = field(default_factory=dict)
    group_add: tuple[str, ...] = ()
    stdin_open: bool = False
    read_only: bool = False
    tmpfs: Mapping[str, str] = field(default_factory=dict)
    shm_size: str | None = None
    cap_drop: tuple[str, ...] = ()
    security_opt: tuple[str, ...] = ()
    pids_limit: int | None = None
    memory: str | None = None
    cpus: float | None = None
    gpus: int = 0
    stop_timeout: int = STOP_TIMEOUT
    entrypoint: tuple[str, ...] | None = None
    hostname: str | None = None
    init: bool = False
    user: str | None = None
    working_dir: str | None = None

