"""Checks of environment variables shared by the backends and the roles."""

from __future__ import annotations

import re
from typing import Mapping

from flowrig.errors import BadInput

#: What a container can receive as an environment variable's name.
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def check_env_name(kind: str, name: str) -> str:
    """Return ``name`` when it can be an environment variable name.

    Raises
    ------
    BadInput
        For names a container could not receive.
    """
    if not _ENV_NAME.match(name):
        raise BadInput(f"{kind} name {name!r} is not a valid environment variable name")
    return name


def positive_seconds(environ: Mapping[str, str], name: str, default: float) -> float:
    """The number of seconds variable ``name`` holds, ``default`` when it is unset or empty.

    Raises
    ------
    BadInput
        When it is set to anything but a number of seconds greater than zero.
    """
    given = environ.get(name, "").strip()
    if not given:
        return default
    try:
        seconds = float(given)
    except ValueError:
        seconds = 0.0
    if not seconds > 0:
        raise BadInput(f"{name}={given!r}: give a number of seconds greater than 0, or unset it")
    return seconds
