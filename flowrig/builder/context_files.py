"""The files a build context carries besides its Dockerfile: the flow project's and flowrig's own.

:func:`project_files` walks a flow project the way ``docker build`` would copy it (its
``.dockerignore`` honoured, with :class:`DockerIgnore`), leaving out credential files,
caches and links that lead outside it; :func:`flowrig_source` gives flowrig's package and
``pyproject.toml`` from a checkout or an installed wheel. Pure data: nothing is written
(:mod:`flowrig.builder.context` renders and writes the context).
"""

from __future__ import annotations

import json
import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from flowrig.builder import defaults

# tomllib and importlib.metadata are imported where they are used: `flowrig --help`
# imports this package and should not pay for them.

#: Files of flowrig's package that are not copied: the packaged Dockerfile is added
#: again by the wheel build inside the image (force-include).
_PACKAGE_SKIP = ("builder/Dockerfile", "builder/constraints.txt")

_PACKAGE_DIR = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class ContextFile:
    """One file of a build context.

    Attributes
    ----------
    data
        The file's bytes.
    mode
        Permission bits (0o644, 0o755 for executables, 0o600 for the leaf key).
    """

    data: bytes
    mode: int = 0o644


# --- the flow project ------------------------------------------------------------------


def project_files(project: Path, skipped: list[str] | None = None) -> list[tuple[str, ContextFile]]:
    """The files of a flow project that go into its image, sorted.

    Skipped: credential files and directories
    (:data:`flowrig.project.build_rules.CREDENTIAL_PATTERNS`, appended to ``skipped``
    when given, directories with a trailing "/"), :data:`flowrig.builder.defaults.CONTEXT_SKIP_NAMES`
    and ``..._SUFFIXES``, what the project's ``.dockerignore`` excludes, directories
    reached through symbolic links, symbolic links that lead outside the project or
    nowhere, and anything that is not a regular file. A symbolic link to a file inside
    the project is copied as the file it points to.
    """
    from flowrig.project.build_rules import CREDENTIAL_PATTERNS

    credentials = DockerIgnore(CREDENTIAL_PATTERNS)
    ignore = DockerIgnore.from_file(project / ".dockerignore")
    root = project.resolve()
    found: list[tuple[str, ContextFile]] = []
    left_out: list[str] = []
    for directory, dirs, names in os.walk(project):
        here = Path(directory)
        base = here.relative_to(project).as_posix()
        prefix = "" if base == "." else f"{base}/"
        kept_dirs = []
        for name in sorted(d for d in dirs if not _skipped(d)):
            if credentials.excludes(prefix + name):
                left_out.append(f"{prefix}{name}/")
            else:
                kept_dirs.append(name)
        dirs[:] = kept_dirs
        for name in sorted(names):
            relative = prefix + name
            if credentials.excludes(relative):
                left_out.append(relative)
                continue
            if _skipped(name):
                continue
            path = here / name
            if ignore.excludes(relative):
                continue
            if path.is_symlink():
                if not path.exists() or root not in path.resolve().parents:
                    continue
                if credentials.excludes(path.resolve().relative_to(root).as_posix()):
                    left_out.append(relative)  # a link to a credential file is one too
                    continue
            info = path.stat()
            if not stat.S_ISREG(info.st_mode):
                continue
            mode = 0o755 if info.st_mode & stat.S_IXUSR else 0o644
            found.append((relative, ContextFile(path.read_bytes(), mode)))
    if skipped is not None:
        skipped.extend(sorted(left_out))
    return sorted(found)


def _skipped(name: str) -> bool:
    return name in defaults.CONTEXT_SKIP_NAMES or name.endswith(defaults.CONTEXT_SKIP_SUFFIXES)


