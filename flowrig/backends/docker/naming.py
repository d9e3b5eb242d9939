"""Names, labels and environment variables of a run's containers and network (pure).

Every container and network of a run is named ``flowrig-<run id>-...`` and carries
the labels ``flowrig.run-id`` and ``flowrig.role``; teardown finds a run by them.
"""

from __future__ import annotations

import re
import uuid

from flowrig import defaults
from flowrig.errors import BadInput

#: Environment variables the host sets for a runner container; the backend reads them.
ENV_NETWORK = "FLOWRIG_DOCKER_NETWORK"
ENV_RUNNER_HOST = "FLOWRIG_RUNNER_HOST"
ENV_IMAGE = "FLOWRIG_IMAGE"
ENV_RUN_ID = "FLOWRIG_RUN_ID"

_RUN_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")


def new_run_id() -> str:
    """A short random run id, the same shape :func:`flowrig.runner.execute` makes."""
    return uuid.uuid4().hex[:10]


def check_run_id(run_id: str) -> str:
    """Return ``run_id`` when it can be part of container and network names.

    Raises
    ------
    BadInput
        For characters Docker does not allow in names.
    """
    if not _RUN_ID.match(run_id):
        raise BadInput(
            f"run id {run_id!r} cannot name Docker containers: use letters, digits, '_', '.' or '-' "
            f"(set {ENV_RUN_ID} accordingly or leave it unset)"
        )
    return run_id


def network_name(run_id: str) -> str:
    """Name of a run's network: ``flowrig-<run id>``."""
    return f"{defaults.DOCKER_NAME_PREFIX}-{run_id}"


def container_name(run_id: str, role: str, worker: object = None) -> str:
    """Name of a run's container: ``flowrig-<run id>-<role>[-<worker name>]``."""
    name = f"{defaults.DOCKER_NAME_PREFIX}-{run_id}-{role}"
    return name if worker is None else f"{name}-{worker}"


def labels(run_id: str, role: str) -> dict[str, str]:
    """Labels that tie a container or network to its run and say what it is."""
    return {defaults.DOCKER_LABEL_RUN_ID: run_id, defaults.DOCKER_LABEL_ROLE: role}


def scheduler_address(run_id: str) -> str:
    """``tls://`` address of a run's scheduler on the run's network."""
    return f"tls://{container_name(run_id, 'scheduler')}:{defaults.SCHEDULER_PORT}"
