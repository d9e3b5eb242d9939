"""The workers a :class:`~flowrig.backends.pool.cluster.PoolCluster` wants, group by group.

A cluster without ``[[cluster.worker_groups]]`` has one unnamed group (``""``) whose size
is the cluster's. With groups, each group has its own size, every worker belongs to the
group it was started for, and a worker that is lost is started again in its own group
(and, through its launcher, in its own market): a GPU group's lost worker never comes
back as a CPU worker. Pure bookkeeping; the pool calls the launcher.
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping, NamedTuple

from flowrig.errors import BadInput

#: The group of a cluster without worker groups.
NO_GROUP = ""


class GroupBook:
    """Wanted workers by group, and the lost workers of each group not replaced yet.

    Parameters
    ----------
    sizes
        ``group -> workers``; empty: one unnamed group of :attr:`total` workers.
    """

    def __init__(self, sizes: Mapping[str, int] | None = None) -> None:
        self.sizes: dict[str, int] = dict(sizes or {})
        self._single = 0
        #: ``(group, handle)`` of stopped workers not replaced yet, oldest first.
        self._lost: list[tuple[str, str]] = []

    @property
    def grouped(self) -> bool:
        """Whether the cluster has worker groups."""
        return bool(self.sizes)

    @property
    def total(self) -> int:
        """Every group's wanted workers together."""
        return sum(self.sizes.values()) if self.sizes else self._single

    def set_total(self, n: int) -> None:
        """Want ``n`` workers in the one unnamed group.

        Raises
        ------
        ValueError
            When the cluster has groups: each is sized on its own (:meth:`set_sizes`).
        """
        if self.sizes:
            raise ValueError("a cluster of worker groups is scaled group by group (scale_groups)")
        self._single = max(int(n), 0)

    def set_sizes(self, sizes: Mapping[str, int]) -> None:
        """Want ``sizes[group]`` workers in each group (groups not named keep theirs)."""
        for name, n in sizes.items():
            self.sizes[name] = max(int(n), 0)

    def shrink(self, group: str, by: int) -> None:
        """``by`` workers of ``group`` left for good (scaled down)."""
        if self.sizes:
            self.sizes[group] = max(self.sizes.get(group, 0) - by, 0)
        else:
            self._single = max(self._single - by, 0)

    def groups(self) -> list[str]:
        """The groups, in the project's order (``[""]`` without groups)."""
        return list(self.sizes) if self.sizes else [NO_GROUP]

    def wanted(self, group: str) -> int:
        """Workers ``group`` should have."""
        return self.sizes.get(group, 0) if self.sizes else self._single

    def lost(self, group: str, handle: str) -> None:
        """Worker ``handle`` of ``group`` stopped: its replacement goes where it was."""
        self._lost.append((group, handle))

    def take_lost(self, group: str, count: int) -> list[str]:
        """The handles of up to ``count`` lost workers of ``group``, oldest first, now
        being replaced (they leave the book)."""
        taken = [handle for g, handle in self._lost if g == group][:count]
        self._lost = [(g, h) for g, h in self._lost if not (g == group and h in taken)]
        return taken

    def forget_lost(self, group: str) -> None:
        """Lost workers of ``group`` are not replaced (the group shrank)."""
        self._lost = [(g, h) for g, h in self._lost if g != group]


def count_by_group(groups: Iterable[str]) -> dict[str, int]:
    """How many of ``groups`` (one entry per worker) each group has."""
    counts: dict[str, int] = {}
    for group in groups:
        counts[group] = counts.get(group, 0) + 1
    return counts


def refuse_resource_flags(args: Iterable[str], key: str = "worker_extra_args") -> None:
    """Refuse ``--resources`` in the project's worker flags beside worker groups: every
    group's workers would offer them, a CPU group's another group's slots or GPUs among
    them. Each group's ``--resources`` are rendered from its own fields only.

    Raises
    ------
    BadInput
        Naming the key and where the resources go instead.
    """
    if any(arg == "--resources" or arg.startswith("--resources=") for arg in args):
        raise BadInput(
            f"[cluster.options] {key} sets --resources, which every worker group's workers would offer: set each "
            "group's resources in its [[cluster.worker_groups]] resources instead"
        )


class GroupShape(NamedTuple):
    """A worker group (:class:`~flowrig.backends.base.WorkerGroupSpec`) as a backend
    starts it: where it is named in a line, its ``cpu`` (vCPUs), memory (MiB), ``gpu``,
    ``market`` and own ``options``; the unset ones ``None``."""

    group: Any
    where: str
    cpu: float | None
    memory: int | None
    gpu: int
    market: str | None
    own: Mapping[str, Any]


def group_shapes(backend: str, groups: Iterable[Any], base_args: Iterable[str],
                 taken: Iterable[str]) -> list[GroupShape]:
    """Each worker group's shape, after the checks every backend of groups makes: no
    ``--resources`` in the project's worker flags (:func:`refuse_resource_flags`; only
    when there are groups), and no group ``options`` key the backend does not take per
    group (``taken``).

    Raises
    ------
    BadInput
        One line naming the group, the key and the fix.
    """
    groups = tuple(groups)
    if groups:
        refuse_resource_flags(base_args)
    taken = sorted(taken)
    shapes = []
    for group in groups:
        own = group.options or {}
        where = f"[[cluster.worker_groups]] {group.name}"
        unknown = sorted(set(own) - set(taken))
        if unknown:
            raise BadInput(f"{where} options.{unknown[0]} is not taken per group on {backend}: it takes "
                           f"{', '.join(taken)}; set the rest in [cluster.options]")
        shapes.append(GroupShape(group, where, group.cpu, group.memory_mib, int(group.gpu or 0), group.market, own))
    return shapes


def resources_args(group: Any) -> list[str]:
    """The ``--resources`` flag of a worker group's workers: its own resources (its slots,
    ``flowrig-group-NAME``, one per thread), and ``GPU`` as many as its workers have;
    nothing else, so no worker offers another group's slots."""
    from flowrig.common.routes import GPU_RESOURCE, resources_flag

    resources = dict(group.resources)
    if group.gpu:
        resources[GPU_RESOURCE] = group.gpu
    return ["--resources", resources_flag(resources)]
