"""Run ids: one short random id names everything a run creates (containers, tags, logs)."""

from __future__ import annotations

import os
import re
import uuid

from flowrig.errors import BadInput

#: The run id a process was given (a runner container, a worker, a test); a new one otherwise.
RUN_ID_ENV = "FLOWRIG_RUN_ID"

# Docker names allow these characters; AWS tags, families and names allow a superset.
_RUN_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")


def new_run_id() -> str:
    """A fresh run id: ten hexadecimal digits."""
    return uuid.uuid4().hex[:10]


def check_run_id(run_id: str) -> str:
    """Return ``run_id`` when it can be part of container, network and resource names.

    Raises
    ------
    BadInput
        For characters Docker does not allow in names.
    """
    if not _RUN_ID.match(run_id):
        raise BadInput(
            f"run id {run_id!r} cannot name Docker containers: use letters, digits, '_', '.' or '-' "
            f"(set {RUN_ID_ENV} accordingly or leave it unset)"
        )
    return run_id


def current_run_id() -> str:
    """``FLOWRIG_RUN_ID`` when set (and valid), else a new id."""
    given = os.environ.get(RUN_ID_ENV)
    return check_run_id(given) if given else new_run_id()
