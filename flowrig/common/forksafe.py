"""Threads that may run while flowrig forks a process from the runner.

Forking a process that runs threads is unsafe in general: the child gets a copy of
every lock, held or not, but only the forking thread. The local backend forks its fork
server from the runner only while no other thread runs
(:mod:`flowrig.internals.forkserver`). A thread that does nothing but wait on its own
timer (the run's deadline) holds no lock a child could need, so it is marked here and
does not count.
"""

from __future__ import annotations

import threading

_ATTRIBUTE = "_flowrig_fork_safe"


def mark(thread: threading.Thread) -> threading.Thread:
    """Mark ``thread`` (not started yet) as one that only waits on its own timer."""
    setattr(thread, _ATTRIBUTE, True)
    return thread


def only_fork_safe_threads() -> bool:
    """Whether every thread but the main one is marked fork-safe."""
    return all(
        thread is threading.main_thread() or getattr(thread, _ATTRIBUTE, False) for thread in threading.enumerate()
    )
