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

    def describe(self) -> str:
        """Short human form, e.g. ``3 workers`` or ``adaptive 0-5 workers``."""
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

    Raises
    ------
    BadInput
        When the hook raises, returns something other than ``None``/an int, or asks for
        a negative or non-integer size, or when the bounds contradict each other.
    """
    if min_workers > max_workers:
        raise BadInput(f"min_workers ({min_workers}) is larger than max_workers ({max_workers})")
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
