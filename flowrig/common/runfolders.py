"""A run's folders on this machine, and which of them outlived their run.

Every folder a run makes on this machine (its Prefect API's database and CA file, its
local workers' scratch space) is made here, in the temporary directory, private to its
user (0700), with a marker file that the process which made it holds an exclusive
``flock`` on. The kernel releases that lock when the last process holding the file
open ends, however it ends (``kill -9`` and the OOM killer included), and processes
forked from the maker hold it too. So a folder whose lock can be taken belongs to no
live process: it is a leftover, which :func:`leftovers` lists and :func:`remove_leftover`
removes. A live run's folder is never touched: its lock cannot be taken.

The marker is locked before it gets its name, so no scan ever sees an unlocked marker
of a live run.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import stat
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

#: Every run folder's name starts with this.
PREFIX = "flowrig-"
#: The marker file in each run folder.
MARKER = ".flowrig-run-folder"


def root() -> Path:
    """Where run folders live: the temporary directory (``TMPDIR``)."""
    return Path(tempfile.gettempdir())


class RunFolder:
    """A folder of a live run, held by this process until :meth:`remove`.

    Parameters
    ----------
    path
        The folder.
    fd
        The open marker file this process holds the lock on.
    """

    def __init__(self, path: Path, fd: int) -> None:
        self.path = path
        self._fd: int | None = fd

    def remove(self) -> None:
        """Delete the folder and let go of it; safe to call more than once."""
        if self._fd is None:
            return
        shutil.rmtree(self.path, ignore_errors=True)
        os.close(self._fd)
        self._fd = None

    def __repr__(self) -> str:
        return f"RunFolder({str(self.path)!r})"


def make(kind: str, run_id: str | None = None) -> RunFolder:
    """Make a private folder ``flowrig-<kind>-XXXX`` for a run, held by this process.

    Parameters
    ----------
    kind
        What it holds (``prefect``, ``scratch``): part of its name and of its listing.
    run_id
        The run it belongs to, when known.
    """
    path = Path(tempfile.mkdtemp(prefix=f"{PREFIX}{kind}-", dir=root()))
    staged = path / f"{MARKER}.{os.getpid()}"
    fd = os.open(staged, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        details = {"kind": kind, "run_id": run_id, "pid": os.getpid(), "created": time.time()}
        os.write(fd, json.dumps(details).encode())
        os.rename(staged, path / MARKER)
    except BaseException:
        os.close(fd)
        shutil.rmtree(path, ignore_errors=True)
        raise
    return RunFolder(path, fd)


@dataclass(frozen=True)
class Leftover:
    """A run folder no live process holds."""

    path: str
    kind: str
    run_id: str | None
    pid: int | None
    created: float | None
    size: int


def _owned_folder(path: Path) -> bool:
    try:
        info = path.lstat()
    except OSError:
        return False
    return stat.S_ISDIR(info.st_mode) and info.st_uid == os.getuid()


@contextlib.contextmanager
def _taken(path: Path) -> Iterator[dict | None]:
    """Hold ``path``'s marker lock for the block, yielding its details; ``None`` when it
    is no run folder of this user or a live process holds it."""
    if not _owned_folder(path):
        yield None
        return
    try:
        fd = os.open(path / MARKER, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        yield None
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            yield None  # a live run's
            return
        try:
            details = json.loads(os.read(fd, 65536) or b"{}")
        except ValueError:
            details = {}
        yield details if isinstance(details, dict) else {}
    finally:
        os.close(fd)


def _size(path: Path) -> int:
    total = 0
    for directory, _, files in os.walk(path):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(directory, name)).st_size
    return total


def _leftover(path: Path, details: dict) -> Leftover:
    def text(key: str) -> str | None:
        value = details.get(key)
        return value if isinstance(value, str) else None

    def number(key: str) -> float | None:
        value = details.get(key)
        return value if isinstance(value, (int, float)) and not isinstance(value, bool) else None

    pid = number("pid")
    return Leftover(
        path=str(path), kind=text("kind") or "?", run_id=text("run_id"),
        pid=int(pid) if pid is not None else None, created=number("created"), size=_size(path),
    )


def leftovers(where: Path | None = None) -> list[Leftover]:
    """The run folders in ``where`` (default: :func:`root`) that no live process holds,
    oldest first."""
    found = []
    for path in sorted((where or root()).glob(f"{PREFIX}*")):
        with _taken(path) as details:
            if details is not None:
                found.append(_leftover(path, details))
    return sorted(found, key=lambda left: (left.created or 0, left.path))


def remove_leftover(path: str | Path) -> bool:
    """Delete the run folder at ``path`` if no live process holds it (checked again,
    holding its lock while it goes); returns whether it was removed."""
    with _taken(Path(path)) as details:
        if details is None:
            return False
        shutil.rmtree(path, ignore_errors=True)
        return not Path(path).exists()
