"""``[[cluster.worker_groups]]``: workers of several kinds in one run's cluster.

Each group is a set of workers with a size (fixed, or an adaptive range), a shape
(``cpu``, ``memory``, ``gpu``, ``market``, backend ``options``), a thread count and Dask
resources of its own. A Prefect task whose tags meet a group's ``tags`` runs on that
group's workers only (:mod:`flowrig.common.routes`); a task with no group's tag runs
on any worker.

The rules that relate a group to the others, or to ``[cluster]``, are checked by
:func:`check_groups`, each refusal one line naming the keys and the fix; what a
backend cannot honour it refuses itself
(:meth:`flowrig.backends.base.Backend.check_worker_groups`).
"""

from __future__ import annotations

import math
import re
from typing import TYPE_CHECKING, Annotated, Any, Literal, Sequence

from pydantic import ConfigDict, Field, StrictFloat, StrictInt, StrictStr
from pydantic.dataclasses import dataclass

from flowrig.common.routes import GROUP_NAME_PATTERN, GROUP_RESOURCE_PREFIX
from flowrig.project import defaults

if TYPE_CHECKING:
    from flowrig.project.models import Adapt

_STRICT = ConfigDict(extra="forbid")
_KEY = "cluster.worker_groups"
Count = Annotated[StrictInt, Field(ge=0)]
#: Where a group's workers run: on-demand, Spot, or Spot falling back to on-demand.
Market = Literal["on-demand", "spot", "fallback"]
#: The least memory a group's worker may have: a Dask worker with Prefect imported
#: uses about a hundred MiB before it runs anything.
MIN_MEMORY_MIB = 256
#: Memory units, as multiples of a MiB: binary ones, and Docker's one-letter ones
#: (which are binary too). Decimal ``GB`` is refused rather than guessed.
_MEMORY_UNITS = {"mib": 1, "mi": 1, "m": 1, "gib": 1024, "gi": 1024, "g": 1024, "tib": 1024**2, "ti": 1024**2,
                 "t": 1024**2}
_MEMORY = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*$")


def memory_mib(value: int | str) -> int:
    """A group's ``memory`` in MiB: a whole number of MiB, or text such as ``"8GiB"``,
    ``"512MiB"`` or Docker's ``"2g"`` (binary units).

    Raises
    ------
    ValueError
        Text in another form (a decimal unit such as ``GB`` included).
    """
    if isinstance(value, int):
        return value
    match = _MEMORY.match(value)
    unit = _MEMORY_UNITS.get(match.group(2).lower()) if match else None
    if match is None or unit is None:
        raise ValueError(value)
    return int(float(match.group(1)) * unit)


@dataclass(config=_STRICT, frozen=True)
class GroupAdapt:
    """A group's ``adapt = { minimum, maximum }``: its adaptive range of workers."""

    minimum: Count = Field(0, description="fewest workers the group scales down to (0: none while it has no work)")
    maximum: Count | None = Field(None, description="most workers the group scales up to (required)")


