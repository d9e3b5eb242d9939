"""A process's stdout shared with a control channel that its own output cannot reach.

:class:`ClaimedStdout` takes file descriptor 1 over: it becomes a pipe (inherited by
subprocesses too), and a thread copies what arrives there to the original stdout with
every record separator (:data:`SEPARATOR`, ``0x1e``) doubled. Only the claim writes
the original stdout from then on (its descriptor is not inherited), and
:meth:`ClaimedStdout.send` puts a control message there between two copies, starting
with a single separator: nothing the process prints can be read as one. The docker
backend's runner does this before anything of the flow's is imported
(:mod:`flowrig.backends.docker.control`).
"""

from __future__ import annotations

import atexit
import contextlib
import os
import sys
import threading

#: The record separator: doubled in the output, single before a control message.
SEPARATOR = b"\x1e"
#: Seconds the process waits at exit for its output to reach the original stdout.
RELEASE_TIMEOUT = 5.0


def escape(data: bytes) -> bytes:
    """Output as it goes on the claimed stream: every separator doubled."""
    return data.replace(SEPARATOR, SEPARATOR + SEPARATOR)


class ClaimedStdout:
    """This process's stdout, taken over so that control messages have a stream of their own.

    File descriptor 1 becomes a pipe (inherited by subprocesses too); a thread copies
    what arrives there, escaped (:func:`escape`), to the original stdout, which only
    this object writes from then on (its descriptor is not inherited).
    :meth:`send` writes a control message between two copies. At exit
    (:meth:`release`) everything printed is copied before the process ends.
    """

    def __init__(self) -> None:
        with contextlib.suppress(Exception):
            sys.stdout.flush()
        self._out = os.dup(1)  # not inheritable: no subprocess gets the control stream
        read, write = os.pipe()
        os.dup2(write, 1)
        os.close(write)
        self._read = read
        self._lock = threading.Lock()
        self._done = threading.Event()
        threading.Thread(target=self._pump, name="flowrig-stdout", daemon=True).start()
        atexit.register(self.release)

    def _pump(self) -> None:
        try:
            while chunk := os.read(self._read, 65536):
                self._write(escape(chunk))
        except OSError:
            pass
        finally:
            self._done.set()

    def _write(self, data: bytes) -> None:
        with self._lock:
            view = memoryview(data)
            while view:
                view = view[os.write(self._out, view):]

    def send(self, message: bytes) -> None:
        """Write a control message (one line that starts with a single separator)."""
        self._write(message)

    def release(self, timeout: float = RELEASE_TIMEOUT) -> None:
        """Copy what is left of the output, then stop (at exit; safe twice)."""
        with contextlib.suppress(Exception):
            sys.stdout.flush()
        null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(null, 1)  # the last writer of the pipe, unless a subprocess lives on
        os.close(null)
        self._done.wait(timeout)


_claimed: ClaimedStdout | None = None


def claim_stdout() -> ClaimedStdout:
    """Take this process's stdout over (once; later calls return the same claim)."""
    global _claimed
    if _claimed is None:
        _claimed = ClaimedStdout()
    return _claimed


def release_claim(timeout: float = RELEASE_TIMEOUT) -> None:
    """Copy what is left of a claimed stdout, if this process claimed it: before an
    ``os._exit``, which runs no ``atexit`` handler."""
    if _claimed is not None:
        _claimed.release(timeout)
