"""``flowrig.toml`` as typed, strict models.

Parsing is strict: unknown keys and wrong types are errors naming the key's dotted
place in the file, because a typo in a sizing key would otherwise silently give the
wrong cluster. pydantic checks the types (``Strict*``: ``true`` is not a worker count,
``"2"`` is not a number); the rules that relate two keys are checked here, each with a
message that names both.
"""

from __future__ import annotations

import re
from dataclasses import field
from pathlib import Path
from typing import Annotated, Any, Mapping

from pydantic import ConfigDict, Field, StrictBool, StrictFloat, StrictInt, StrictStr, TypeAdapter, ValidationError
from pydantic.dataclasses import dataclass

from flowrig.errors import BadInput
from flowrig.project import defaults
from flowrig.project.groups import GroupAdapt, WorkerGroup, check_groups

#: Unknown keys are refused everywhere in the file; types are checked per field.
_STRICT = ConfigDict(extra="forbid")

Count = Annotated[StrictInt, Field(ge=0)]
#: A number of seconds greater than zero.
Seconds = Annotated[StrictInt | StrictFloat, Field(gt=0, allow_inf_nan=False)]
_REFERENCE = re.compile(r"^(?P<path>.+):(?P<name>[A-Za-z_][A-Za-z0-9_]*)$")


@dataclass(config=_STRICT, frozen=True)
class Adapt:
    """``[cluster] adapt = { minimum, maximum }``: an adaptive range of workers."""

    minimum: Count = Field(0, description="fewest workers the cluster scales down to (0 is a real minimum)")
    maximum: Count | None = Field(None, description="most workers the cluster scales up to (required)")

    def __post_init__(self) -> None:
        if self.maximum is None:
            raise ValueError(f"{defaults.PROJECT_FILE}: 'cluster.adapt.maximum' is required")
        if self.minimum > self.maximum:
            raise ValueError(
                f"{defaults.PROJECT_FILE}: 'cluster.adapt.minimum' ({self.minimum}) is larger than "
                f"'cluster.adapt.maximum' ({self.maximum})"
            )


@dataclass(config=_STRICT, frozen=True)
class ClusterConfig:
    """The ``[cluster]`` table."""

    backend: StrictStr = Field(
        defaults.BACKEND,
        description="where the cluster runs: local, docker, ecs, fargate, ec2, azure, gcp, or any distributed "
        "cluster class as `package.module:ClusterClass`; `flowrig run --backend` overrides it",
    )
    n_workers: Count | None = Field(
        None, description=f"a fixed number of workers (or `adapt`); neither: {defaults.N_WORKERS}"
    )
    adapt: Adapt | None = Field(None, description="an adaptive range of workers instead of `n_workers`")
    sizing: StrictStr | None = Field(
        None,
        description="a sizing hook, `\"flow.py:on_execute\"`: a function `(parameters, provider_kwargs)` that "
        "sets the size from the run's parameters (Prefect 1's signature)",
    )
    min_workers: Count = Field(
        defaults.MIN_WORKERS,
        description="every size is clamped to at least this; also the workers an ecs/fargate/VM run needs "
        "when some cannot start",
    )
    max_workers: Count = Field(
        defaults.MAX_WORKERS, description="every size is clamped to at most this, a sizing hook's included"
    )
    worker_threads: Annotated[StrictInt, Field(ge=1)] = Field(
        defaults.WORKER_THREADS, description="threads of each worker process"
    )
    map_chunk: Annotated[StrictInt, Field(ge=1)] = Field(
        defaults.MAP_CHUNK,
        description="the most task runs of one `.map()` that one Dask task runs in turn (a big map only, "
        "one that leaves 8 Dask tasks per thread of the largest cluster); 1: a Dask task per task run, "
        "for maps of long tasks that must spread over workers joining late",
    )
    image: StrictStr | None = Field(
        None, description="image of the container and cloud backends; `--image` and `FLOWRIG_IMAGE` override it"
    )
    #: Default: the scheduler's own (:mod:`flowrig.roles.lifetime`).
    no_client_timeout: Seconds | None = Field(
        None,
        description="seconds a scheduler outlives its runner: it stops once no client has been connected "
        "that long (default 60)",
    )
    worker_groups: list[WorkerGroup] = Field(
        default_factory=list,
        description="`[[cluster.worker_groups]]`: workers of several kinds, each with its own size, threads, "
        "resources and task tags (docker and local backends; see Flow projects, Worker groups)",
    )
    #: Validated by the backend's own model when it starts.
    options: dict[str, Any] = Field(
        default_factory=dict,
        description="the backend's own options, checked by its model: see `[cluster.options]` below",
    )

    def __post_init__(self) -> None:
        if self.adapt is not None and self.n_workers is not None:
            raise ValueError(
                f"{defaults.PROJECT_FILE}: set either 'cluster.n_workers' or 'cluster.adapt', not both"
            )
        if self.min_workers > self.max_workers:
            raise ValueError(
                f"{defaults.PROJECT_FILE}: 'cluster.min_workers' ({self.min_workers}) is larger than "
                f"'cluster.max_workers' ({self.max_workers})"
            )
        check_groups(self.worker_groups, n_workers=self.n_workers, adapt=self.adapt, max_workers=self.max_workers)
        if self.sizing is not None and not _REFERENCE.match(self.sizing):
            raise ValueError(
                f"{defaults.PROJECT_FILE}: 'cluster.sizing' must look like \"flow.py:on_execute\", "
                f"got {self.sizing!r}"
            )


