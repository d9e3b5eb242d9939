"""Whether the running environment holds a project's requirements.

A local run's tasks run in the interpreter flowrig itself runs in (its workers are
forked from it), so a requirement the environment lacks would fail a task with
``ModuleNotFoundError`` after the cluster started. :func:`unmet_requirements` reads the
project's requirements file the way pip reads it (``-r`` includes, line continuations,
comments, ``${VAR}``, environment markers, version specifiers, extras, per-line options)
and compares it with the distributions this interpreter sees (:mod:`importlib.metadata`,
names compared after PEP 503 normalisation, as pip compares them).
:func:`check_environment` turns what is missing into one line that names it and the one
command that installs it where flowrig runs (:func:`install_command`).

Not checked, because only building them would tell: a bare URL or path that names no
distribution (no ``#egg=``, not a wheel or sdist file name), and the version of a
direct reference (``name @ url``: its presence is checked). Constraint files (``-c``)
only narrow versions pip picks and need nothing installed, so they are not read.
"""

from __future__ import annotations

import functools
import os
import re
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Iterator

from flowrig.errors import BadInput
from flowrig.project import build_rules

if TYPE_CHECKING:
    from packaging.requirements import Requirement

    from flowrig.project.models import Project

#: pip removes a ``#`` comment at the start of a line or after whitespace.
_COMMENT = re.compile(r"(^|\s+)#.*$")
#: pip expands ``${NAME}`` (this form only) from the environment in requirement lines.
_ENV_VAR = re.compile(r"\$\{([A-Z0-9_]+)\}")
_EDITABLE = re.compile(r"^(-e|--editable)(\s+|=)(?P<target>.+)$")
_EGG = re.compile(r"#(?:.*&)?egg=(?P<name>[A-Za-z0-9][A-Za-z0-9._-]*)")


@dataclass(frozen=True)
class Unmet:
    """One requirement the environment does not satisfy.

    Attributes
    ----------
    requirement
        The requirement as the file spells it (without per-line options).
    installed
        The installed version, or ``None`` when the distribution is not installed.
    needed_by_flowrig
        The distribution is one of flowrig's own dependencies, at a version flowrig
        runs on: installing another would break flowrig rather than fix the project.
    """

    requirement: str
    installed: str | None = None
    needed_by_flowrig: bool = False

    def describe(self) -> str:
        if self.installed is None:
            return f"{self.requirement} (not installed)"
        return f"{self.requirement} ({self.installed} installed)"


# --- reading a requirements file as pip does ---------------------------------------------
def logical_lines(lines: Iterable[str]) -> Iterator[str]:
    """Lines with ``\\`` continuations joined, comments removed and ``${VAR}`` expanded;
    blank ones dropped."""
    pending = ""
    for raw in [*lines, ""]:
        if raw.endswith("\\"):
            pending += raw[:-1]
            continue
        line = _COMMENT.sub("", pending + raw).strip()
        pending = ""
        line = _ENV_VAR.sub(lambda match: os.environ.get(match.group(1), match.group(0)), line)
        if line:
            yield line


def named_requirements(path: Path, root: Path) -> list[tuple[str, "Requirement"]]:
    """The requirements of a file (``-r`` includes inlined) that name a distribution,
    each with its text as the file spells it.

    Raises
    ------
    BadInput
        A line that is neither an option nor a requirement pip understands, or an
        include that leaves the project.
    """
    from packaging.requirements import InvalidRequirement, Requirement

    try:
        lines = build_rules.flatten_requirements(path, root)
    except build_rules.RuleError as exc:
        raise BadInput(str(exc)) from None
    found = []
    for line in logical_lines(lines):
        editable = _EDITABLE.match(line)
        if editable:
            name = _name_of_target(editable.group("target").strip(), path.parent)
            if name:
                found.append((name, Requirement(name)))
            continue
        if line.startswith("-"):
            continue  # an option of the file: an index, find-links, --pre, ...
        text = _without_options(line)
        try:
            found.append((text, Requirement(text)))
        except InvalidRequirement as exc:
            name = _name_of_target(text, path.parent)
            if name:
                found.append((name, Requirement(name)))
            elif not _looks_like_location(text):
                # packaging's message draws a caret under the fault on extra lines.
                reason = str(exc).splitlines()[0].rstrip(" ,:")
                raise BadInput(
                    f"{path}: {text!r} is not a requirement pip understands ({reason}): fix the line"
                ) from None
    return found


