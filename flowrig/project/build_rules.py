"""The rules for a flow project's files, shared by the host and the image build.

The image build runs these before flowrig or any dependency is installed
(``flowrig/builder/buildsteps.py`` loads this file by path), so this module uses the
standard library only and never imports flowrig. The host applies the same rules when
it loads a project (:func:`flowrig.project.load_project`), so a project the host accepts
is one the build accepts, with the same messages. Credentials by value, in files and in
``[cluster.options]``, have rules of their own: :mod:`flowrig.project.secret_rules` and
:mod:`flowrig.project.secret_scan`.
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


#: Byte order marks pip recognises at the start of a requirements file, and their codecs.
_BOMS = (
    (b"\xef\xbb\xbf", "utf-8-sig"),
    (b"\xff\xfe\x00\x00", "utf-32"),
    (b"\x00\x00\xfe\xff", "utf-32"),
    (b"\xff\xfe", "utf-16"),
    (b"\xfe\xff", "utf-16"),
)


def read_requirements_text(path: Path) -> str:
    """A requirements file's text: UTF-8, or the encoding its byte order mark names
    (pip reads both, and Windows tools write UTF-16 with one).

    Raises
    ------
    RuleError
        When the file is neither.
    """
    data = path.read_bytes()
    codec = next((name for bom, name in _BOMS if data.startswith(bom)), "utf-8")
    try:
        return data.decode(codec)
    except UnicodeDecodeError:
        raise RuleError(f"requirements file {path.name} is not UTF-8 text: save it as UTF-8") from None


_INCLUDE = re.compile(r"^\s*(-r|--requirement|-c|--constraint)(\s+|=)(\S+)\s*$")


def flatten_requirements(
    path: Path,
    root: Path,
    out: Path | None = None,
    _seen: frozenset[Path] = frozenset(),
    files: list[Path] | None = None,
) -> list[str]:
    """Lines of a requirements file with ``-r`` includes inlined.

    Includes are resolved relative to the including file and must stay inside
    ``root`` (the project), because only the project travels into the build.
    Constraint files (``-c``) are copied into ``out`` and referred to there; with no
    ``out`` they are only checked. ``files``, when given, gets every file read.

    Raises
    ------
    RuleError
        An include that is missing, outside the project, or includes itself.
    """
    path = path.resolve()
    if path in _seen:
        raise RuleError(f"requirements file {path.name} includes itself")
    if files is not None:
        files.append(path)
    lines: list[str] = []
    for raw in read_requirements_text(path).splitlines():
        match = _INCLUDE.match(raw)
        if not match:
            lines.append(raw)
            continue
        target = (path.parent / match.group(3)).resolve()
        if root.resolve() not in target.parents or not target.is_file():
            raise RuleError(
                f"{path.name} includes {match.group(3)!r}, which is not a file inside the project"
            )
        included = flatten_requirements(target, root, out, _seen | {path}, files)
        if match.group(1) in ("-c", "--constraint"):
            if out is not None:
                copy = out / f"constraints-{len(list(out.glob('constraints-*.txt')))}.txt"
                copy.write_text("\n".join(included) + "\n")
                lines.append(f"-c {copy}")
        else:
            lines.extend(included)
    return lines


# --- credentials: files never copied (values: flowrig.project.secret_scan) -----------------

#: Credential files and directories of common tools, as ``.dockerignore`` patterns (a
#: directory's pattern covers everything below it). They never enter a build context:
#: ``flowrig build`` skips them with a warning, and the repository's ``.dockerignore``
#: holds the same lines for a plain ``docker build``.
CREDENTIAL_PATTERNS = (
    "**/.env*",  # .env, .env.production, .envrc
    "**/.aws",
    "**/.ssh",
    "**/.gnupg",
    "**/.netrc",
    "**/_netrc",
    "**/.pypirc",
    "**/.pgpass",
    "**/.git-credentials",
    "**/.npmrc",
    "**/.docker/config.json",
    "**/.config/gcloud",
    "**/.config/gh",
    "**/.azure",
    "**/.kube/config",
    "**/.oci",
    "**/.boto",
    "**/.s3cfg",
    "**/.databrickscfg",
    "**/.terraform.d/credentials.tfrc.json",
)

def without_option_values(config: dict) -> dict:
    """``config`` with ``[cluster.options]`` reduced to its sorted keys.

    What the image manifest and the build log show: option values can be anything a
    user put there, so only their names are kept.
    """
    cluster = config.get("cluster")
    if not isinstance(cluster, dict) or "options" not in cluster:
        return dict(config)
    options = cluster["options"]
    keys = sorted(options) if isinstance(options, dict) else []
    return {**config, "cluster": {**cluster, "options": keys}}
