"""The ``snapshot``, ``split`` and ``imports`` steps: a project's own dependencies in a layer
of their own, with the bytecode its code needs.

The image's venv reaches it as two layers. The first holds flowrig's dependencies, made
in a build stage that no project file reaches: every project built with the same
flowrig, base image and backend gets the very same layer, which a registry, a host's
image store and the build cache then keep once. The second holds only what the
project's requirements add (none for a project without any), so a change of those
rebuilds and re-pulls that layer alone.

``snapshot`` records every path of the venv once the first is complete; after the
project's install, ``split`` copies each file or link that is new or changed since
into a tree that the Dockerfile copies onto ``/``. ``imports`` lists the modules the
project's code imports: the build compiles those (a worker imports them when its first
task arrives, in less than half the time with bytecode) and no other module of that
layer. Run inside the image build by
``buildsteps.py`` (which loads this file by path): the standard library only.
"""

from __future__ import annotations

import ast
import json
import os
import shutil
from pathlib import Path

#: Size recorded for a directory (its own size says nothing about its contents).
_DIRECTORY = -1


def snapshot(root: Path) -> dict[str, list[int]]:
    """Every path under ``root`` (relative, POSIX) -> [size, mtime in ns]: what a later
    step compares against to find what changed."""
    entries: dict[str, list[int]] = {}
    for directory, dirs, files in os.walk(root):
        here = Path(directory)
        for name in dirs + files:
            path = here / name
            info = path.lstat()
            size = _DIRECTORY if path.is_dir() and not path.is_symlink() else info.st_size
            entries[path.relative_to(root).as_posix()] = [size, info.st_mtime_ns]
    return entries


def write_snapshot(root: Path, out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(snapshot(root), sort_keys=True))


def read_snapshot(path: Path) -> dict[str, list[int]]:
    return json.loads(path.read_text())


def changed_since(root: Path, before: dict[str, list[int]]) -> tuple[list[str], list[str]]:
    """(files and links new or changed under ``root`` since ``before``, paths of
    ``before`` that are gone), both relative and sorted. Directories are not listed:
    a copied file brings its folders."""
    now = snapshot(root)
    changed = sorted(p for p, entry in now.items() if entry[0] != _DIRECTORY and before.get(p) != entry)
    gone = sorted(p for p in before if p not in now)
    return changed, gone


def split(root: Path, before: dict[str, list[int]], out: Path) -> tuple[int, int, list[str]]:
    """Copy what changed under ``root`` since ``before`` into ``out`` + ``root``'s
    absolute path (so ``COPY out/ /`` puts it back), with modes and times; folders
    take the modes of their originals. Returns (files, bytes, paths gone): a path gone
    from the lower layer stays in the image, so the caller reports those."""
    changed, gone = changed_since(root, before)
    target = out / root.resolve().relative_to("/")
    target.mkdir(parents=True, exist_ok=True)
    size = 0
    for relative in changed:
        source, copy = root / relative, target / relative
        copy.parent.mkdir(parents=True, exist_ok=True)
        if source.is_symlink():
            os.symlink(os.readlink(source), copy)
        else:
            shutil.copy2(source, copy)
            size += source.stat().st_size
    # Deepest first: copystat sets a folder's time, which writing into it would change.
    folders = [target, *(p for p in target.rglob("*") if p.is_dir() and not p.is_symlink())]
    for directory in sorted(folders, key=lambda p: -len(p.parts)):
        shutil.copystat(root / directory.relative_to(target), directory)
    return len(changed), size, gone


def project_imports(project: Path) -> list[str]:
    """Absolute module names the project's Python files import, sorted. ``from a.b
    import c`` gives ``a.b`` and ``a.b.c`` (``c`` may be a submodule: the compile step
    passes over a name that is none). A file that does not parse is passed over: the
    image's import check reports it."""
    names: set[str] = set()
    for path in sorted(project.rglob("*.py")):
        if any(part.startswith(".") for part in path.relative_to(project).parts):
            continue
        try:
            tree = ast.parse(path.read_bytes(), filename=str(path))
        except (SyntaxError, ValueError):
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module)
                names.update(f"{node.module}.{alias.name}" for alias in node.names if alias.name != "*")
    return sorted(names)
