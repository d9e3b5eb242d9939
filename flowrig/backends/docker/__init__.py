"""``docker``: one run's scheduler and workers as containers of the run's image.

Every role comes from one image. On the host, ``flowrig run PROJECT --backend docker
--image TAG`` calls :func:`flowrig.run.in_container.run_in_container`: it makes a
network for the run and starts the flow runner as a container of the image, with no
Docker socket. Inside that
container :class:`DockerBackend` asks the host process for its cluster
(:mod:`~flowrig.backends.docker.control`), and the host starts the scheduler and the
workers as containers on the same network, so every role reaches every other by
container name. Only the dashboard, and the scheduler port the host itself uses, are
published, on the host's 127.0.0.1; the dashboard answers only the run's certificate,
and the host's dashboard proxy (:mod:`flowrig.dashboard`) opens it to a browser there.
Every container gets the run's certificates over its stdin, runs read-only with no
capabilities, and shows neither them nor the run's parameters or API credentials to
``docker inspect``.

Every container and network carries the labels ``flowrig.run-id`` and ``flowrig.role``
(:mod:`flowrig.containers.labels`), and ``flowrig.owner``, the process that made it
(:mod:`flowrig.containers.owner`). Teardown removes by label, so a run's leftovers are
found even when the process that made them was killed (``flowrig docker leftovers``),
and a run whose process runs is never taken for one.

The modules, from pure to side effects:

- :mod:`~flowrig.backends.docker.naming`: names and environment variables;
- :mod:`~flowrig.backends.docker.control`: the runner's channel to its host;
- :mod:`~flowrig.backends.docker.policy`: what the host lets a runner ask for (the
  limits of the project baked into the image);
- :mod:`~flowrig.backends.docker.plans`: the plan of each role's container;
- :mod:`~flowrig.backends.docker.cluster`: :class:`DockerCluster`, a
  :class:`distributed.SpecCluster` of containers;
- :mod:`~flowrig.backends.docker.backend`: :class:`DockerBackend`, the ``docker`` backend;
- :mod:`~flowrig.backends.docker.memory`: workers that run out of memory, named;
- :mod:`~flowrig.backends.docker.controller`: :class:`HostController`, the host side
  that serves a runner's requests for its cluster;
- :mod:`~flowrig.backends.docker.leftovers`: what runs whose process has gone left, by run.

Containers are created and removed only through :mod:`flowrig.containers.engine`,
by the host process alone.
"""

from __future__ import annotations

from flowrig.backends.docker.backend import DockerBackend, DockerOptions, _check_options
from flowrig.backends.docker.cluster import SCHEDULER_READY, DockerCluster, DockerScheduler, DockerWorker
from flowrig.backends.docker.controller import HostController
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
from flowrig.backends.docker.plans import render_runner, render_scheduler, render_worker

__all__ = [
    "DockerBackend",
    "DockerCluster",
    "DockerOptions",
    "DockerScheduler",
    "DockerWorker",
    "HostController",
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
    "scheduler_address",
]
