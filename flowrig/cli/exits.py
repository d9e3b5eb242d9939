"""Map what a command raised to one line on stderr and an exit code.

Shared by ``flowrig`` and ``flowrig-entrypoint`` so both speak the same contract:
0 success, 1 the flow run failed, 2 bad input, 3 infrastructure, 124 the run's timeout
passed, 128+N a signal.
"""

from __future__ import annotations

import os
import sys
import traceback
from typing import Any, Callable, NoReturn

from flowrig.errors import EXIT_BAD_INPUT, FlowrigError, exit_status


def run_and_exit(
    command: Callable[[], Any], prog: str, *, on_usage_error: Callable[[BaseException], None] | None = None
) -> NoReturn:
    """Call ``command`` and exit with the code the contract gives its outcome
    (:func:`flowrig.errors.exit_status`).

    An unexpected exception is a bug, not a user error: it still gets one line (and
    exit 3); ``FLOWRIG_DEBUG=1`` shows the traceback. ``on_usage_error`` is called with
    a command-line error once click has shown it (exit 2).
    """
    # Everything is torn down by the time an exit code is chosen; collecting the
    # heap at interpreter shutdown then only delays exit (seconds, under load), which
    # a `docker stop` deadline counts. Freezing it skips that walk.
    import atexit
    import gc

    import typer

    # Once per process, however often a command runs in it (the tests call it in process).
    atexit.unregister(gc.freeze)
    atexit.register(gc.freeze)
    try:
        code = command()
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except typer.Abort:
        print(f"{prog}: aborted", file=sys.stderr)
        sys.exit(130)
    except SystemExit:
        raise
    except BaseException as exc:
        # typer vendors its own click, so usage errors are recognised by shape.
        if not isinstance(exc, FlowrigError) and hasattr(exc, "show") and hasattr(exc, "exit_code"):
            exc.show()
            if on_usage_error is not None:
                on_usage_error(exc)
            sys.exit(EXIT_BAD_INPUT)
        code, line = exit_status(exc)
        if line is not None and not isinstance(exc, FlowrigError) and os.environ.get("FLOWRIG_DEBUG"):
            traceback.print_exc()
        if line is not None:
            print(f"{prog}: error: {line}", file=sys.stderr)
        # Raised by the SIGTERM handler or Ctrl-C: teardown has already happened in
        # finally blocks.
        sys.exit(code)
    # Without standalone mode click returns a command's exit code instead of exiting.
    sys.exit(code if isinstance(code, int) else 0)
