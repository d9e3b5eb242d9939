"""One exception family, each member carrying the process exit code it maps to.

The CLI and the in-image entrypoint map these to a single line on stderr and the
exit code below (:mod:`flowrig.cli.exits`); nothing else in flowrig calls ``sys.exit``.
"""

from __future__ import annotations


class FlowrigError(Exception):
    """Base class for every error flowrig reports to a user.

    Parameters
    ----------
    message
        One line that names the problem and, where there is one, the fix.
    """

    exit_code: int = 3

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class FlowRunFailed(FlowrigError):
    """The flow ran and ended in a non-completed state (exit 1)."""

    exit_code = 1


class BadInput(FlowrigError):
    """Usage, config, parameters, certificates or flow path are wrong (exit 2)."""

    exit_code = 2


class InfrastructureError(FlowrigError):
    """A cluster, container, server or cloud resource could not start or timed out (exit 3)."""

    exit_code = 3


class RunTimedOut(FlowrigError):
    """The whole run took longer than its ``[run] timeout`` and was ended (exit 124,
    the code of ``timeout(1)``)."""

    exit_code = 124


class Terminated(BaseException):
    """A termination signal, raised in the main thread so every ``finally`` tears down.

    It is not a ``KeyboardInterrupt`` on purpose: click turns those into a plain
    return code, which would skip the exit code of the signal (128 + N).
    """

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


EXIT_OK = 0
EXIT_FLOW_FAILED = FlowRunFailed.exit_code
EXIT_BAD_INPUT = BadInput.exit_code
EXIT_INFRASTRUCTURE = InfrastructureError.exit_code
EXIT_TIMED_OUT = RunTimedOut.exit_code

#: Longest text :func:`one_line` returns; longer messages are cut with an ellipsis.
ONE_LINE_WIDTH = 300


def one_line(exc: BaseException | str, width: int = ONE_LINE_WIDTH) -> str:
    """An exception (or text) as one line of at most ``width`` characters.

    The way every foreign error (botocore, docker, distributed) is folded into the one
    line of a :class:`FlowrigError`: whitespace runs become one space, and an empty
    message falls back to the exception's type name.
    """
    text = " ".join(str(exc).split()) or (type(exc).__name__ if isinstance(exc, BaseException) else "")
    return text if len(text) <= width else text[: width - 3] + "..."


#: Exit codes of the ending signals, by code, as the JSON outcome names them.
SIGNAL_BASE = 128


def unexpected_line(exc: BaseException) -> str:
    """The one line of an exception no one mapped: a bug, reported as one."""
    return f"unexpected {type(exc).__name__}: {exc} (set FLOWRIG_DEBUG=1 for the traceback)"


def exit_status(exc: BaseException) -> tuple[int, str | None]:
    """The exit code ``exc`` ends a command with, and its one line of error.

    The contract of :mod:`flowrig.cli.exits`, as data: ``(code, line)``, where ``line`` is
    ``None`` for an ending signal (its code says it all). Command-line parsing errors
    are the CLI's own and are not known here.
    """
    if isinstance(exc, FlowrigError):
        return exc.exit_code, str(exc)
    if isinstance(exc, Terminated):
        return SIGNAL_BASE + exc.signum, None
    if isinstance(exc, KeyboardInterrupt):
        return SIGNAL_BASE + 2, None
    if isinstance(exc, SystemExit):
        return (exc.code if isinstance(exc.code, int) else 0 if exc.code is None else 1), None
    # Prefect turns SIGTERM during a flow run into its TerminationSignal.
    signum = getattr(exc, "signal", None)
    if isinstance(signum, int) and not isinstance(signum, bool):
        return SIGNAL_BASE + signum, None
    return EXIT_INFRASTRUCTURE, unexpected_line(exc)


def flowrig_cause(exc: BaseException) -> FlowrigError | None:
    """The flowrig error behind ``exc``, if any: libraries (distributed, for one) wrap
    errors raised inside them, and the one line a user should see is flowrig's."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, FlowrigError):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None
