"""Parameters -> cluster size.

Declarative sizing comes from ``[cluster]`` (``n_workers`` or ``adapt``). A sizing hook
with the Prefect 1 signature ``on_execute(parameters, provider_kwargs)`` may then change
``provider_kwargs`` in place. Whatever it asks for is validated and clamped to
``[min_workers, max_workers]``; an exception in the hook fails the run instead of being
swallowed, and ``0`` is a real minimum, not "off".
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass
from typing import Any, Callable, Mapping

from flowrig.errors import BadInput

logger = logging.getLogger("flowrig.sizing")

#: Keys of ``provider_kwargs`` that decide the size; every other key is a backend option.
N_WORKERS = "n_workers"
ADAPT_MIN = "adaptive_min_workers"
ADAPT_MAX = "adaptive_max_workers"
SIZE_KEYS = (N_WORKERS, ADAPT_MIN, ADAPT_MAX)

SizingHook = Callable[[dict[str, Any], dict[str, Any]], Any]


@dataclass(frozen=True)
class GroupSize:
    """One worker group's size: the workers it starts with, and its adaptive range."""

    name: str
    n_workers: int
    adapt: tuple[int, int] | None = None

    @property
    def most(self) -> int:
        """The most workers the group may have."""
        return self.adapt[1] if self.adapt else self.n_workers

    def describe(self) -> str:
        """``gpu 2`` or ``cpu 0-4``."""
        return f"{self.name} {self.adapt[0]}-{self.adapt[1]}" if self.adapt else f"{self.name} {self.n_workers}"


@dataclass(frozen=True)
class ClusterSize:
    """How many workers a run gets.

    Parameters
    ----------
    n_workers
        Workers started with the cluster (for adaptive clusters, the minimum).
    adapt
        ``(minimum, maximum)`` when the cluster scales itself, else ``None``.
    """

    n_workers: int
    adapt: tuple[int, int] | None = None
    #: The size of each worker group, in the project's order (:mod:`flowrig.project.groups`);
    #: ``n_workers`` is then the sum of the workers they start with.
    groups: tuple[GroupSize, ...] = ()

    @property
    def most(self) -> int:
        """The most workers the cluster may have at once."""
        if self.groups:
            return sum(group.most for group in self.groups)
        return self.adapt[1] if self.adapt else self.n_workers

    def describe(self) -> str:
        """Short human form, e.g. ``3 workers``, ``adaptive 0-5 workers``,
        ``3 workers (gpu 1, cpu 2)`` or ``1-5 workers (gpu 1, cpu 0-4)``."""
        if self.groups:
            sizes = ", ".join(group.describe() for group in self.groups)
            count = f"{self.n_workers}-{self.most}" if self.most != self.n_workers else f"{self.n_workers}"
            return f"{count} worker{'s' if self.most != 1 else ''} ({sizes})"
        if self.adapt:
            return f"adaptive {self.adapt[0]}-{self.adapt[1]} workers"
        return f"{self.n_workers} worker{'s' if self.n_workers != 1 else ''}"


@dataclass(frozen=True)
class SizingResult:
    """A size and the backend options the hook may have changed."""

    size: ClusterSize
    options: dict[str, Any]


