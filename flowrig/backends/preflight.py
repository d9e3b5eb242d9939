"""What a backend's preflight checks give back: one :class:`Check` per thing checked,
and the :class:`PreflightPlan` they check against.

Backends fill these in (read-only calls only: nothing is created, nothing is paid
for); :mod:`flowrig.run.preflight` gathers them into a report and renders it. They
live here, below both, so that the start template of every cloud backend
(:mod:`flowrig.backends.pool.backend`) can run the same checks before it creates
anything.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Mapping


@dataclass(frozen=True)
class Check:
    """One check of one subject.

    Parameters
    ----------
    name
        What kind of check: ``image``, ``image-arch``, ``network``, ``endpoint``,
        ``security-group``, ``rights``, ``quota``, ``instance-type``, ``capacity-provider``,
        ``machine-type``, ``engine``.
    subject
        What was checked (``subnet-0a1b``, ``ecs:RunTask``, the image's name).
    ok
        ``True`` passed, ``False`` failed, ``None`` not checked (``line`` says why).
    line
        What was found, in one line.
    fix
        What to do about a failure (empty when it passed).
    """

    name: str
    subject: str
    ok: bool | None
    line: str
    fix: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class PreflightPlan:
    """What a run would ask for, as preflight checks it.

    Parameters
    ----------
    image
        The run's image (``None``: none given).
    options
        ``[cluster.options]`` as the project wrote them (the backend parses them).
    max_workers
        The most workers the run may have at once: a fixed size, else the adaptive
        maximum, else ``max_workers`` when a sizing hook decides.
    allowed_environment
        ``[build] allow_environment``.
    run_id
        Stands for the run's id in the names checked (a real run's id at a run's start).
    groups
        The run's worker groups (:class:`~flowrig.backends.base.WorkerGroupSpec`), each
        sized at its most workers (its fixed size, or its adaptive maximum as ``n_workers``
        or ``adapt``): their shapes (GPUs, task sizes, markets) and counts.
    """

    image: str | None
    options: Mapping[str, Any] = field(default_factory=dict)
    max_workers: int = 1
    allowed_environment: frozenset[str] = frozenset()
    run_id: str = "preflight"
    groups: tuple[Any, ...] = ()


def failures(checks: list[Check]) -> list[Check]:
    """The checks that failed, in order."""
    return [check for check in checks if check.ok is False]


def failure_line(check: Check) -> str:
    """A failed or unchecked check as the one line a user reads: what, then the fix."""
    text = f"{check.name} {check.subject}: {check.line}"
    return f"{text}: {check.fix}" if check.fix else text
