"""Result-storage paths of a worker resolved against a base path resolved once.

Prefect's ``LocalFileSystem._resolve_path(key)`` resolves its base path (``expanduser``,
then ``realpath``: one ``lstat`` per component) and then the whole joined path again, on
every call. Each task run calls it three times with the same base: twice while it makes
its result record and once when its transaction looks for a cached result. On a worker
that runs thousands of quick tasks that is a tenth of the task engine's time, for a
base path that does not change.

:func:`install` wraps ``LocalFileSystem._resolve_path`` (once per worker process) so
that a key that is a single plain path component (what Prefect's storage keys are: a
cache key's hash or a random hex name) is joined to the base path as resolved the first
time this process saw it, after one ``lstat`` that sends a key which is a symlink back
to Prefect's own resolving. Everything else (``None``, ``""``, nested or absolute
paths, ``~``, ``..``, a base path that does not exist yet) goes to Prefect's function
unchanged. The result is the same ``Path``, and the outside-the-base check holds: a
plain component joined to a resolved directory stays inside it. What it leaves out: a
base path whose own symlinks are re-pointed while the worker runs keeps resolving to
the old target.

Fenced by tests/e2e/local/test_internals_workercost2.py: ``_resolve_path(self, path)``
returning ``Path(basepath).expanduser().resolve()`` joined with ``path`` and resolved;
``ResultStore`` making its records' storage keys and reading cached results through
that method, looked up on the storage object.
"""

from __future__ import annotations

import functools
import os
import threading
from pathlib import Path
from typing import Any

_INSTALLED = False
_LOCK = threading.Lock()
#: (basepath, working directory, HOME) -> the base path resolved, for bases that exist.
_BASES: dict[tuple[str, str, str], Path] = {}
_MAX_BASES = 64


def _plain_component(path: Any) -> bool:
    """Whether ``path`` is one path component that resolving leaves as it is (unless
    it names a symlink)."""
    return (
        type(path) is str
        and path not in ("", ".", "..")
        and "/" not in path
        and "\0" not in path
        and not path.startswith("~")
        and (os.altsep is None or os.altsep not in path)
    )


def _resolved_base(basepath: str | None) -> Path | None:
    """``basepath`` resolved as Prefect resolves it, from this process's cache; ``None``
    when it does not exist (then it is not cached: it may appear as a symlink later)."""
    key = (basepath or "", os.getcwd(), os.environ.get("HOME", ""))
    base = _BASES.get(key)
    if base is None:
        base = Path(basepath).expanduser().resolve() if basepath else Path(".").resolve()
        try:
            if not base.is_dir():
                return None
        except OSError:
            # A base this process may not look into (a non-root worker given HOME=/root):
            # Prefect's own resolving does not fail there, so neither may this.
            return None
        if len(_BASES) >= _MAX_BASES:
            _BASES.clear()
        _BASES[key] = base
    return base


def install() -> None:
    """Wrap ``LocalFileSystem._resolve_path`` (once per process)."""
    global _INSTALLED
    with _LOCK:
        if _INSTALLED:
            return
        from prefect.filesystems import LocalFileSystem

        original = LocalFileSystem._resolve_path

        @functools.wraps(original)
        def _resolve_path(self: Any, path: Any) -> Any:
            if _plain_component(path):
                base = _resolved_base(self.basepath)
                if base is not None:
                    candidate = base / path
                    if not os.path.islink(candidate):
                        return candidate
            return original(self, path)

        LocalFileSystem._resolve_path = _resolve_path
        _INSTALLED = True
