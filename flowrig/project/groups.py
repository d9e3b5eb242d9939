"""``[[cluster.worker_groups]]``: workers of several kinds in one run's cluster.

Each group is a set of workers with a size, a thread count and Dask resources of its
own. A Prefect task whose tags meet a group's ``tags`` runs on that group's workers
only (:mod:`flowrig.common.routes`); a task with no group's tag runs on any worker.

The rules that relate a group to the others, or to ``[cluster]``, are checked by
:func:`check_groups`, each refusal one line naming the keys and the fix.
"""

from __future__ import annotations

import math
import re
from typing import TYPE_CHECKING, Annotated, Any, Sequence

from pydantic import ConfigDict, Field, StrictFloat, StrictInt, StrictStr
from pydantic.dataclasses import dataclass

from flowrig.common.routes import GROUP_NAME_PATTERN, GROUP_RESOURCE_PREFIX
from flowrig.project import defaults

if TYPE_CHECKING:
    from flowrig.project.models import Adapt

_STRICT = ConfigDict(extra="forbid")
_KEY = "cluster.worker_groups"
Count = Annotated[StrictInt, Field(ge=0)]


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
    adapt: Any = Field(
        None, description="an adaptive range for the group: not taken yet (groups have fixed sizes for now)"
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
        """The group's fixed size as the project sets it."""
        return defaults.N_WORKERS if self.n_workers is None else self.n_workers


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
        if group.adapt is not None:
            raise ValueError(
                f"{file}: {where} sets adapt: worker groups have fixed sizes for now; set its n_workers (a "
                "sizing hook may change it per run)"
            )
        if group.size == 0:
            raise ValueError(
                f"{file}: {where} has 0 workers, so its tasks would wait for ever: give it n_workers >= 1"
            )
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
    total = sum(group.size for group in groups)
    if total > max_workers:
        sizes = ", ".join(f"{g.name} {g.size}" for g in groups)
        raise ValueError(
            f"{file}: '{_KEY}' add up to {total} workers ({sizes}), above 'cluster.max_workers' ({max_workers}): "
            "raise max_workers or shrink a group"
        )