@dataclass(config=_STRICT, frozen=True)
class WorkerGroup:
    """One ``[[cluster.worker_groups]]`` entry: workers of one kind."""

    name: Annotated[StrictStr, Field(pattern=GROUP_NAME_PATTERN)] = Field(
        description="the group's name, in its workers' names (`flowrig-RUN-worker-gpu-1`): a lowercase letter, "
        "then up to 19 lowercase letters, digits or dashes"
    )
    n_workers: Count | None = Field(
        None,
        description=f"the group's fixed number of workers (a sizing hook may change it); default {defaults.N_WORKERS}",
    )
    adapt: GroupAdapt | None = Field(
        None,
        description="an adaptive range instead of `n_workers`, `{ minimum = 0, maximum = 4 }`: the group grows "
        "while its tasks (and, for the first group, untagged ones) wait, and retires its idle workers",
    )
    min_workers: Count | None = Field(
        None, description="the group's size (or range) is clamped to at least this; default 0"
    )
    max_workers: Count | None = Field(
        None, description="the group's size (or range) is clamped to at most this; default `[cluster] max_workers`"
    )
    cpu: Annotated[StrictInt | StrictFloat, Field(gt=0, allow_inf_nan=False)] | None = Field(
        None, description="vCPUs of each of the group's workers (a limit on docker); default: the backend's"
    )
    memory: StrictInt | StrictStr | None = Field(
        None,
        description='memory of each of the group\'s workers: MiB (`4096`) or `"8GiB"`; its container\'s limit on '
        "docker, its worker's memory limit on local; default: the backend's",
    )
    gpu: Count = Field(
        0, description="GPUs of each of the group's workers, which offer the Dask resource `GPU` as many (docker: "
        "an engine with a GPU runtime)",
    )
    market: Market | None = Field(
        None, description='`"on-demand"`, `"spot"` or `"fallback"` (Spot, else on-demand); default: the backend\'s '
        "`spot` option (cloud backends only)",
    )
    options: dict[StrictStr, Any] = Field(
        default_factory=dict,
        description="`[cluster.options]` keys this group's workers have otherwise; each backend says which it "
        "takes per group",
    )
    worker_threads: Annotated[StrictInt, Field(ge=1)] | None = Field(
        None, description="threads of each of the group's workers; default: `[cluster] worker_threads`"
    )
    resources: dict[StrictStr, StrictInt | StrictFloat] = Field(
        default_factory=dict,
        description="more Dask resources each of the group's workers offers, e.g. `{ GPU = 1 }`, for tasks that "
        "ask for them with `dask.annotate(resources=...)`",
    )
    tags: list[StrictStr] | None = Field(
        None,
        description="Prefect task tags that send a task to this group (`@task(tags=[\"gpu\"])`); default: the "
        "group's name",
    )

    @property
    def routed_tags(self) -> tuple[str, ...]:
        """The tags that send a task here: :attr:`tags`, else the group's name."""
        return tuple(self.tags) if self.tags is not None else (self.name,)

    @property
    def size(self) -> int:
        """The workers the group starts with: its fixed size, or its adaptive minimum."""
        if self.adapt is not None:
            return self.adapt.minimum
        return defaults.N_WORKERS if self.n_workers is None else self.n_workers

    @property
    def most(self) -> int:
        """The most workers the group may have: its fixed size, or its adaptive maximum."""
        return (self.adapt.maximum or 0) if self.adapt is not None else self.size

    @property
    def memory_mib(self) -> int | None:
        """:attr:`memory` in MiB (checked by :func:`check_groups`)."""
        return None if self.memory is None else memory_mib(self.memory)

    def bounds(self, max_workers: int) -> tuple[int, int]:
        """The clamp of the group's size: its ``min_workers`` and ``max_workers``, by
        default 0 and the cluster's ``max_workers``."""
        return (self.min_workers or 0, max_workers if self.max_workers is None else self.max_workers)

    def sizing(self) -> dict[str, int]:
        """The group's size as a sizing hook sees it: ``{"n_workers": N}`` or
        ``{"adaptive_min_workers": A, "adaptive_max_workers": B}``."""
        if self.adapt is not None:
            return {"adaptive_min_workers": self.adapt.minimum, "adaptive_max_workers": self.adapt.maximum or 0}
        return {"n_workers": self.size}

    def sets(self, key: str) -> bool:
        """Whether the project set ``key`` (a shape field, ``adapt`` or ``options``) for the group."""
        value = getattr(self, key)
        return bool(value) if key in ("gpu", "options") else value is not None


#: A resource's name: it goes into each worker's ``--resources NAME=AMOUNT,...``.
_RESOURCE_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]{0,62}$")


def _check_resources(resources: dict[str, float], where: str) -> None:
    file = defaults.PROJECT_FILE
    for name, amount in resources.items():
        if not _RESOURCE_NAME.match(name):
            raise ValueError(
                f"{file}: {where} resource {name!r} must be a letter or _, then letters, digits, _, . or -"
            )
        if not math.isfinite(amount) or amount < 0:
            raise ValueError(f"{file}: {where} resource '{name}' is {amount!r}: give a finite amount >= 0")


