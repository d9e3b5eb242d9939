"""Names, labels and environment variables of a run's containers and network (pure).

Every container and network of a run is named ``flowrig-<run id>-...`` and carries
the labels ``flowrig.run-id`` and ``flowrig.role``; teardown finds a run by them.
"""

from __future__ import annotations

from flowrig.common.runid import RUN_ID_ENV, check_run_id, new_run_id
from flowrig.containers.labels import labels
from flowrig.roles import SCHEDULER_PORT

__all__ = [
    "ENV_IMAGE", "ENV_NETWORK", "ENV_RUNNER_HOST", "ENV_RUN_ID", "NAME_PREFIX", "check_run_id",
    "container_name", "labels", "network_name", "new_run_id", "scheduler_address",
]

#: Environment variables the host sets for a runner container; the backend reads them.
ENV_NETWORK = "FLOWRIG_DOCKER_NETWORK"
ENV_RUNNER_HOST = "FLOWRIG_RUNNER_HOST"
ENV_IMAGE = "FLOWRIG_IMAGE"
ENV_RUN_ID = RUN_ID_ENV

#: Names are ``<prefix>-<run id>`` (the network) and ``<prefix>-<run id>-<role>``.
NAME_PREFIX = "flowrig"


def network_name(run_id: str) -> str:
    """Name of a run's network: ``flowrig-<run id>``."""
    return f"{NAME_PREFIX}-{run_id}"


def container_name(run_id: str, role: str, worker: object = None) -> str:
    """Name of a run's container: ``flowrig-<run id>-<role>[-<worker name>]``."""
    name = f"{NAME_PREFIX}-{run_id}-{role}"
    return name if worker is None else f"{name}-{worker}"


def scheduler_address(run_id: str) -> str:
    """``tls://`` address of a run's scheduler on the run's network."""
    return f"tls://{container_name(run_id, 'scheduler')}:{SCHEDULER_PORT}"
