"""``docker``: one run's scheduler and workers as containers of the run's image.

Every role comes from one image. On the host, ``flowrig run PROJECT --backend docker
--image TAG`` calls :func:`run_in_container`: it makes a network for the run and starts
the flow runner as a container of the image, with the Docker socket mounted. Inside that
container :class:`DockerBackend` starts the scheduler and the workers as sibling
containers on the same network, so every role reaches every other by container name
and nothing is published to the host.

Every container and network carries the labels ``flowrig.run-id`` and ``flowrig.role``.
Teardown removes by label, so a run's leftovers are found even when the process that
made them was killed (``flowrig docker leftovers``).

The modules, from pure to side effects:

- :mod:`~flowrig.backends.docker.naming`: names, labels and environment variables;
- :mod:`~flowrig.backends.docker.plans`: :class:`ContainerPlan` and the plan of each role;
- :mod:`~flowrig.backends.docker.engine`: the thin layer that hands plans to the Docker
  daemon (docker-py);
- :mod:`~flowrig.backends.docker.cluster`: :class:`DockerCluster`, a
  :class:`distributed.SpecCluster` of containers;
- :mod:`~flowrig.backends.docker.backend`: :class:`DockerBackend`, the ``docker`` backend;
- :mod:`~flowrig.backends.docker.host`: :func:`run_in_container`, the host side.

Mounting the Docker socket gives the runner container control of the Docker daemon,
which is as much as root on the host: run only images you built from projects you trust.
"""

from __future__ import annotations

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
from flowrig.backends.docker.plans import (
    ContainerPlan,
    InjectedFile,
    files_archive,
    render_runner,
    render_scheduler,
    render_worker,
    tls_files,
)
from flowrig.backends.docker.engine import (
    connect,
    container_logs_tail,
    create_container,
    create_network,
    log_tail,
    published_port,
    remove_run,
    require_image,
    run_containers,
    start_container,
    stop_and_remove,
    wait_for_log,
)
from flowrig.backends.docker.cluster import SCHEDULER_READY, DockerCluster, DockerScheduler, DockerWorker
from flowrig.backends.docker.backend import OPTIONS, DockerBackend
from flowrig.backends.docker.backend import _check_options  # noqa: F401  (option checks are tested on their own)
from flowrig.backends.docker.host import run_in_container

__all__ = [
    "ContainerPlan",
    "DockerBackend",
    "DockerCluster",
    "DockerScheduler",
    "DockerWorker",
    "ENV_IMAGE",
    "ENV_NETWORK",
    "ENV_RUNNER_HOST",
    "ENV_RUN_ID",
    "InjectedFile",
    "OPTIONS",
    "SCHEDULER_READY",
    "check_run_id",
    "connect",
    "container_logs_tail",
    "container_name",
    "create_container",
    "create_network",
    "files_archive",
    "labels",
    "log_tail",
    "network_name",
    "new_run_id",
    "published_port",
    "remove_run",
    "render_runner",
    "render_scheduler",
    "render_worker",
    "require_image",
    "run_containers",
    "run_in_container",
    "scheduler_address",
    "start_container",
    "stop_and_remove",
    "tls_files",
    "wait_for_log",
]