def check_groups(
    groups: Sequence[WorkerGroup], *, n_workers: int | None, adapt: "Adapt | None", max_workers: int
) -> None:
    """The rules between groups and ``[cluster]``.

    Raises
    ------
    ValueError
        The first rule broken, as one line that names the keys and the fix.
    """
    file = defaults.PROJECT_FILE
    if not groups:
        return
    if n_workers is not None or adapt is not None:
        raise ValueError(
            f"{file}: '{_KEY}' beside 'cluster.{'n_workers' if n_workers is not None else 'adapt'}': set the size "
            "in each [[cluster.worker_groups]], not in [cluster]"
        )
    seen: dict[str, str] = {}
    names: set[str] = set()
    for group in groups:
        where = f"'{_KEY}' group '{group.name}'"
        if group.name in names:
            raise ValueError(f"{file}: '{_KEY}' names '{group.name}' twice: give each group a name of its own")
        names.add(group.name)
        _check_size(group, where, max_workers)
        _check_shape(group, where)
        if not group.routed_tags:
            raise ValueError(f"{file}: {where} has no tags, so no task goes to it: leave tags out (its name) or "
                             "list some")
        for tag in group.routed_tags:
            if not tag.strip():
                raise ValueError(f"{file}: {where} has an empty tag: remove it")
            if tag in seen and seen[tag] != group.name:
                raise ValueError(
                    f"{file}: tag '{tag}' goes to groups '{seen[tag]}' and '{group.name}': give each tag one group"
                )
            seen[tag] = group.name
        reserved = sorted(r for r in group.resources if r.startswith(GROUP_RESOURCE_PREFIX))
        if reserved:
            raise ValueError(
                f"{file}: {where} resource '{reserved[0]}' is flowrig's own name for a group's workers: "
                "name it otherwise"
            )
        _check_resources(group.resources, where)
    total = sum(group.most for group in groups)
    if total > max_workers:
        sizes = ", ".join(f"{g.name} {g.most}" for g in groups)
        raise ValueError(
            f"{file}: '{_KEY}' add up to {total} workers at most ({sizes}), above 'cluster.max_workers' "
            f"({max_workers}): raise max_workers or shrink a group"
        )


def _check_size(group: WorkerGroup, where: str, max_workers: int) -> None:
    """A group's size: fixed or adaptive, within its own bounds and the cluster's."""
    file = defaults.PROJECT_FILE
    lo, hi = group.bounds(max_workers)
    if group.adapt is not None and group.n_workers is not None:
        raise ValueError(f"{file}: {where} sets both n_workers and adapt: give it one of them")
    if lo > hi:
        raise ValueError(f"{file}: {where} min_workers ({lo}) is larger than its max_workers ({hi})")
    if hi > max_workers:
        raise ValueError(
            f"{file}: {where} max_workers ({hi}) is above 'cluster.max_workers' ({max_workers}): lower it or raise "
            "the cluster's"
        )
    if group.adapt is not None:
        if group.adapt.maximum is None:
            raise ValueError(f"{file}: {where} adapt has no maximum: write adapt = {{ minimum = 0, maximum = N }}")
        if group.adapt.minimum > group.adapt.maximum:
            raise ValueError(f"{file}: {where} adapt minimum ({group.adapt.minimum}) is larger than its maximum "
                             f"({group.adapt.maximum})")
        if group.adapt.maximum == 0:
            raise ValueError(f"{file}: {where} adapt maximum is 0, so its tasks would wait for ever: give it 1 or "
                             "more")
        if not lo <= group.adapt.minimum <= group.adapt.maximum <= hi:
            raise ValueError(
                f"{file}: {where} adapt {group.adapt.minimum}-{group.adapt.maximum} is outside its min_workers and "
                f"max_workers ({lo}-{hi}): change the range or the bounds"
            )
        return
    if group.size == 0:
        raise ValueError(
            f"{file}: {where} has 0 workers, so its tasks would wait for ever: give it n_workers >= 1 (or an adapt "
            "range)"
        )
    if not lo <= group.size <= hi:
        raise ValueError(
            f"{file}: {where} n_workers ({group.size}) is outside its min_workers and max_workers ({lo}-{hi}): "
            "change the size or the bounds"
        )


def _check_shape(group: WorkerGroup, where: str) -> None:
    """A group's shape: its memory readable and enough for a worker; ``gpu`` not also
    given as a resource."""
    file = defaults.PROJECT_FILE
    if group.memory is not None:
        try:
            mib = memory_mib(group.memory)
        except ValueError:
            raise ValueError(
                f"{file}: {where} memory {group.memory!r} is not a size: give MiB (4096) or text such as \"8GiB\", "
                "\"512MiB\" or \"2g\""
            ) from None
        if mib < MIN_MEMORY_MIB:
            raise ValueError(f"{file}: {where} memory is {mib} MiB, too little for a worker: give at least "
                             f"{MIN_MEMORY_MIB} MiB")
    if group.gpu and "GPU" in group.resources:
        raise ValueError(f"{file}: {where} sets gpu and resources.GPU: keep gpu = {group.gpu} (its workers offer "
                         "GPU as many) and drop resources.GPU")