def _without_options(line: str) -> str:
    """A requirement line without the options pip allows after it (``--hash=...``):
    like pip, everything from the first word that starts with ``-``."""
    words = line.split(" ")
    kept = next((index for index, word in enumerate(words) if word.startswith("-")), len(words))
    return " ".join(words[:kept]).strip()


def _looks_like_location(text: str) -> bool:
    return "://" in text or text.startswith((".", "/", "~")) or os.sep in text


def _name_of_target(target: str, base: Path) -> str | None:
    """The distribution a bare URL or path installs, when its spelling tells."""
    from packaging.utils import InvalidSdistFilename, InvalidWheelFilename, parse_sdist_filename, parse_wheel_filename

    egg = _EGG.search(target)
    if egg:
        return egg.group("name")
    filename = target.split("#", 1)[0].split("?", 1)[0].rstrip("/").rsplit("/", 1)[-1]
    try:
        if filename.endswith(".whl"):
            return str(parse_wheel_filename(filename)[0])
        if filename.endswith((".tar.gz", ".zip")):
            return str(parse_sdist_filename(filename)[0])
    except (InvalidWheelFilename, InvalidSdistFilename):
        return None
    local = (base / target).resolve() if "://" not in target else None
    if local is not None and (local / "pyproject.toml").is_file():
        import tomllib

        try:
            name = tomllib.loads((local / "pyproject.toml").read_text(encoding="utf-8")).get("project", {}).get("name")
        except (tomllib.TOMLDecodeError, UnicodeDecodeError, OSError):
            return None
        return name if isinstance(name, str) else None
    return None


# --- comparing with the environment ---------------------------------------------------------
def unmet_requirements(path: Path, root: Path) -> list[Unmet]:
    """The requirements of ``path`` this interpreter's environment does not satisfy.

    Requirements whose marker does not hold here are skipped; an extra's own
    requirements (``name[extra]``) are checked too, as pip would install them.
    """
    from importlib import metadata

    installed = _installed_versions()
    unmet: list[Unmet] = []
    seen: set[tuple[str, str, str]] = set()
    pending = [(text, requirement, "") for text, requirement in named_requirements(path, root)]
    while pending:
        text, requirement, extra = pending.pop(0)
        if requirement.marker is not None and not requirement.marker.evaluate({"extra": extra}):
            continue
        name = _canonical(requirement.name)
        key = (name, str(requirement.specifier), ",".join(sorted(requirement.extras)))
        if key in seen:
            continue
        seen.add(key)
        version = installed.get(name)
        if version is None or not _satisfied(requirement, version):
            # The folder names said no: importlib.metadata, which reads the metadata
            # itself, has the last word (an egg-info, a zip, an odd installer).
            try:
                version = metadata.version(requirement.name)
            except metadata.PackageNotFoundError:
                unmet.append(Unmet(text))
                continue
            if not _satisfied(requirement, version):
                unmet.append(Unmet(text, version, name in _flowrig_requirement_names()))
                continue
        for extra_name in sorted(requirement.extras):
            distribution = metadata.distribution(requirement.name)
            pending += [(str(child), child, extra_name) for child in _extra_requirements(distribution, extra_name)]
    return unmet


def _installed_versions() -> dict[str, str]:
    """Canonical name -> version of the distributions on ``sys.path``, the first one of
    a name winning as it does for imports.

    Read from the ``NAME-VERSION.dist-info`` folder names alone (the binary
    distribution format spells both there), which takes a directory listing per path
    entry instead of parsing every distribution's metadata: a run pays for this check.
    """
    found: dict[str, str] = {}
    for entry in sys.path:
        try:
            names = [item.name for item in os.scandir(entry or ".")]
        except OSError:
            continue
        for folder in names:
            if not folder.endswith(".dist-info"):
                continue
            name, _, version = folder[: -len(".dist-info")].rpartition("-")
            if name and version:
                found.setdefault(_canonical(name), version)
    return found


def _canonical(name: str) -> str:
    from packaging.utils import canonicalize_name

    return canonicalize_name(name)


def _satisfied(requirement: "Requirement", version: str) -> bool:
    """Whether an installed ``version`` meets the requirement; a direct reference
    (``name @ url``) is met by any version."""
    from packaging.version import InvalidVersion

    if requirement.url is not None or not requirement.specifier:
        return True
    try:
        # An installed pre-release satisfies a plain specifier, as pip judges installed ones.
        return requirement.specifier.contains(version, prereleases=True)
    except InvalidVersion:
        return False


