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

from flowrig.errors import EXIT_BAD_INPUT, EXIT_INFRASTRUCTURE, FlowrigError, Terminated


def run_and_exit(command: Callable[[], Any], prog: str) -> NoReturn:
    """Call ``command`` and exit with the code the contract gives its outcome.

    An unexpected exception is a bug, not a user error: it still gets one line (and
    exit 3); ``FLOWRIG_DEBUG=1`` shows the traceback.
    """
    # Everything is torn down by the time an exit code is chosen; collecting the
    # heap at interpreter shutdown then only delays exit (seconds, under load), which
    # a `docker stop` deadline counts. Freezing it skips that walk.
    import atexit
    import gc

    import typer

    atexit.register(gc.freeze)
    try:
        code = command()
    except FlowrigError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        sys.exit(exc.exit_code)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except typer.Abort:
        print(f"{prog}: aborted", file=sys.stderr)
        sys.exit(130)
    except Terminated as exc:
        # Raised by the SIGTERM handler; teardown has already happened in finally blocks.
        sys.exit(128 + exc.signum)
    except KeyboardInterrupt:
        sys.exit(130)
    except SystemExit:
        raise
    except BaseException as exc:
        # typer vendors its own click, so usage errors are recognised by shape.
        if hasattr(exc, "show") and hasattr(exc, "exit_code"):
            exc.show()
            sys.exit(EXIT_BAD_INPUT)
        # Prefect turns SIGTERM during a flow run into its TerminationSignal.
        if isinstance(getattr(exc, "signal", None), int):
            sys.exit(128 + exc.signal)
        if os.environ.get("FLOWRIG_DEBUG"):
            traceback.print_exc()
        print(
            f"{prog}: error: unexpected {type(exc).__name__}: {exc} "
            "(set FLOWRIG_DEBUG=1 for the traceback)",
            file=sys.stderr,
        )
        sys.exit(EXIT_INFRASTRUCTURE)
    # Without standalone mode click returns a command's exit code instead of exiting.
    sys.exit(code if isinstance(code, int) else 0)