_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def _inside(name: str) -> bool:
    return bool(name.strip()) and not Path(name).is_absolute() and ".." not in Path(name).parts


@dataclass(config=_STRICT, frozen=True)
class BuildConfig:
    """The ``[build]`` table: what ``flowrig build`` does with the project's files.

    Every opt-out is explicit and by name: nothing is let through by a pattern the
    project did not write down.
    """

    allow_private_keys: list[StrictStr] = Field(
        default_factory=list,
        description="project files (paths relative to the project) that may hold a private key and still go "
        "into the image; any other file holding one refuses the build",
    )
    allow_credentials: list[StrictStr] = Field(
        default_factory=list,
        description='project files, directories (ending in "/") or single lines ("file:LINE") whose '
        "credential-looking content is no secret (an example, a test fixture); anything else holding a "
        "credential by value refuses the build",
    )
    allow_environment: list[StrictStr] = Field(
        default_factory=list,
        description="names of environment variables in [cluster.options] whose values look secret but are not",
    )

    def __post_init__(self) -> None:
        for name in self.allow_private_keys:
            if not _inside(name):
                raise ValueError(
                    f"{defaults.PROJECT_FILE}: 'build.allow_private_keys' entries must be paths "
                    f"inside the project, relative to it; got {name!r}"
                )
        for entry in self.allow_credentials:
            path, colon, line = entry.rpartition(":")
            if not _inside(path if colon and line.isdigit() else entry) or (colon and line.isdigit() and int(line) < 1):
                raise ValueError(
                    f"{defaults.PROJECT_FILE}: 'build.allow_credentials' entries must be paths inside the "
                    f'project, relative to it, each alone or with a line ("file:12"); got {entry!r}'
                )
        for name in self.allow_environment:
            if not _ENV_NAME.match(name):
                raise ValueError(
                    f"{defaults.PROJECT_FILE}: 'build.allow_environment' entries must be environment "
                    f"variable names; got {name!r}"
                )


@dataclass(config=_STRICT, frozen=True)
class RunSettings:
    """The ``[run]`` table."""

    timeout: Seconds | None = Field(
        None,
        description="seconds the whole run may take; past them it is ended, torn down, and exits 124 "
        "(`flowrig run --timeout` overrides it)",
    )
    #: Prefect completes a flow whose failed task only left others not run.
    fail_on_task_failure: StrictBool = Field(
        False,
        description="a flow that completed while some of its tasks failed fails the run: exit 1 "
        "(`--strict` / `--no-strict` override it)",
    )
    prices: StrictStr | None = Field(
        None,
        description="a TOML price file in the project directory, merged over the price table flowrig ships "
        "(estimated cost of what a run used; see the output reference)",
    )


@dataclass(config=_STRICT, frozen=True)
class ProjectFile:
    """The whole ``flowrig.toml`` document."""

    flow: StrictStr = Field(description="the Prefect `@flow` to run, as `\"path.py:function\"` in the project")
    requirements: StrictStr | None = Field(
        None,
        description="a pip requirements file of the flow's own dependencies: installed in images, checked "
        "against the environment of a local run",
    )
    name: StrictStr | None = Field(
        None, description="the project's name, as the image's manifest gives it; default: its directory's name"
    )
    cluster: ClusterConfig = Field(default_factory=ClusterConfig, description="the run's cluster")
    build: BuildConfig = Field(default_factory=BuildConfig, description="what `flowrig build` does")
    run: RunSettings = Field(default_factory=RunSettings, description="limits and rules of the run")

    def __post_init__(self) -> None:
        if not _REFERENCE.match(self.flow):
            raise ValueError(
                f"{defaults.PROJECT_FILE}: 'flow' must look like \"flow.py:my_flow\", got {self.flow!r}"
            )


@dataclass(frozen=True)
class Project:
    """A flow project: its root directory and its parsed ``flowrig.toml``."""

    root: Path
    flow: str
    requirements: str | None
    cluster: ClusterConfig
    build: BuildConfig = field(default_factory=BuildConfig)
    raw: Mapping[str, Any] = field(default_factory=dict, compare=False)
    run: RunSettings = field(default_factory=RunSettings)

    @property
    def flow_path(self) -> Path:
        """File that holds the flow (``flow = "path:function"``)."""
        return self.root / self.flow.rpartition(":")[0]

    @property
    def flow_function(self) -> str:
        """Name of the flow function in :attr:`flow_path`."""
        return self.flow.rpartition(":")[2]

    @property
    def name(self) -> str:
        """``name`` from the file, else the project directory's name."""
        return str(self.raw.get("name") or self.root.name)


