"""What one run created in a cloud, and its removal newest first, each retried while in use.

A cloud records each resource the moment its creation call returned, with the call that
deletes it, so a run that fails half-way removes exactly what it made. :meth:`Ledger.delete`
deletes newest first (a VM before its network interface, a grant before its secret, a
secret before the identity named in it), retries a deletion the cloud refuses for the
time being (still in use, another operation running, throttled) until the cleanup
deadline, takes "not found" as deleted, and returns what is left.
"""

from __future__ import annotations

import functools
import logging
import time
from dataclasses import dataclass
from typing import Callable

from flowrig.errors import InfrastructureError, one_line

logger = logging.getLogger("flowrig.vm")


@dataclass(frozen=True)
class Resource:
    """One resource of the run: its kind and id (as messages name it), and how it goes.

    ``remove`` is called with the cleanup deadline (``time.monotonic()``) and blocks
    until the resource is gone or the deadline passed.
    """

    kind: str
    ident: str
    remove: Callable[[float], None]


class Ledger:
    """The resources of one run, oldest first.

    Parameters
    ----------
    cleanup_timeout
        Seconds :meth:`delete` keeps retrying, from its start.
    gone
        Whether an error says the resource does not exist (any more): that is success.
    retryable
        Whether an error says "not now" (in use, conflict, throttled, a server error).
    """

    #: Seconds between two attempts of a refused deletion.
    retry_seconds = 5.0

    def __init__(
        self,
        cleanup_timeout: float,
        *,
        gone: Callable[[BaseException], bool],
        retryable: Callable[[BaseException], bool],
    ) -> None:
        self.cleanup_timeout = cleanup_timeout
        self.gone = gone
        self.retryable = retryable
        self._resources: list[Resource] = []

    def record(self, kind: str, ident: str, remove: Callable[[float], None]) -> None:
        """Note a resource that now exists (or may: a creation whose answer was lost)."""
        self._resources.append(Resource(kind, ident, remove))

    def of_kind(self, kind: str) -> list[str]:
        """Ids of the recorded resources of ``kind``, oldest first."""
        return [r.ident for r in self._resources if r.kind == kind]

    @property
    def created(self) -> list[tuple[str, str]]:
        """``(kind, id)`` of every resource not deleted yet, oldest first."""
        return [(r.kind, r.ident) for r in self._resources]

    def retry(self, call: Callable[[], object], deadline: float, *, deleting: bool = True) -> None:
        """``call`` until it succeeds, or (``deleting``) the error says the thing is gone;
        an error not to retry, or one past the deadline, is raised."""
        while True:
            try:
                call()
                return
            except Exception as exc:
                if deleting and self.gone(exc):
                    return
                if not self.retryable(exc) or time.monotonic() + self.retry_seconds > deadline:
                    raise
            time.sleep(self.retry_seconds)

    def delete(self) -> list[str]:
        """Delete every recorded resource, newest first; safe to call again.

        Returns
        -------
        list of str
            ``kind id`` of each resource that could not be deleted; each failure is logged
            and none stops the deletion of the others.
        """
        deadline = time.monotonic() + self.cleanup_timeout
        leftovers = []
        for resource in reversed(list(self._resources)):
            try:
                self.retry(functools.partial(resource.remove, deadline), deadline)
                self._resources.remove(resource)
            except Exception as exc:  # keep going: the others can still go
                logger.warning("could not delete %s %s: %s", resource.kind, resource.ident, one_line(exc))
                leftovers.append(f"{resource.kind} {resource.ident}")
        return leftovers


def until(done: Callable[[], bool], deadline: float, what: str, pause: float = 2.0) -> None:
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
