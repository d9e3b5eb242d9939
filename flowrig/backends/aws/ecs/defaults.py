"""Defaults of the ECS backends and of rendered task definitions.

``FAMILY_PREFIX``, ``EXECUTION_ROLE_POLICY`` and ``CLEANUP_TIMEOUT`` are every AWS
backend's (:mod:`flowrig.backends.aws.names`), named here too with the ECS defaults.
"""

from __future__ import annotations

from flowrig.backends.aws.names import CLEANUP_TIMEOUT as CLEANUP_TIMEOUT
from flowrig.backends.aws.names import EXECUTION_ROLE_POLICY as EXECUTION_ROLE_POLICY
from flowrig.backends.aws.names import FAMILY_PREFIX as FAMILY_PREFIX

#: Container names of the roles. dask-cloudprovider overrides the command of containers
#: named exactly ``dask-scheduler`` and ``dask-worker``, so task definitions rendered
#: for it keep those two names.
RUNNER_CONTAINER = "flowrig-runner"
SCHEDULER_CONTAINER = "dask-scheduler"
WORKER_CONTAINER = "dask-worker"
#: Fargate size of each role: CPU units (1024 = one vCPU) and memory in MiB. Small on
#: purpose, since a run's cluster lives minutes; workers get the most memory because
#: they hold the data.
RUNNER_CPU = 1024
RUNNER_MEMORY = 2048
SCHEDULER_CPU = 1024
SCHEDULER_MEMORY = 2048
WORKER_CPU = 1024
WORKER_MEMORY = 4096
#: CPU architecture of rendered task definitions (the image is built for the host's).
CPU_ARCHITECTURE = "X86_64"
#: CloudWatch log group of rendered task definitions; ``{name}`` is the project name.
LOG_GROUP = "/flowrig/{name}"
#: Container health checks (seconds). The start period covers the image's imports
#: (about 5 s) with a wide margin, so a slow start is not counted as a failure.
HEALTH_INTERVAL = 30
HEALTH_TIMEOUT = 5
HEALTH_RETRIES = 3
HEALTH_START_PERIOD = 60
#: Open files per container: a scheduler holds one connection per worker and client.
NOFILE_LIMIT = 65535
#: Seconds an ``ecs``/``fargate`` cluster may take from the first AWS call until its
#: first worker has joined (exit 3 after that). Fargate needs about a minute per task to
#: pull the image and start; the rest is margin for capacity shortages.
PROVISION_TIMEOUT = 600.0
#: Prefix of the network ``flowrig ecs run-local`` makes for one invocation that names
#: none (``<prefix>-<run id>``, removed at its end), so two invocations never meet
#: unless they name one network with ``--network``.
RUN_LOCAL_NETWORK = "flowrig-ecs-local"

#: ``stopTimeout`` of a Spot worker's container: Fargate's longest, the two minutes of
#: Fargate Spot's notice (SIGTERM comes with it), so the worker can hand its work over.
SPOT_STOP_TIMEOUT = 120
#: Seconds a Spot worker's drain may take from SIGTERM (``FLOWRIG_DRAIN_SECONDS``): a
#: little less than :data:`SPOT_STOP_TIMEOUT`, so its supervisor ends it before the kill.
SPOT_DRAIN_SECONDS = 110
