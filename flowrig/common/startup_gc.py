"""Start-up with the cyclic garbage collector paused.

Importing Prefect and building its models and its server app allocate millions of
objects and almost no garbage cycles, so the collector's passes over them are wasted:
with it paused, the API server's start-up took about a sixth less time and the
imports of a runner about a tenth less (measured on two cores). What start-up made is
then frozen, so that later collections skip it and forked workers share its pages.

Freezing keeps whatever start-up allocated for the life of the process, so it is used
only in processes flowrig owns: the ``flowrig run`` command, the run's API server and
the local workers' fork server. :func:`flowrig.run.execute`, which a notebook may call,
never freezes anything.
"""

from __future__ import annotations

import gc
from contextlib import contextmanager
from typing import Iterator


@contextmanager
def collector_paused() -> Iterator[None]:
    """Pause the cyclic collector for a start-up phase, then freeze what it made.

    The collector is enabled again on the way out only if it was enabled before.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        gc.freeze()
        if was_enabled:
            gc.enable()
