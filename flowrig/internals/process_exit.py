"""A process's exit without the interpreter's teardown of its modules.

Fenced here: ``atexit._run_exitfuncs`` (CPython's, private) runs the registered exit
handlers as interpreter shutdown does, last registered first, an exception in one
printed without stopping the others, and leaves none registered. tests/test_internals.py
checks it on this Python.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import sys
import threading
from typing import NoReturn


def exit_now(code: int) -> NoReturn:
    """Exit with ``code`` the way ``sys.exit`` would, minus the module teardown.

    After a ``flowrig run`` the interpreter's shutdown frees every object of Prefect,
    distributed and the flow one by one, module after module: 50 to 150 ms on two cores
    that nothing needs, since the exit handlers (logging's flush and close, Prefect's,
    multiprocessing's) have run by then. Those run here as at shutdown, the standard
    streams are flushed, then the process ends. While a non-daemon thread is alive
    Python would wait for it: then this is ``sys.exit``, teardown and all.
    """
    main = threading.main_thread()
    if any(t is not main and t.is_alive() and not t.daemon for t in threading.enumerate()):
        sys.exit(code)
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(code)
