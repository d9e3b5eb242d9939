"""Run parameters: gathered from the command line, a file and the environment, then
validated against the flow's signature with Prefect's own validation.

Precedence, lowest first: ``FLOWRIG_PARAMETERS`` (a JSON object), ``--params-file``
(``-``: standard input), then each ``--param k=v``; a later source overrides a key from
an earlier one.

``--param`` values are on the command line of ``flowrig run``, which every local user
can read (``/proc/PID/cmdline``) until the command hides them (:func:`hide_param_values`,
a fraction of a second after it starts; no process it starts ever shows them);
a file only its owner reads, standard input and ``FLOWRIG_PARAMETERS`` (a process's
environment is its owner's alone) keep them private from the start.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path
from typing import Any, Iterable, Mapping, TextIO

from flowrig.errors import BadInput

ENV_VAR = "FLOWRIG_PARAMETERS"
#: ``--params-file`` that names standard input.
STDIN = "-"


def parse_param(item: str) -> tuple[str, Any]:
    """Parse one ``key=value``; the value is JSON when it parses, else a string.

    A value that *looks* like JSON (starts with ``[``, ``{`` or ``"``) but does not
    parse is an error rather than a string: ``x=[1,2`` is a typo, not a name.
    """
    key, sep, raw = item.partition("=")
    key = key.strip()
    if not sep or not key:
        raise BadInput(f"--param {item!r} must look like key=value, e.g. --param 'x=[1,2,3]'")
    try:
        return key, json.loads(raw, parse_constant=_not_json)
    except ValueError as exc:
        if not isinstance(exc, json.JSONDecodeError):
            return key, raw  # NaN / Infinity: not JSON, so the string itself
        if raw.lstrip()[:1] in ("[", "{", '"'):
            raise BadInput(
                f"--param {key}: malformed JSON ({exc.msg} at column {exc.colno}); "
                f"quote it for the shell, e.g. --param '{key}=[1,2,3]'"
            ) from None
        return key, raw


def _not_json(constant: str) -> Any:
    # Python's json accepts NaN and Infinity; JSON does not, so they stay strings.
    raise ValueError(constant)


def _object(text: str, source: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise BadInput(f"{source}: malformed JSON ({exc.msg} at line {exc.lineno})") from None
    if not isinstance(value, dict):
        raise BadInput(f"{source}: must be a JSON object of parameter names to values")
    return value


def gather(
    params: Iterable[str] = (),
    params_file: str | Path | None = None,
    environ: Mapping[str, str] | None = None,
    stdin: TextIO | None = None,
) -> dict[str, Any]:
    """Collect raw parameters from all sources (not yet validated).

    ``params_file`` ``"-"`` reads the JSON object from ``stdin`` (default: this
    process's standard input), once.
    """
    environ = os.environ if environ is None else environ
    result: dict[str, Any] = {}
    if environ.get(ENV_VAR):
        result.update(_object(environ[ENV_VAR], ENV_VAR))
    if params_file is not None and str(params_file) == STDIN:
        result.update(_object((stdin or sys.stdin).read(), "parameters on standard input"))
    elif params_file is not None:
        path = Path(params_file)
        if not path.is_file():
            raise BadInput(f"parameters file {str(path)!r} does not exist")
        result.update(_object(path.read_text(encoding="utf-8"), str(path)))
    for item in params:
        key, value = parse_param(item)
        result[key] = value
    return result


#: What a hidden ``--param`` value shows instead.
HIDDEN = b"*"


def hidden_values(argv: list[bytes]) -> list[bytes]:
    """``argv`` with the value of every ``--param k=v`` (and ``-p k=v``,
    ``--param=k=v``, ``-pk=v``) replaced by ``k=*``; everything else as it was."""

    def hide(item: bytes) -> bytes:
        key, sep, _ = item.partition(b"=")
        return key + sep + HIDDEN if sep else HIDDEN

    result: list[bytes] = []
    value_next = False
    for arg in argv:
        if value_next:
            result.append(hide(arg))
            value_next = False
        elif arg in (b"--param", b"-p"):
            result.append(arg)
            value_next = True
        elif arg.startswith(b"--param="):
            result.append(b"--param=" + hide(arg[len(b"--param="):]))
        elif arg.startswith(b"-p") and not arg.startswith(b"--"):
            result.append(b"-p" + hide(arg[2:]))
        else:
            result.append(arg)
    return result


def hide_param_values() -> bool:
    """Take the ``--param`` values off this process's command line, as other users see
    it (``/proc/PID/cmdline``) and as every process forked from it inherits it.

    Call it before any other process starts. Returns whether the values are hidden (or
    there were none); where the system does not allow it, they stay visible.
    """
    from flowrig.internals.cmdline import rewrite_arguments

    return rewrite_arguments(hidden_values)


def validate(flow: Any, parameters: Mapping[str, Any]) -> dict[str, Any]:
    """Check ``parameters`` against ``flow``'s signature and cast them.

    Uses :meth:`prefect.Flow.validate_parameters`, so a run behaves as it would when
    Prefect itself started it.

    Raises
    ------
    BadInput
        One line naming the parameter at fault: unknown, missing, or of the wrong type.
    """
    from prefect.exceptions import ParameterBindError, ParameterTypeError, SignatureMismatchError

    known = set(flow.parameters.properties)
    unknown = sorted(set(parameters) - known)
    if unknown:
        raise BadInput(
            f"unknown parameter {unknown[0]!r} for flow {flow.name!r}; "
            f"it takes: {', '.join(sorted(known)) or 'no parameters'}"
        )
    # Prefect logs the full pydantic report before raising; the one-line message below
    # carries the same facts, so keep the log quiet.
    flow_logger = logging.getLogger("prefect.flows")
    previous = flow_logger.disabled
    flow_logger.disabled = True
    try:
        return flow.validate_parameters(dict(parameters))
    except ParameterTypeError as exc:
        raise BadInput(_one_line(f"invalid parameter for flow {flow.name!r}: {exc}")) from None
    except (SignatureMismatchError, ParameterBindError, TypeError) as exc:
        raise BadInput(_one_line(f"parameters do not fit flow {flow.name!r}: {exc}")) from None
    finally:
        flow_logger.disabled = previous


def _one_line(text: str) -> str:
    lines = [line.strip(" -") for line in text.splitlines() if line.strip()]
    return "; ".join(lines).replace("Flow run received invalid parameters:; ", "")
