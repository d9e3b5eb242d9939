"""``flowrig.toml`` -> a typed, validated :class:`Project`.

Parsing is strict: unknown keys and wrong types are errors with the key's dotted name,
because a typo in a sizing key would otherwise silently give the wrong cluster.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from flowrig import defaults
from flowrig.errors import BadInput


@dataclass(frozen=True)
class Adapt:
    """Adaptive range of workers."""

    minimum: int
    maximum: int


@dataclass(frozen=True)
class ClusterConfig:
    """The ``[cluster]`` table."""

    backend: str = defaults.BACKEND
    n_workers: int | None = None
    adapt: Adapt | None = None
    sizing: str | None = None
    min_workers: int = defaults.MIN_WORKERS
    max_workers: int = defaults.MAX_WORKERS
    worker_threads: int = defaults.WORKER_THREADS
    image: str | None = None
    options: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Project:
    """A flow project: its root directory and its parsed ``flowrig.toml``."""

    root: Path
    flow: str
    requirements: str | None
    cluster: ClusterConfig
    raw: Mapping[str, Any] = field(default_factory=dict, compare=False)

    @property
    def flow_path(self) -> Path:
        """File that holds the flow (``flow = "path:function"``)."""
        return self.root / self.flow.rpartition(":")[0]

    @property
    def flow_function(self) -> str:
        """Name of the flow function in :attr:`flow_path`."""
        return self.flow.rpartition(":")[2]


_TOP_KEYS = {"flow", "requirements", "cluster", "name"}
_CLUSTER_KEYS = {
    "backend",
    "n_workers",
    "adapt",
    "sizing",
    "min_workers",
    "max_workers",
    "worker_threads",
    "image",
    "options",
}


def _expect(value: Any, kind: type | tuple[type, ...], key: str, what: str) -> Any:
    # bool is an int in Python; a worker count of `true` is a typo, not 1.
    if isinstance(value, bool) and kind is not bool:
        raise BadInput(f"{defaults.PROJECT_FILE}: '{key}' must be {what}, got {value!r}")
    if not isinstance(value, kind):
        raise BadInput(f"{defaults.PROJECT_FILE}: '{key}' must be {what}, got {value!r}")
    return value


def _unknown(table: Mapping[str, Any], allowed: set[str], prefix: str) -> None:
    extra = sorted(set(table) - allowed)
    if extra:
        name = f"{prefix}{extra[0]}"
        raise BadInput(
            f"{defaults.PROJECT_FILE}: unknown key '{name}'; allowed here: "
            + ", ".join(sorted(allowed))
        )


def _count(table: Mapping[str, Any], key: str, prefix: str, default: int | None) -> int | None:
    if key not in table:
        return default
    value = _expect(table[key], int, prefix + key, "a whole number")
    if value < 0:
        raise BadInput(f"{defaults.PROJECT_FILE}: '{prefix}{key}' must be >= 0, got {value}")
    return value


def parse_project(data: Mapping[str, Any], root: Path) -> Project:
    """Validate the parsed TOML of a project.

    Parameters
    ----------
    data
        The TOML document as a mapping.
    root
        The project's directory; file references are relative to it.

    Raises
    ------
    BadInput
        On unknown keys, wrong types or a malformed ``flow`` reference.
    """
    _unknown(data, _TOP_KEYS, "")
    if "flow" not in data:
        raise BadInput(
            f"{defaults.PROJECT_FILE}: missing 'flow'; add e.g. flow = \"flow.py:my_flow\""
        )
    flow = _expect(data["flow"], str, "flow", 'a "path.py:function" string')
    path, sep, func = flow.rpartition(":")
    if not sep or not path or not func.isidentifier():
        raise BadInput(
            f"{defaults.PROJECT_FILE}: 'flow' must look like \"flow.py:my_flow\", got {flow!r}"
        )
    requirements = data.get("requirements")
    if requirements is not None:
        _expect(requirements, str, "requirements", "a file name")

    table = _expect(data.get("cluster", {}), dict, "cluster", "a table")
    _unknown(table, _CLUSTER_KEYS, "cluster.")
    adapt = None
    if "adapt" in table:
        a = _expect(table["adapt"], dict, "cluster.adapt", "a table {minimum, maximum}")
        _unknown(a, {"minimum", "maximum"}, "cluster.adapt.")
        lo = _count(a, "minimum", "cluster.adapt.", 0)
        hi = _count(a, "maximum", "cluster.adapt.", None)
        if hi is None:
            raise BadInput(f"{defaults.PROJECT_FILE}: 'cluster.adapt.maximum' is required")
        if lo > hi:
            raise BadInput(
                f"{defaults.PROJECT_FILE}: 'cluster.adapt.minimum' ({lo}) is larger than "
                f"'cluster.adapt.maximum' ({hi})"
            )
        adapt = Adapt(lo, hi)
    n_workers = _count(table, "n_workers", "cluster.", None)
    if adapt is not None and n_workers is not None:
        raise BadInput(
            f"{defaults.PROJECT_FILE}: set either 'cluster.n_workers' or 'cluster.adapt', not both"
        )
    min_workers = _count(table, "min_workers", "cluster.", defaults.MIN_WORKERS)
    max_workers = _count(table, "max_workers", "cluster.", defaults.MAX_WORKERS)
    if min_workers > max_workers:
        raise BadInput(
            f"{defaults.PROJECT_FILE}: 'cluster.min_workers' ({min_workers}) is larger than "
            f"'cluster.max_workers' ({max_workers})"
        )
    threads = _count(table, "worker_threads", "cluster.", defaults.WORKER_THREADS)
    if threads < 1:
        raise BadInput(f"{defaults.PROJECT_FILE}: 'cluster.worker_threads' must be >= 1")
    sizing = table.get("sizing")
    if sizing is not None:
        _expect(sizing, str, "cluster.sizing", 'a "path.py:function" string')
        if ":" not in sizing:
            raise BadInput(
                f"{defaults.PROJECT_FILE}: 'cluster.sizing' must look like \"flow.py:on_execute\""
            )
    cluster = ClusterConfig(
        backend=_expect(table.get("backend", defaults.BACKEND), str, "cluster.backend", "a name"),
        n_workers=n_workers,
        adapt=adapt,
        sizing=sizing,
        min_workers=min_workers,
        max_workers=max_workers,
        worker_threads=threads,
        image=_expect(table["image"], str, "cluster.image", "an image tag") if "image" in table else None,
        options=dict(_expect(table.get("options", {}), dict, "cluster.options", "a table")),
    )
    return Project(root=root, flow=flow, requirements=requirements, cluster=cluster, raw=data)


def load_project(path: str | Path) -> Project:
    """Read and validate a project directory (or its ``flowrig.toml``).

    Raises
    ------
    BadInput
        When the file is missing, is not valid TOML, or fails :func:`parse_project`;
        also when the flow file or requirements file it names does not exist.
    """
    path = Path(path)
    file = path if path.is_file() else path / defaults.PROJECT_FILE
    if not file.is_file():
        if not path.exists():
            raise BadInput(f"project directory {str(path)!r} does not exist")
        raise BadInput(
            f"no {defaults.PROJECT_FILE} in {str(path)!r}: create one with "
            f'flow = "flow.py:my_flow"'
        )
    try:
        data = tomllib.loads(file.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise BadInput(f"{file}: not valid TOML ({exc})") from None
    project = parse_project(data, file.parent.resolve())
    if not project.flow_path.is_file():
        raise BadInput(
            f"flow file {str(project.flow_path)!r} does not exist: fix 'flow' in {file}"
        )
    if project.requirements and not (project.root / project.requirements).is_file():
        raise BadInput(
            f"requirements file {project.requirements!r} does not exist in {project.root}: "
            f"create it or remove 'requirements' from {defaults.PROJECT_FILE}"
        )
    return project
