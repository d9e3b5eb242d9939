"""Rewriting this process's command line as other processes see it (Linux).

``/proc/PID/cmdline`` shows the bytes between the process's ``arg_start`` and
``arg_end`` (fields 48 and 49 of ``/proc/PID/stat``) to every user of the machine, and
every process forked from this one inherits them. A process may write its own memory
through ``/proc/self/mem``, which is how :func:`rewrite_arguments` replaces them in
place, as ``setproctitle`` and servers that take passwords on their command line do.

Fenced here: CPython copies its arguments at start-up (``sys.argv``,
``sys.orig_argv``) and reads that memory no more; the C library keeps only a pointer
to ``argv[0]`` (``program_invocation_name``), which is never changed; the kernel shows
the area as it is as long as its last byte stays NUL. tests/e2e/local/test_internals.py checks
that a rewritten command line is what ``/proc/PID/cmdline`` shows, in this process and
in a child forked after it, while ``sys.argv`` stays as it was.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

#: Index of ``arg_start`` among the fields of ``/proc/self/stat`` after ``comm``
#: (field 48; the first field after ``comm`` is field 3).
_ARG_START = 48 - 3


def arguments(pid: int | str = "self") -> list[bytes]:
    """A process's arguments as ``/proc/PID/cmdline`` shows them."""
    raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    return raw.split(b"\0")[:-1] if raw.endswith(b"\0") else raw.split(b"\0")


def rewrite_arguments(change: Callable[[list[bytes]], list[bytes]]) -> bool:
    """Replace this process's arguments, as every other process sees them, by
    ``change(arguments)``; returns whether that was done.

    The new arguments must fit where the old ones were: they are written over them and
    the rest is filled with NUL bytes. Nothing is written when they do not fit, when
    this system has no ``/proc/self/mem`` to write, or when the new arguments are the
    old ones.
    """
    try:
        stat = Path("/proc/self/stat").read_bytes()
        fields = stat[stat.rindex(b")") + 2:].split()
        start, end = int(fields[_ARG_START]), int(fields[_ARG_START + 1])
        old = arguments()
        new = change(list(old))
        if new == old:
            return True
        area = b"\0".join(new) + b"\0"
        if not start or end - start < len(area):
            return False
        with open("/proc/self/mem", "r+b", buffering=0) as memory:
            memory.seek(start)
            memory.write(area.ljust(end - start, b"\0"))
        return arguments()[: len(new)] == new
    except (OSError, ValueError, IndexError):
        return False
