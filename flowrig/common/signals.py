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
- a run that has not begun its teardown :data:`STOP_GRACE` seconds after the signal
  (its flow stuck somewhere that the exception cannot reach or that swallows it) is
  torn down from outside the flow by the teardown it registered with
  :func:`stop_guard`, its remaining child processes are killed, and the process exits
  at once with the code it would have had; so does a process still alive
  :data:`EXIT_GRACE` seconds after its command returned, or whose teardown took
  longer than :data:`TEARDOWN_LIMIT`.

Outside the main thread (a notebook's worker thread, say) signals cannot be handled
there, and every context manager here does nothing.
"""

from __future__ import annotations

import os
import select
import signal
import sys
import threading
import time
from contextlib import contextmanager
from typing import Any, Callable, Iterator

from flowrig.common.claimed_stdout import release_claim
from flowrig.errors import Terminated

#: The signals that end a run.
ENDING = (signal.SIGTERM, signal.SIGINT)
#: Seconds from an ending signal until a run must have begun its teardown.
STOP_GRACE = 5.0
#: Seconds its teardown may then take.
TEARDOWN_LIMIT = 60.0
#: Seconds the process may live once its command returned after an ending signal.
EXIT_GRACE = 5.0


class SignalRecord:
    """Whether SIGTERM or SIGINT reached this process, whoever handled it.

    The wakeup file descriptor sees every signal at the C level, before any Python
    handler runs, so a terminated run is known as such whatever happened above it.
    Once :meth:`watch` is called a thread reads it too, so that the first ending
    signal is noticed even while the main thread never gets to look
    (``on_first`` is called with it, once, from whichever thread saw it).
    """

    def __init__(self, on_first: Callable[[int], None] | None = None) -> None:
        self._read, self._write = os.pipe()
        os.set_blocking(self._read, False)
        os.set_blocking(self._write, False)
        self._previous = signal.set_wakeup_fd(self._write, warn_on_full_buffer=False)
        self._seen: set[int] = set()
        self._lock = threading.Lock()
        self._on_first = on_first
        self._reader: threading.Thread | None = None
        self._closing = False

    def _take(self, chunk: bytes) -> None:
        with self._lock:
            before = any(s in self._seen for s in ENDING)
            self._seen.update(chunk)
            first = None if before else next((int(s) for s in chunk if s in ENDING), None)
        if first is not None and self._on_first is not None:
            self._on_first(first)

    def _drain(self) -> bool:
        """Read what the pipe holds; ``False`` once its write end is closed."""
        try:
            while chunk := os.read(self._read, 512):
                self._take(chunk)
            return False
        except BlockingIOError:
            return True
        except OSError:
            return False

    def watch(self) -> None:
        """Read signals in a thread from now on (no thread may run before a local
        run's fork server has been forked: call it once the run has started)."""
        if self._reader is not None:
            return

        def read() -> None:
            while True:
                try:
                    select.select([self._read], [], [])
                except (OSError, ValueError):
                    return
                if not self._drain() or self._closing:
                    return

        self._reader = threading.Thread(target=read, name="flowrig-signals", daemon=True)
        self._reader.start()

    def received(self) -> int | None:
        """The ending signal seen so far, if any (SIGTERM wins over SIGINT)."""
        self._drain()
        with self._lock:
            for signum in ENDING:
                if signum in self._seen:
                    return int(signum)
        return None

    def close(self) -> None:
        signal.set_wakeup_fd(self._previous)
        # A byte wakes the reader, which then returns. Closing the write end alone does
        # not: a fork of this process (a local run's fork server) holds a copy of it, and
        # the reader would wait out the join below at every run's end.
        self._closing = True
        try:
            os.write(self._write, b"\0")
        except OSError:  # full: the reader has bytes to wake it already
            pass
        os.close(self._write)
        if self._reader is not None:
            self._reader.join(1)
        if self._reader is None or not self._reader.is_alive():
            os.close(self._read)


#: distributed's loggers that report a connection lost or cancelled, with a traceback.
CLUSTER_LOGGERS = ("distributed.client", "distributed.utils", "distributed.core", "distributed.comm",
                   "distributed.batched", "distributed.worker", "distributed.nanny")


def quiet_cluster_loggers() -> None:
    """Silence distributed's connection errors from here on: once a run is being
    stopped its cluster goes away under its client on purpose (the docker host removes
    the scheduler's container while the runner's client tries to reconnect), and those
    tracebacks are no failure of the run."""
    import logging

    for name in CLUSTER_LOGGERS:
        logging.getLogger(name).setLevel(logging.CRITICAL)


class _Watchdog:
    """Makes sure a process that got an ending signal ends, within bounds.

    Armed by the first ending signal; from then on it checks that the run begins its
    teardown within :data:`STOP_GRACE` s (else it tears the registered run down
    itself), finishes it within :data:`TEARDOWN_LIMIT` s, and that the process has
    exited :data:`EXIT_GRACE` s after its command returned. Past any of these it exits
    the process as :func:`force_exit` does.
    """

    def __init__(self, last_words: Callable[[int, str | None], None] | None = None) -> None:
        self._changed = threading.Condition()
        self.last_words = last_words
        self.guard: Callable[[], None] | None = None
        self.signum: int | None = None
        self.teardown_began: float | None = None
        self.block_ended: float | None = None

    def arm(self, signum: int) -> None:
        with self._changed:
            if self.signum is not None:
                return
            self.signum = signum
        quiet_cluster_loggers()
        threading.Thread(target=self._run, args=(time.monotonic(),), name="flowrig-stop-watch", daemon=True).start()

    def update(self, **values: Any) -> None:
        with self._changed:
            for name, value in values.items():
                setattr(self, name, value)
            self._changed.notify_all()

    def _wait_until(self, done: Callable[[], bool], deadline: float) -> bool:
        with self._changed:
            while not done():
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._changed.wait(None if left == float("inf") else left)
            return True

    def _run(self, armed_at: float) -> None:
        assert self.signum is not None
        if not self._wait_until(lambda: self.guard is None or self.block_ended is not None, armed_at + STOP_GRACE):
            force_exit(
                self.signum, self.guard,
                f"the run did not stop within {STOP_GRACE:g} s of {signal.Signals(self.signum).name}: "
                "stopped its cluster and API from outside the flow",
                self.last_words,
            )
        if self.teardown_began is not None:
            # A run's own teardown is bounded; a command without one (the docker
            # backend's host side, say) is left to its own.
            if not self._wait_until(lambda: self.block_ended is not None, self.teardown_began + TEARDOWN_LIMIT):
                force_exit(self.signum, None, f"the run's teardown took longer than {TEARDOWN_LIMIT:g} s",
                           self.last_words)
        self._wait_until(lambda: self.block_ended is not None, float("inf"))
        ended = self.block_ended or time.monotonic()
        time.sleep(max(ended + EXIT_GRACE - time.monotonic(), 0))
        # Still here: something in the process (a thread of the flow's) keeps it alive.
        force_exit(self.signum, None, None)


#: How :func:`force_exit` ends a run that something other than a person's signal
#: ended (its own timeout): exit code and line.
_forced_outcome: tuple[int, str] | None = None


def ending_as(code: int, line: str) -> None:
    """Say how a run this process is about to signal itself to end exits, should it have
    to be forced out (:func:`force_exit`)."""
    global _forced_outcome
    _forced_outcome = (code, line)


def force_exit(
    signum: int,
    teardown: Callable[[], None] | None,
    line: str | None,
    last_words: Callable[[int, str | None], None] | None = None,
) -> None:
    """End this process now: run ``teardown`` (bounded), kill its child processes, say
    ``line``, let ``last_words(code, error)`` report the outcome (``error``: what the
    run's timeout said, ``None`` for a signal), exit with ``128 + signum`` (or the code
    :func:`ending_as` gave)."""
    if teardown is not None:
        worker = threading.Thread(target=teardown, name="flowrig-forced-teardown", daemon=True)
        worker.start()
        worker.join(TEARDOWN_LIMIT)
    kill_children()
    code, error = 128 + signum, None
    if _forced_outcome is not None:
        code, error = _forced_outcome
        if line is not None:
            line = error  # why the run was ended, rather than how
    if line:
        try:
            print(f"flowrig: error: {line}", file=sys.stderr, flush=True)
        except Exception:
            pass
    if last_words is not None:
        try:
            last_words(code, error)
            sys.stdout.flush()
        except Exception:
            pass
    # A docker runner's stdout is a pipe a thread copies out: what was printed, the
    # outcome line included, must leave before the process does.
    release_claim()
    os._exit(code)


def kill_children() -> None:
    """SIGKILL every process this one started, and theirs (what is left of a run)."""
    try:
        import psutil

        children = psutil.Process().children(recursive=True)
    except Exception:
        return
    for child in children:
        try:
            child.kill()
        except Exception:
            pass


_active: SignalRecord | None = None
_watchdog: _Watchdog | None = None


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
def terminating(last_words: Callable[[int, str | None], None] | None = None) -> Iterator[None]:
    """Run a block that SIGTERM or SIGINT ends as :class:`~flowrig.errors.Terminated`.

    Nested blocks share the outermost one's record. ``last_words(exit_code, error)``
    reports the command's outcome when the process has to be forced out
    (:func:`force_exit`), since no ``finally`` runs then.
    """
    global _active, _watchdog
    if _active is not None or not _in_main_thread():
        yield
        return
    watchdog = _watchdog = _Watchdog(last_words)
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    record = _active = SignalRecord(on_first=watchdog.arm)
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
        watchdog.update(block_ended=time.monotonic())
        _active = _watchdog = None
        record.close()
        signal.signal(signal.SIGTERM, previous)


class _Guard:
    def __init__(self, watchdog: _Watchdog | None) -> None:
        self._watchdog = watchdog

    def release(self) -> None:
        """The run begins its own teardown now."""
        if self._watchdog is not None:
            self._watchdog.update(guard=None, teardown_began=time.monotonic())
            self._watchdog = None


def stop_guard(teardown: Callable[[], None]) -> _Guard:
    """Register the teardown of the run in progress; :meth:`_Guard.release` it when the
    run begins its teardown itself.

    If an ending signal came and the run has not released its guard within
    :data:`STOP_GRACE` seconds, ``teardown`` is called from another thread and the
    process exits (:func:`force_exit`). ``teardown`` must be safe to call from any
    thread, and more than once. Outside :func:`terminating` this does nothing.
    """
    watchdog = _watchdog
    if watchdog is None or _active is None or not _in_main_thread():
        return _Guard(None)
    watchdog.update(guard=teardown)
    # From here on a stuck main thread must not keep the signal unnoticed.
    _active.watch()
    return _Guard(watchdog)


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
