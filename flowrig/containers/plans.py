"""Container plans: everything needed to create one container, as data (pure).

:func:`flowrig.containers.engine.create_container` is the one place that hands a plan
to the Docker engine.
"""

from __future__ import annotations

import io
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Mapping

from flowrig import layout

#: Seconds ``docker stop`` waits before SIGKILL. Every role stops on SIGTERM in well
#: under a second, so this only bounds a stuck container.
STOP_TIMEOUT = 5
#: Where files copied into a container land unless a plan says otherwise.
FILES_DIR = "/tmp/flowrig-tls"


@dataclass(frozen=True)
class InjectedFile:
    """A file copied into a container before it starts (a name inside ``files_dir``)."""

    name: str
    data: bytes = field(repr=False)
    mode: int = 0o644


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
    files, files_dir
        Files copied into ``files_dir`` before start, owned by the image's user.
    memory
        Memory limit (Docker syntax, e.g. ``"2g"``), or ``None``.
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
    files: tuple[InjectedFile, ...] = ()
    files_dir: str = FILES_DIR
    memory: str | None = None
    stop_timeout: int = STOP_TIMEOUT
    entrypoint: tuple[str, ...] | None = None
    hostname: str | None = None
    init: bool = False
    user: str | None = None
    working_dir: str | None = None


def files_archive(directory: str, files: Iterable[InjectedFile], uid: int = layout.IMAGE_UID) -> bytes:
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