def _extra_requirements(distribution, extra: str) -> list["Requirement"]:
    """What ``distribution[extra]`` adds to the distribution's own requirements."""
    from packaging.requirements import InvalidRequirement, Requirement

    added = []
    for text in distribution.requires or ():
        try:
            requirement = Requirement(text)
        except InvalidRequirement:
            continue
        marker = requirement.marker
        if marker is not None and marker.evaluate({"extra": extra}) and not marker.evaluate({"extra": ""}):
            added.append(requirement)
    return added


@functools.cache
def _flowrig_requirement_names() -> frozenset[str]:
    """flowrig's own runtime dependencies (its extras' left out), by canonical name."""
    from importlib import metadata

    from packaging.requirements import InvalidRequirement, Requirement

    try:
        requires = metadata.requires("flowrig") or []
    except metadata.PackageNotFoundError:
        return frozenset()
    names = set()
    for text in requires:
        try:
            requirement = Requirement(text)
        except InvalidRequirement:
            continue
        if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):
            names.add(_canonical(requirement.name))
    return frozenset(names)


# --- the one command that installs them here ----------------------------------------------
def install_command(requirements: Path, *, prefix: str | None = None, python: str | None = None,
                    cwd: Path | None = None) -> str:
    """The command that installs ``requirements`` into the environment flowrig runs in.

    uv's environments (their ``pyvenv.cfg`` names uv) get ``uv pip install --python``,
    pipx's ``pipx runpip``, any other ``python -m pip install`` with this interpreter
    (``uv pip install --python`` when it has no pip but uv is on ``PATH``). Paths under
    the current directory are given relative to it.
    """
    import importlib.util
    import shutil

    prefix_path = Path(prefix or sys.prefix)
    interpreter = _shown(Path(python or sys.executable), cwd)
    target = _shown(requirements, cwd)
    if _made_by_uv(prefix_path):
        return f"uv pip install --python {interpreter} -r {target}"
    if prefix_path.parent.name == "venvs" and prefix_path.parent.parent.name == "pipx":
        return f"pipx runpip {shlex.quote(prefix_path.name)} install -r {target}"
    if importlib.util.find_spec("pip") is None and shutil.which("uv"):
        return f"uv pip install --python {interpreter} -r {target}"
    return f"{interpreter} -m pip install -r {target}"


def _made_by_uv(prefix: Path) -> bool:
    try:
        config = (prefix / "pyvenv.cfg").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return False
    return any(line.split("=", 1)[0].strip() == "uv" for line in config.splitlines())


def _shown(path: Path, cwd: Path | None) -> str:
    base = Path(cwd or Path.cwd()).absolute()
    absolute = path if path.is_absolute() else base / path
    try:
        shown = str(absolute.relative_to(base))
    except ValueError:
        shown = str(absolute)
    return shlex.quote(shown)


def check_environment(project: "Project") -> None:
    """Refuse a run whose project requires what this environment lacks.

    Does nothing when the project has no requirements file.

    Raises
    ------
    BadInput
        Naming every missing or mismatched requirement, and the command that installs
        them (or, for a version of one of flowrig's own dependencies, that the project
        must allow the installed one).
    """
    try:
        path = build_rules.requirements_path(project.root, project.requirements)
    except build_rules.RuleError as exc:
        raise BadInput(str(exc)) from None
    if path is None:
        return
    unmet = unmet_requirements(path, project.root)
    if unmet:
        raise BadInput(describe_unmet(unmet, path))


def describe_unmet(unmet: list[Unmet], path: Path) -> str:
    """One line naming what is missing, ending with the command that installs it."""
    shown = _shown(path, None)
    own = ", ".join(item.describe() for item in unmet if item.needed_by_flowrig)
    others = ", ".join(item.describe() for item in unmet if not item.needed_by_flowrig)
    # Installing another version of flowrig's own dependencies would break flowrig, not
    # fix the project: the file has to change, and no command is offered for them.
    own_part = f"asks for versions of flowrig's own dependencies other than those it runs on: {own}"
    if not others:
        return f"{shown} {own_part}; allow the installed versions in the file"
    lacks = f"requires packages this environment lacks: {others}; install them with: {install_command(path)}"
    if not own:
        return f"{shown} {lacks}"
    return f"{shown} {own_part}, which the file must allow; it also {lacks}"
