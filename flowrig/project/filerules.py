"""The rules for a flow project's files, shared by the host and the image build.

The image build runs these before flowrig or any dependency is installed
(``flowrig/builder/buildsteps.py`` loads this file by path), so this module uses the
standard library only and never imports flowrig. The host applies the same rules when
it loads a project (:func:`flowrig.project.load_project`), so a project the host accepts
is one the build accepts, with the same messages.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

#: File name of a flow project's configuration, at the project's root.
PROJECT_FILE = "flowrig.toml"
#: Requirements file read when ``flowrig.toml`` has no ``requirements`` key.
DEFAULT_REQUIREMENTS = "requirements.txt"


class RuleError(ValueError):
    """A project's files break a rule; the message is one line naming the fix."""


def read_project_config(project_dir: Path) -> dict:
    """The parsed ``flowrig.toml`` of a project directory (not yet validated).

    Raises
    ------
    RuleError
        When the file is missing or is not valid TOML.
    """
    path = project_dir / PROJECT_FILE
    if not path.is_file():
        raise RuleError(f"{path} is missing: a flow project needs a {PROJECT_FILE} at its root")
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise RuleError(f"{path} is not valid TOML ({exc}): fix the file") from None


def requirements_path(project_dir: Path, name: object) -> Path | None:
    """The project's requirements file, or None when it has none.

    Parameters
    ----------
    project_dir
        The project's root.
    name
        The ``requirements`` value of ``flowrig.toml`` (``None`` when absent). An
        explicit name must be an existing file inside the project; the default
        ``requirements.txt`` is optional.

    Raises
    ------
    RuleError
        A name that is not a string, points outside the project or does not exist.
    """
    if name is None:
        default = project_dir / DEFAULT_REQUIREMENTS
        return default if default.is_file() else None
    if not isinstance(name, str) or not name.strip():
        raise RuleError(f"'requirements' in {PROJECT_FILE} must be a file name (a string)")
    path = (project_dir / name).resolve()
    root = project_dir.resolve()
    if root != path and root not in path.parents:
        raise RuleError(
            f"requirements file {name!r} is outside the project {project_dir}: "
            "move it into the project directory"
        )
    if not path.is_file():
        raise RuleError(
            f"requirements file {name!r} named in {PROJECT_FILE} does not exist in {project_dir}: "
            "create it or remove the 'requirements' key"
        )
    return path


_INCLUDE = re.compile(r"^\s*(-r|--requirement|-c|--constraint)(\s+|=)(\S+)\s*$")


def flatten_requirements(
    path: Path, root: Path, out: Path | None = None, _seen: frozenset[Path] = frozenset()
) -> list[str]:
    """Lines of a requirements file with ``-r`` includes inlined.

    Includes are resolved relative to the including file and must stay inside
    ``root`` (the project), because only the project travels into the build.
    Constraint files (``-c``) are copied into ``out`` and referred to there; with no
    ``out`` they are only checked.

    Raises
    ------
    RuleError
        An include that is missing, outside the project, or includes itself.
    """
    path = path.resolve()
    if path in _seen:
        raise RuleError(f"requirements file {path.name} includes itself")
    lines: list[str] = []
    for raw in path.read_text(encoding="utf-8").splitlines():
        match = _INCLUDE.match(raw)
        if not match:
            lines.append(raw)
            continue
        target = (path.parent / match.group(3)).resolve()
        if root.resolve() not in target.parents or not target.is_file():
            raise RuleError(
                f"{path.name} includes {match.group(3)!r}, which is not a file inside the project"
            )
        included = flatten_requirements(target, root, out, _seen | {path})
        if match.group(1) in ("-c", "--constraint"):
            if out is not None:
                copy = out / f"constraints-{len(list(out.glob('constraints-*.txt')))}.txt"
                copy.write_text("\n".join(included) + "\n")
                lines.append(f"-c {copy}")
        else:
            lines.extend(included)
    return lines
