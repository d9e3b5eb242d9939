"""What each Dask role runs: ports, TLS flags and the scheduler and worker command lines.

One builder of Dask TLS flags and role commands for every place that starts a role:
the entrypoint in the image, the docker backend's containers, ECS task definitions.

May import: :mod:`flowrig.errors` and :mod:`flowrig.layout` (no Dask: the commands are
data, the entrypoint execs them). :mod:`flowrig.roles.lifetime` is the exception: code
the scheduler itself runs, it imports distributed and :mod:`flowrig.internals`, and
nothing imports it but the scheduler (and the local backend's scheduler process);
so is :mod:`flowrig.roles.private_http`, a preload of schedulers and workers, and
:mod:`flowrig.roles.drain`, the supervisor a worker that may be stopped with notice
runs under (it imports distributed once a notice comes).
"""

from flowrig.roles.commands import (
    DASHBOARD_PORT,
    DRAIN_ENV,
    DRAIN_MODULE,
    LIFETIME_PRELOAD,
    NOTICE_ENV,
    PRIVATE_HTTP_PRELOAD,
    ROLE_ALIASES,
    SCHEDULER_MODULE,
    SCHEDULER_PORT,
    WORKER_DEATH_TIMEOUT,
    WORKER_MODULE,
    command_for,
    drained,
    scheduler_command,
    secure_environment,
    tls_dir,
    tls_flags,
    worker_command,
)

__all__ = [
    "DASHBOARD_PORT",
    "DRAIN_ENV",
    "DRAIN_MODULE",
    "LIFETIME_PRELOAD",
    "NOTICE_ENV",
    "PRIVATE_HTTP_PRELOAD",
    "ROLE_ALIASES",
    "SCHEDULER_MODULE",
    "SCHEDULER_PORT",
    "WORKER_DEATH_TIMEOUT",
    "WORKER_MODULE",
    "command_for",
    "drained",
    "scheduler_command",
    "secure_environment",
    "tls_dir",
    "tls_flags",
    "worker_command",
]