class DockerIgnore:
    """The patterns of a ``.dockerignore`` file, with Docker's matching rules.

    ``*`` and ``?`` stay within one path component, ``**`` spans any number, a leading
    ``!`` re-includes, the last matching pattern wins, and a pattern that matches a
    directory matches everything below it.
    """

    def __init__(self, patterns: Iterable[str] = ()) -> None:
        self._rules: list[tuple[bool, re.Pattern[str]]] = []
        for raw in patterns:
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            negate = line.startswith("!")
            line = line[1:].strip() if negate else line
            line = os.path.normpath(line).lstrip("/")
            if line in ("", "."):
                continue
            self._rules.append((negate, re.compile(_glob_to_regex(line))))

    @classmethod
    def from_file(cls, path: Path) -> DockerIgnore:
        """Patterns of ``path``; none when it does not exist."""
        if not path.is_file():
            return cls()
        return cls(path.read_text(encoding="utf-8").splitlines())

    def excludes(self, relative: str) -> bool:
        """Whether a path (POSIX, relative to the context root) is left out."""
        parts = relative.split("/")
        candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        excluded = False
        for negate, pattern in self._rules:
            if any(pattern.fullmatch(candidate) for candidate in candidates):
                excluded = not negate
        return excluded


def _glob_to_regex(pattern: str) -> str:
    out: list[str] = []
    i = 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
        elif pattern.startswith("**", i):
            out.append(".*")
            i += 2
        elif pattern[i] == "*":
            out.append("[^/]*")
            i += 1
        elif pattern[i] == "?":
            out.append("[^/]")
            i += 1
        elif pattern[i] == "[":
            end = pattern.find("]", i + 1)
            if end == -1:
                out.append(re.escape(pattern[i]))
                i += 1
            else:
                body = pattern[i + 1 : end].replace("\\", "\\\\")
                if body.startswith("!"):
                    body = "^" + body[1:]
                out.append(f"[{body}]")
                i = end + 1
        else:
            out.append(re.escape(pattern[i]))
            i += 1
    return "".join(out)


# --- flowrig's own source ----------------------------------------------------------------


def flowrig_source() -> dict[str, ContextFile]:
    """pyproject.toml, README.md and the flowrig package, from a checkout or a wheel."""
    files: dict[str, ContextFile] = {}
    checkout = _PACKAGE_DIR.parent
    pyproject = checkout / "pyproject.toml"
    if _is_flowrig_pyproject(pyproject):
        files["pyproject.toml"] = ContextFile(pyproject.read_bytes())
        readme = checkout / "README.md"
        if readme.is_file():
            files["README.md"] = ContextFile(readme.read_bytes())
    else:
        files["pyproject.toml"] = ContextFile(_pyproject_from_metadata())
    for directory, dirs, names in os.walk(_PACKAGE_DIR):
        dirs[:] = sorted(d for d in dirs if not _skipped(d) and not d.startswith("."))
        for name in sorted(names):
            if _skipped(name) or name.startswith("."):
                continue
            path = Path(directory) / name
            relative = path.relative_to(_PACKAGE_DIR).as_posix()
            if relative in _PACKAGE_SKIP or not path.is_file():
                continue
            files[f"flowrig/{relative}"] = ContextFile(path.read_bytes())
    return files


def _is_flowrig_pyproject(path: Path) -> bool:
    import tomllib

    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))["project"]["name"] == "flowrig"
    except (OSError, KeyError, TypeError, tomllib.TOMLDecodeError):
        return False


def _pyproject_from_metadata() -> bytes:
    """A pyproject.toml for an installed flowrig (wheels carry no pyproject.toml)."""
    from importlib import metadata

    dist = metadata.distribution("flowrig")
    requires = [r for r in (dist.requires or []) if "extra ==" not in r]
    scripts = sorted((ep.name, ep.value) for ep in dist.entry_points if ep.group == "console_scripts")
    lines = [
        "[build-system]",
        'requires = ["hatchling>=1.21"]',
        'build-backend = "hatchling.build"',
        "",
        "[project]",
        'name = "flowrig"',
        f"version = {json.dumps(dist.version)}",
        'requires-python = ">=3.11"',
        "dependencies = [",
        *(f"    {json.dumps(r)}," for r in requires),
        "]",
        "",
        "[project.scripts]",
        *(f"{json.dumps(name)} = {json.dumps(value)}" for name, value in scripts),
        "",
        "[tool.hatch.build.targets.wheel]",
        'packages = ["flowrig"]',
        "",
        "[tool.hatch.build.targets.wheel.force-include]",
        '"Dockerfile" = "flowrig/builder/Dockerfile"',
        '"constraints.txt" = "flowrig/builder/constraints.txt"',
        "",
    ]
    return "\n".join(lines).encode("utf-8")