def _count(value: Any, key: str, source: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise BadInput(f"{source} set {key}={value!r}; it must be a whole number of workers")
    if value < 0:
        raise BadInput(f"{source} asked for {value} workers ({key}); use a number >= 0")
    return value


def _apply_hook(hook: SizingHook, hook_name: str, parameters: Mapping[str, Any], kwargs: dict[str, Any]) -> None:
    """Let ``hook`` change ``kwargs`` (sizes and options) in place.

    A returned count is a fixed size; a fixed size the hook set wins over the project's
    adaptive range.
    """
    source = f"sizing hook {hook_name}"
    before = dict(kwargs)
    try:
        returned = hook(copy.deepcopy(dict(parameters)), kwargs)
    except Exception as exc:
        raise BadInput(f"sizing hook {hook_name} failed: {type(exc).__name__}: {exc}") from None
    if returned is not None:
        # A hook that returns a count instead of mutating is a common slip; honour it.
        kwargs[N_WORKERS] = _count(returned, "its return value", source)
    hook_sized = N_WORKERS in kwargs and kwargs.get(N_WORKERS) != before.get(N_WORKERS)
    adapt_untouched = all(kwargs.get(k) == before.get(k) for k in (ADAPT_MIN, ADAPT_MAX))
    if hook_sized and adapt_untouched and ADAPT_MIN in kwargs:
        # The hook asked for a number of workers: that is a fixed size, and it wins
        # over the project's adaptive range (say so, since the range is dropped).
        logger.warning(
            "%s set n_workers=%r: the cluster has a fixed size instead of adapting %s-%s",
            source, kwargs[N_WORKERS], kwargs[ADAPT_MIN], kwargs[ADAPT_MAX],
        )
        kwargs.pop(ADAPT_MIN)
        kwargs.pop(ADAPT_MAX)


def decide(
    parameters: Mapping[str, Any],
    *,
    n_workers: int | None = None,
    adapt: tuple[int, int] | None = None,
    min_workers: int = 0,
    max_workers: int = 10,
    hook: SizingHook | None = None,
    hook_name: str = "sizing hook",
    options: Mapping[str, Any] | None = None,
    groups: "Mapping[str, int | Mapping[str, int]] | None" = None,
    group_bounds: Mapping[str, tuple[int, int]] | None = None,
) -> SizingResult:
    """Decide the cluster size of one run.

    Parameters
    ----------
    parameters
        The run's validated parameters (the hook gets a deep copy).
    n_workers, adapt
        Declarative size from the project; ``n_workers`` defaults to 1.
    min_workers, max_workers
        Bounds every size is clamped to.
    hook
        Optional ``on_execute(parameters, provider_kwargs)``.
    options
        Backend options; the hook sees them in ``provider_kwargs`` and may change them.
    groups, group_bounds
        Worker groups by name, with the project's size of each (a count, or
        ``{"adaptive_min_workers": A, "adaptive_max_workers": B}``) and its
        ``(min_workers, max_workers)``: see :func:`decide_groups`.

    Raises
    ------
    BadInput
        When the hook raises, returns something other than ``None``/an int, or asks for
        a negative or non-integer size, or when the bounds contradict each other.
    """
    if min_workers > max_workers:
        raise BadInput(f"min_workers ({min_workers}) is larger than max_workers ({max_workers})")
    if groups:
        return decide_groups(
            parameters, groups, min_workers=min_workers, max_workers=max_workers, hook=hook, hook_name=hook_name,
            options=options, bounds=group_bounds,
        )
    kwargs: dict[str, Any] = dict(options or {})
    if adapt is not None:
        kwargs[ADAPT_MIN], kwargs[ADAPT_MAX] = adapt
    else:
        kwargs[N_WORKERS] = 1 if n_workers is None else n_workers

    source = "the project" if hook is None else f"sizing hook {hook_name}"
    if hook is not None:
        _apply_hook(hook, hook_name, parameters, kwargs)

    def clamp(value: int, key: str) -> int:
        clamped = max(min_workers, min(max_workers, value))
        if clamped != value:
            logger.warning(
                "%s asked for %s=%d; clamped to %d (bounds %d-%d)",
                source, key, value, clamped, min_workers, max_workers,
            )
        return clamped

    options_out = {k: v for k, v in kwargs.items() if k not in SIZE_KEYS}
    if ADAPT_MIN in kwargs or ADAPT_MAX in kwargs:
        if ADAPT_MAX not in kwargs:
            raise BadInput(f"{source} set {ADAPT_MIN} without {ADAPT_MAX}")
        lo = clamp(_count(kwargs.get(ADAPT_MIN, 0), ADAPT_MIN, source), ADAPT_MIN)
        hi = clamp(_count(kwargs[ADAPT_MAX], ADAPT_MAX, source), ADAPT_MAX)
        if lo > hi:
            raise BadInput(f"{source} set {ADAPT_MIN}={lo} above {ADAPT_MAX}={hi}")
        return SizingResult(ClusterSize(n_workers=lo, adapt=(lo, hi)), options_out)
    n = clamp(_count(kwargs.get(N_WORKERS, 1), N_WORKERS, source), N_WORKERS)
    if n == 0:
        raise BadInput(
            f"{source} gives a fixed cluster of 0 workers, which can run nothing: "
            "raise min_workers or use adapt = { minimum = 0, maximum = N }"
        )
    return SizingResult(ClusterSize(n_workers=n), options_out)


#: The key of ``provider_kwargs`` that holds the worker groups' sizes.
GROUPS = "worker_groups"


def decide_groups(
    parameters: Mapping[str, Any],
    groups: Mapping[str, "int | Mapping[str, int]"],
    *,
    min_workers: int = 0,
    max_workers: int = 10,
    hook: SizingHook | None = None,
    hook_name: str = "sizing hook",
    options: Mapping[str, Any] | None = None,
    bounds: Mapping[str, tuple[int, int]] | None = None,
) -> SizingResult:
    """The size of each worker group of one run: the project's, or the hook's.

    The hook sees ``provider_kwargs["worker_groups"] = {"gpu": {"n_workers": 2}, "cpu":
    {"adaptive_min_workers": 0, "adaptive_max_workers": 8}}`` and may change each group's
    size, or make a fixed group adaptive and back (a fixed size it sets wins over the
    group's range, as for ``[cluster]``); it cannot add or drop a group. Each value is
    clamped to the group's ``bounds`` (default ``[0, max_workers]``) with a warning;
    the sum of the groups' maxima must be within ``max_workers`` and the workers they
    start with at least ``min_workers`` (which group would give way is not for flowrig
    to guess).

    Raises
    ------
    BadInput
        When the hook raises, returns a count, sets a size outside ``worker_groups``, or
        a group's size is not a whole number, a fixed group has 0 workers, or the totals
        are out of bounds.
    """
    asked_by_project = {name: ({N_WORKERS: ask} if isinstance(ask, int) else dict(ask)) for name, ask in groups.items()}
    kwargs: dict[str, Any] = dict(options or {})
    kwargs[GROUPS] = copy.deepcopy(asked_by_project)
    source = "the project" if hook is None else f"sizing hook {hook_name}"
    if hook is not None:
        try:
            returned = hook(copy.deepcopy(dict(parameters)), kwargs)
        except Exception as exc:
            raise BadInput(f"sizing hook {hook_name} failed: {type(exc).__name__}: {exc}") from None
        misplaced = [k for k in SIZE_KEYS if k in kwargs]
        if returned is not None or misplaced:
            what = "returned a count" if returned is not None else f"set {misplaced[0]}"
            raise BadInput(
                f"{source} {what}, but the project has worker groups: set "
                f"provider_kwargs['{GROUPS}'][GROUP]['{N_WORKERS}'] instead"
            )
    asked = kwargs.pop(GROUPS, None)
    if not isinstance(asked, Mapping) or set(asked) != set(groups):
        now = sorted(asked) if isinstance(asked, Mapping) else asked
        raise BadInput(
            f"{source} changed which worker groups there are ({now!r} instead of {sorted(groups)}): change only "
            f"each group's '{N_WORKERS}' (or its adaptive range)"
        )
    sizes = [
        _group_size(name, asked[name], asked_by_project[name], (bounds or {}).get(name, (0, max_workers)), source)
        for name in groups
    ]
    start, most = sum(g.n_workers for g in sizes), sum(g.most for g in sizes)
    if start < min_workers or most > max_workers:
        listed = ", ".join(g.describe() for g in sizes)
        raise BadInput(
            f"{source} asks for {start if start < min_workers else most} workers in worker groups ({listed}), "
            f"outside min_workers = {min_workers} and max_workers = {max_workers}: change the groups' sizes or the "
            "bounds"
        )
    return SizingResult(ClusterSize(n_workers=start, groups=tuple(sizes)), kwargs)


def _group_size(
    name: str, entry: Any, before: Mapping[str, int], bounds: tuple[int, int], source: str
) -> GroupSize:
    """One group's size from what the hook left in its entry, clamped to ``bounds``."""
    if not isinstance(entry, Mapping) or not entry or not set(entry) <= set(SIZE_KEYS):
        raise BadInput(
            f"{source} set worker group '{name}' to {entry!r}: give it {{'{N_WORKERS}': N}} or "
            f"{{'{ADAPT_MIN}': A, '{ADAPT_MAX}': B}}"
        )
    entry = dict(entry)
    where = f"{GROUPS}['{name}']"
    fixed_changed = N_WORKERS in entry and entry.get(N_WORKERS) != before.get(N_WORKERS)
    if fixed_changed and (ADAPT_MIN in entry or ADAPT_MAX in entry):
        if all(entry.get(k) == before.get(k) for k in (ADAPT_MIN, ADAPT_MAX)):
            logger.warning("%s set %s['%s']=%r: the group has a fixed size instead of adapting %s-%s", source,
                           where, N_WORKERS, entry[N_WORKERS], entry.get(ADAPT_MIN), entry.get(ADAPT_MAX))
            entry.pop(ADAPT_MIN, None)
            entry.pop(ADAPT_MAX, None)
        else:
            raise BadInput(f"{source} set both a fixed size and an adaptive range for worker group '{name}': "
                           "give it one")
    lo_bound, hi_bound = bounds

    def clamp(value: Any, key: str) -> int:
        count = _count(value, f"{where}['{key}']", source)
        clamped = max(lo_bound, min(hi_bound, count))
        if clamped != count:
            logger.warning("%s asked for %s=%d; clamped to %d (bounds %d-%d)", source, f"{where}['{key}']", count,
                           clamped, lo_bound, hi_bound)
        return clamped

    if ADAPT_MIN in entry or ADAPT_MAX in entry:
        if ADAPT_MAX not in entry:
            raise BadInput(f"{source} set {where}['{ADAPT_MIN}'] without '{ADAPT_MAX}'")
        lo, hi = clamp(entry.get(ADAPT_MIN, 0), ADAPT_MIN), clamp(entry[ADAPT_MAX], ADAPT_MAX)
        if lo > hi:
            raise BadInput(f"{source} set {where}['{ADAPT_MIN}']={lo} above '{ADAPT_MAX}'={hi}")
        if hi == 0:
            raise BadInput(f"{source} gives worker group '{name}' at most 0 workers, so its tasks would wait for "
                           "ever: give it 1 or more")
        return GroupSize(name, lo, (lo, hi))
    n = clamp(entry[N_WORKERS], N_WORKERS)
    if n == 0:
        raise BadInput(f"{source} gives worker group '{name}' 0 workers, so its tasks would wait for ever: "
                       "give it 1 or more")
    return GroupSize(name, n)
