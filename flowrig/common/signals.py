"""The one way a signal ends a run: SIGTERM and SIGINT unwind, teardown is never cut short.

Every long-running command (``flowrig run`` on any backend, the docker backend's host
side, ``flowrig ecs run-local``) runs inside :func:`terminating` and tears down inside
:func:`shielded`, with one semantics:

- SIGTERM raises :class:`~flowrig.errors.Terminated` in the main thread and SIGINT its
  usual ``KeyboardInterrupt``, so every ``finally`` runs;
- whatever a signal turned into on its way up (Prefect handles SIGTERM itself during a
  flow, and its exception can come out wrapped), the command ends as
  ``Terminated(N)``, which the CLI maps to exit code 128 + N;
- during teardown both signals are held back and delivered once it is done, so a
  second Ctrl-C cannot leave half a cluster behind;
- a teardown that can be hurried (the docker backend's host removes containers by
  force) runs inside :func:`hurried` instead: a further signal raises
  :class:`Escalated` there, and the teardown switches to its fastest way.

Outside the main thread (a notebook's worker thread, say) signals cannot be handled
there, and both context managers do nothing.
"""

from __future__ import annotations

import os
import signal
import threading
from contextlib import contextmanager
from typing import Any, Iterator

from flowrig.errors import Terminated

#: The signals that end a run.
ENDING = (signal.SIGTERM, signal.SIGINT)


class SignalRecord:
    """Whether SIGTERM or SIGINT reached this process, whoever handled it.

    The wakeup file descriptor sees every signal at the C level, before any Python
    handler runs, so a terminated run is known as such whatever happened above it.
    """

    def __init__(self) -> None:
        self._read, self._write = os.pipe()
        os.set_blocking(self._read, False)
        os.set_blocking(self._write, False)
        self._previous = signal.set_wakeup_fd(self._write, warn_on_full_buffer=False)
        self._seen: set[int] = set()

    def received(self) -> int | None:
        """The ending signal seen so far, if any (SIGTERM wins over SIGINT)."""
        try:
            while chunk := os.read(self._read, 512):
                self._seen.update(chunk)
        except BlockingIOError:
            pass
        for signum in ENDING:
            if signum in self._seen:
                return int(signum)
        return None

    def close(self) -> None:
        signal.set_wakeup_fd(self._previous)
        os.close(self._read)
        os.close(self._write)


_active: SignalRecord | None = None


def _in_main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


def _raise_terminated(signum: int, frame: Any) -> None:
    raise Terminated(signum)


class Escalated(BaseException):
    """SIGTERM or SIGINT during a teardown that :func:`hurried` lets a signal cut short.

    A ``BaseException``, like ``KeyboardInterrupt``: no ``except Exception`` of a
    library swallows it on its way to the teardown that asked for it.
    """

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def signal_name(signum: int) -> str:
    """``Ctrl-C`` for SIGINT, else the signal's name (``SIGTERM``)."""
    if signum == signal.SIGINT:
        return "Ctrl-C"
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


@contextmanager
def terminating() -> Iterator[None]:
    """Run a block that SIGTERM or SIGINT ends as :class:`~flowrig.errors.Terminated`.

    Nested blocks share the outermost one's record.
    """
    global _active
    if _active is not None or not _in_main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    record = _active = SignalRecord()
    try:
        yield
    except Terminated:
        raise
    except BaseException:
        if (signum := record.received()) is None:
            raise
        raise Terminated(signum) from None
    else:
        if (signum := record.received()) is not None:
            raise Terminated(signum)
    finally:
        _active = None
        record.close()
        signal.signal(signal.SIGTERM, previous)


@contextmanager
def hurried() -> Iterator[None]:
    """Run a teardown that a further SIGTERM or SIGINT cuts short: the signal raises
    :class:`Escalated` in the main thread, where :func:`shielded` would hold it back.

    The enclosing :func:`terminating` block still sees the signal, so the command
    ends as terminated.
    """
    if not _in_main_thread():
        yield
        return

    def escalate(signum: int, frame: Any) -> None:
        raise Escalated(signum)

    previous = {s: signal.signal(s, escalate) for s in ENDING}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


@contextmanager
def shielded() -> Iterator[None]:
    """Hold SIGTERM and SIGINT back until the block (a teardown) is done, then deliver them."""
    if not _in_main_thread():
        yield
        return
    held: list[int] = []
    previous = {s: signal.signal(s, lambda signum, frame: held.append(signum)) for s in ENDING}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        for signum in dict.fromkeys(held):
            signal.raise_signal(signum)
