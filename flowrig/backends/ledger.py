"""What one run created in a cloud, and its removal newest first, with one retry rule.

Every cloud backend (``ecs``, ``fargate``, ``ec2``, ``azure``, ``gcp``) records each
resource in the statement that creates it, together with the call that undoes it, so a
run that fails half-way removes exactly what it made. :meth:`Ledger.delete` undoes
newest first (tasks before the cluster they run in, a VM before its network interface,
a grant before its secret, a secret before the identity named in it), retries an undo
the cloud refuses for the time being until the cleanup deadline, and returns what is
left, each named ``kind id``.

A :class:`Group` is a set of resources recorded at one place in that order and undone
in one call (a run's instances, terminated together and waited for once; the tasks a
run started). :func:`retry` is the one rule for "try again while the cloud says not
now", used by the ledger and by every create that waits for something to propagate.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Generic, Hashable, TypeVar

from flowrig.errors import InfrastructureError, one_line

logger = logging.getLogger("flowrig.backends")

T = TypeVar("T")
M = TypeVar("M", bound=Hashable)  # a member of a group
Predicate = Callable[[BaseException], bool]

#: Seconds between two attempts of a refused call, unless the caller gives a pause.
#: Read at every call, so tests may shorten it.
RETRY_SECONDS = 5.0


def never(exc: BaseException) -> bool:
    """The predicate that holds for no error."""
    return False


def retry(
    call: Callable[[], T],
    *,
    until: float,
    when: Predicate,
    gone: Predicate = never,
    pause: float | None = None,
) -> T | None:
    """``call()`` until it returns; the one retry rule of every cloud.

    An error ``gone`` says means the thing is not there (any more): for a deletion that
    is success, and ``None`` is returned. An error ``when`` says means "not now" (in
    use, still propagating, throttled): ``call`` is tried again after ``pause`` seconds
    (:data:`RETRY_SECONDS` by default) as long as that next try starts by ``until``
    (``time.monotonic()``). Any other error, or one with no time left, is raised.
    """
    while True:
        try:
            return call()
        except Exception as exc:
            if gone(exc):
                return None
            wait = RETRY_SECONDS if pause is None else pause
            if not when(exc) or time.monotonic() + wait > until:
                raise
            logger.debug("trying again in %.0f s: %s", wait, one_line(exc, 200))
        time.sleep(wait)


def wait_until(done: Callable[[], bool], deadline: float, what: str, pause: float = 2.0) -> None:
    """Poll ``done`` until it is true; past ``deadline`` raise naming ``what``.

    Raises
    ------
    InfrastructureError
        When ``what`` had not finished by ``deadline`` (``time.monotonic()``).
    """
    while not done():
        if time.monotonic() + pause > deadline:
            raise InfrastructureError(f"{what} had not finished in time")
        time.sleep(pause)


@dataclass(frozen=True, eq=False)
class Resource:
    """One resource of the run: its kind and id (as messages name it), and how it goes.

    ``undo`` is called with the cleanup deadline (``time.monotonic()``) and blocks until
    the resource is gone or the deadline passed. ``retry_when`` replaces the ledger's
    "not now" predicate for this resource alone.
    """

    kind: str
    ident: str
    undo: Callable[[float], None]
    retry_when: Predicate | None = None

    @property
    def names(self) -> list[str]:
        return [f"{self.kind} {self.ident}"]

    @property
    def entries(self) -> list[tuple[str, str]]:
        return [(self.kind, self.ident)]


@dataclass(eq=False)
class Group(Generic[M]):
    """Resources recorded at one place in the ledger and undone in one call.

    ``undo`` gets the members (oldest first) and the cleanup deadline; it is called
    even when the group has none, since it may also look for what the run made without
    hearing back (an instance whose start answer was lost). ``name`` spells a member in
    messages and in :attr:`Ledger.created`. Members may be added and discarded from
    several threads (a pool starts and stops workers from its executor's).
    """

    kind: str
    undo: Callable[[list[M], float], None]
    name: Callable[[M], str] = str
    retry_when: Predicate | None = None
    members: list[M] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, item: M) -> None:
        """A member that now exists (or may: a creation whose answer was lost)."""
        with self._lock:
            if item not in self.members:
                self.members = [*self.members, item]

    def discard(self, items: list[M]) -> None:
        """Members gone already (removed by the run itself)."""
        with self._lock:
            self.members = [m for m in self.members if m not in items]

    @property
    def names(self) -> list[str]:
        return [f"{self.kind} {self.name(m)}" for m in self.members]

    @property
    def entries(self) -> list[tuple[str, str]]:
        return [(self.kind, self.name(m)) for m in self.members]


class Ledger:
    """The resources of one run, oldest first.

    Parameters
    ----------
    cleanup_timeout
        Seconds :meth:`delete` keeps retrying, from its start.
    gone
        Whether an error says the resource does not exist (any more): that is success.
        AWS gives :func:`never`: a resource already gone is still reported as left.
    retryable
        Whether an error says "not now" (in use, conflict, throttled, a server error);
        a resource recorded with its own ``retry_when`` uses that instead.
    """

    def __init__(
        self,
        cleanup_timeout: float,
        *,
        gone: Predicate = never,
        retryable: Predicate = never,
    ) -> None:
        self.cleanup_timeout = cleanup_timeout
        self.gone = gone
        self.retryable = retryable
        self._entries: list[Resource | Group] = []

    def record(
        self, kind: str, ident: str, undo: Callable[[float], None], *, retry_when: Predicate | None = None
    ) -> None:
        """Note a resource that now exists (or may: a creation whose answer was lost)."""
        self._entries.append(Resource(kind, ident, undo, retry_when))

    def group(
        self,
        kind: str,
        undo: Callable[[list[M], float], None],
        *,
        name: Callable[[M], str] = str,
        retry_when: Predicate | None = None,
    ) -> Group[M]:
        """A new, empty group at this place in the ledger (see :class:`Group`)."""
        group: Group[M] = Group(kind, undo, name, retry_when)
        self._entries.append(group)
        return group

    def of_kind(self, kind: str) -> list[str]:
        """Ids of the recorded resources of ``kind``, oldest first."""
        return [ident for found, ident in self.created if found == kind]

    @property
    def created(self) -> list[tuple[str, str]]:
        """``(kind, id)`` of every resource not deleted yet, oldest first."""
        return [entry for recorded in list(self._entries) for entry in recorded.entries]

    def delete(self) -> list[str]:
        """Undo every recorded resource, newest first; safe to call again (what went is
        forgotten, an emptied group keeps its place and is undone again).

        Returns
        -------
        list of str
            ``kind id`` of each resource that could not be deleted; each failure is logged
            and none stops the deletion of the others.
        """
        deadline = time.monotonic() + self.cleanup_timeout
        leftovers: list[str] = []
        for entry in reversed(list(self._entries)):
            members = list(entry.members) if isinstance(entry, Group) else []
            if isinstance(entry, Group):
                undo = functools.partial(entry.undo, members, deadline)
            else:
                undo = functools.partial(entry.undo, deadline)
            try:
                retry(undo, until=deadline, when=entry.retry_when or self.retryable, gone=self.gone)
            except Exception as exc:  # keep going: the others can still go
                names = entry.names or [entry.kind]
                logger.warning("could not delete %s: %s", ", ".join(names), one_line(exc))
                leftovers += entry.names
                continue
            if isinstance(entry, Group):
                # The group keeps its place: its owner may still add to it.
                entry.discard(members)
            else:
                self._entries.remove(entry)
        return leftovers