# --- errors: one line naming the dotted key ------------------------------------------

_WHAT = {
    "int_type": "a whole number",
    "float_type": "a number",
    "seconds": "a finite number of seconds",
    "string_type": "a string",
    "dict_type": "a table",
    "dataclass_type": "a table",
    "model_type": "a table",
    "list_type": "a list",
    "bool_type": "true or false",
}
#: What a worker group's shape fields take, in the words of a TOML file.
_GROUP_WHAT = {
    "cpu": "a number of vCPUs greater than 0",
    "memory": 'MiB (4096) or text such as "8GiB"',
    "gpu": "a whole number of GPUs >= 0",
    "market": '"on-demand", "spot" or "fallback"',
    "options": "a table of [cluster.options] keys",
    "min_workers": "a whole number >= 0",
    "max_workers": "a whole number >= 0",
}
_FIELDS = {
    "": ProjectFile,
    "cluster": ClusterConfig,
    "cluster.adapt": Adapt,
    "cluster.worker_groups": WorkerGroup,
    "cluster.worker_groups.adapt": GroupAdapt,
    "build": BuildConfig,
    "run": RunSettings,
}


def _allowed(table: str) -> str:
    model = _FIELDS.get(table)
    names = sorted(getattr(model, "__dataclass_fields__", {}))
    return ", ".join(names)


def describe(exc: ValidationError, file: str = defaults.PROJECT_FILE) -> str:
    """The first problem of a validation error as one line: the dotted key and the fix."""
    error = exc.errors(include_url=False)[0]
    parts = [str(part) for part in error["loc"]]
    kind, value = error["type"], error.get("input")
    if kind == "string_pattern_mismatch" and parts[-1:] == ["name"]:
        return f"{file}: '{'.'.join(parts)}' must be a lowercase letter, then up to 19 lowercase letters, digits " \
            f"or dashes, got {value!r}"
    if parts[:2] == ["cluster", "worker_groups"] and len(parts) > 3 and parts[3] in _GROUP_WHAT:
        # A group's shape field: what it takes, whichever member of its union failed.
        return f"{file}: '{'.'.join(parts[:4])}' must be {_GROUP_WHAT[parts[3]]}, got {value!r}"
    if len(parts) > 1 and parts[-1] in ("int", "float") and kind in ("int_type", "float_type"):
        # A member of the Seconds union (or of a group's resource amounts): the key is the
        # field, the fix a number.
        parts, kind = parts[:-1], "float_type" if "resources" in parts else "seconds"
    if parts == ["cluster", "worker_groups"] and kind == "list_type":
        return (f"{file}: 'cluster.worker_groups' must be a list of tables: write [[cluster.worker_groups]] "
                "(two brackets) above each group")
    if kind == "finite_number":
        kind = "seconds"
    key = ".".join(parts)
    if kind in ("unexpected_keyword_argument", "extra_forbidden"):
        # A place in a list of tables ("cluster.worker_groups.0.x"): its table's keys.
        table = ".".join(p for p in parts[:-1] if not p.isdigit())
        return f"{file}: unknown key '{key}'; allowed here: {_allowed(table)}"
    if kind == "missing" or (kind == "missing_argument"):
        if key == "flow":
            return f"{file}: missing 'flow'; add e.g. flow = \"flow.py:my_flow\""
        return f"{file}: '{key}' is required"
    if kind == "greater_than_equal":
        return f"{file}: '{key}' must be >= {error['ctx']['ge']}, got {value!r}"
    if kind == "greater_than":
        return f"{file}: '{key}' must be a number of seconds greater than {error['ctx']['gt']}, got {value!r}"
    if kind == "value_error":
        # A rule of the models above: its message names the keys already.
        return str(error["ctx"]["error"])
    what = _WHAT.get(kind, "of another type")
    if key == "flow" or key.endswith("sizing"):
        what = 'a "path.py:function" string'
    return f"{file}: '{key}' must be {what}, got {value!r}"


_DOCUMENT = TypeAdapter(ProjectFile)


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
        On unknown keys, wrong types or a malformed ``flow`` reference: one line that
        names the dotted key.
    """
    try:
        document = _DOCUMENT.validate_python(dict(data))
    except ValidationError as exc:
        raise BadInput(describe(exc)) from None
    return Project(
        root=root,
        flow=document.flow,
        requirements=document.requirements,
        cluster=document.cluster,
        build=document.build,
        raw=dict(data),
        run=document.run,
    )
