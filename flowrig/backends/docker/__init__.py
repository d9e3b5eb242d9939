"""``docker``: one run's scheduler and workers as containers of the run's image.

Every role comes from one image. On the host, ``flowrig run PROJECT --backend docker
--image TAG`` calls :func:`run_in_container`: it makes a network for the run and starts
the flow runner as a container of the image, with the Docker socket mounted. Inside that
container :class:`DockerBackend` starts the scheduler and the workers as sibling
containers on the same network, so every role reaches every other by container name
and nothing is published to the host.

Every container and network carries the labels ``flowrig.run-id`` and ``flowrig.role``
(:mod:`flowrig.containers.labels`). Teardown removes by label, so a run's leftovers are
found even when the process that made them was killed (``flowrig docker leftovers``).

The modules, from pure to side effects:

- :mod:`~flowrig.backends.docker.naming`: names and environment variables;
- :mod:`~flowrig.backends.docker.plans`: the plan of each role's container;
- :mod:`~flowrig.backends.docker.cluster`: :class:`DockerCluster`, a
  :class:`distributed.SpecCluster` of containers;
- :mod:`~flowrig.backends.docker.backend`: :class:`DockerBackend`, the ``docker`` backend;
- :mod:`~flowrig.backends.docker.host`: :func:`run_in_container`, the host side;
- :mod:`~flowrig.backends.docker.leftovers`: what killed runs left, by run.

Containers are created and removed only through :mod:`flowrig.containers.engine`.
Mounting the Docker socket gives the runner container control of the Docker daemon,
which is as much as root on the host: run only images you built from projects you trust.
"""

from __future__ import annotations

from flowrig.backends.docker.backend import DockerBackend, DockerOptions, _check_options
from flowrig.backends.docker.cluster import SCHEDULER_READY, DockerCluster, DockerScheduler, DockerWorker
from flowrig.backends.docker.host import run_in_container
from flowrig.backends.docker.naming import (
    ENV_IMAGE,
    ENV_NETWORK,
    ENV_RUN_ID,
    ENV_RUNNER_HOST,
    check_run_id,
    container_name,
    labels,
    network_name,
    new_run_id,
    scheduler_address,
)
from flowrig.backends.docker.plans import render_runner, render_scheduler, render_worker, tls_files

__all__ = [
    "DockerBackend",
    "DockerCluster",
    "DockerOptions",
    "DockerScheduler",
    "DockerWorker",
    "ENV_IMAGE",
    "ENV_NETWORK",
    "ENV_RUNNER_HOST",
    "ENV_RUN_ID",
    "SCHEDULER_READY",
    "_check_options",
    "check_run_id",
    "container_name",
    "labels",
    "network_name",
    "new_run_id",
    "render_runner",
    "render_scheduler",
    "render_worker",
    "run_in_container",
    "scheduler_address",
    "tls_files",
]
