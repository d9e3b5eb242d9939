"""When the command a process serves started: the zero of a run's timings.

A person times ``flowrig run`` from the moment they pressed return: the interpreter's
start and the imports before flowrig's first line are part of what they wait for. So
the start is the process's own (from the kernel, on Linux), or an earlier one that the
process which started this one hands down in :data:`STARTED_ENV` (the docker backend's
host starts the runner container of the same command).
"""

from __future__ import annotations

import os
import time

#: Wall-clock time (seconds since the epoch) at which the command this process serves
#: started, when a parent process started it for that command.
STARTED_ENV = "FLOWRIG_STARTED_AT"

#: When this module was imported: the start where the kernel does not say.
_IMPORTED = time.time()


def process_started() -> float:
    """Wall-clock time at which this process started.

    Linux gives it in ``/proc/self/stat`` (clock ticks since boot, the clock of
    ``CLOCK_BOOTTIME``); elsewhere, when flowrig's first module was imported.
    """
    try:
        with open("/proc/self/stat", "rb") as file:
            stat = file.read()
        # The command name (field 2) may hold spaces and parentheses: count from its end.
        fields = stat[stat.rindex(b")") + 2 :].split()
        age = time.clock_gettime(time.CLOCK_BOOTTIME) - int(fields[19]) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, AttributeError):
        return _IMPORTED
    return time.time() - age if 0 <= age else _IMPORTED


def command_started() -> float:
    """Wall-clock time at which the command this process serves started: the one handed
    down in :data:`STARTED_ENV` when it is earlier than this process, else this process's."""
    own = process_started()
    given = os.environ.get(STARTED_ENV, "")
    try:
        handed_down = float(given)
    except ValueError:
        return own
    # A value from the future, or from the distant past, is not this command's.
    return handed_down if own - 86400 < handed_down <= own else own
