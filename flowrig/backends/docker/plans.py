"""The plan of each role's container on the docker backend, as data (pure).

:func:`render_scheduler`, :func:`render_worker` and :func:`render_runner` say what
each role's container looks like; :func:`flowrig.containers.engine.create_container`
is the one place that hands a plan to the Docker engine.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any, Iterable, Mapping

from flowrig import layout
from flowrig.backends.docker.naming import (
    ENV_IMAGE,
    ENV_NETWORK,
    ENV_RUN_ID,
    ENV_RUNNER_HOST,
    container_name,
    labels,
    network_name,
    scheduler_address,
)
from flowrig.containers import ContainerPlan, InjectedFile
from flowrig.containers.plans import FILES_DIR
from flowrig.project.defaults import WORKER_THREADS
from flowrig.roles import DASHBOARD_PORT, SCHEDULER_PORT

if TYPE_CHECKING:
    from flowrig.certs import TLSMaterial

#: Where a scheduler or worker container gets the run's TLS files; copied in before the
#: container starts, so they do not have to be the image's baked ones.
TLS_DIR = FILES_DIR
#: Modules a worker container imports before it joins the scheduler. The first Prefect
#: task on a worker would import them anyway; importing them at start-up overlaps that
#: with the runner's own start instead of delaying the flow's first tasks.
WORKER_PRELOAD = ("prefect.task_engine", "prefect_dask")
#: Host environment variables a runner container inherits when they are set.
PASSTHROUGH_ENV = ("PREFECT_API_URL", "PREFECT_API_KEY", "PREFECT_LOGGING_LEVEL", "FLOWRIG_DEBUG")
#: Path of the Docker socket inside a runner container (it starts the run's scheduler
#: and workers as sibling containers through it).
DOCKER_SOCKET = "/var/run/docker.sock"
#: Seconds the host gives a runner container to tear its cluster down after Ctrl-C or
#: SIGTERM, before everything of the run is removed by force.
RUNNER_STOP_TIMEOUT = 20


def tls_files(tls: "TLSMaterial") -> tuple[InjectedFile, ...]:
    """The run's certificates as files for a container; the key is for its user only."""
    return (
        InjectedFile(layout.CA_CERT, tls.ca_pem),
        InjectedFile(layout.LEAF_CERT, tls.cert_pem),
        InjectedFile(layout.LEAF_KEY, tls.key_pem, mode=0o600),
    )


def render_scheduler(
    run_id: str,
    image: str,
    network: str,
    *,
    tls: "TLSMaterial",
    publish: bool = False,
) -> ContainerPlan:
    """The scheduler container: the image's ``scheduler`` role on the run's network.

    Its dashboard is always published on the host's 127.0.0.1 (a port of its own), so a
    browser on the host opens it; the scheduler's port too when ``publish`` (a cluster
    driven from the host rather than from a container on the run's network).
    """
    name = container_name(run_id, "scheduler")
    return ContainerPlan(
        name=name,
        image=image,
        command=("scheduler", "--dashboard-address", f":{DASHBOARD_PORT}"),
        labels=labels(run_id, "scheduler"),
        environment={ENV_RUN_ID: run_id, "FLOWRIG_TLS_DIR": TLS_DIR},
        network=network,
        aliases=("scheduler",),
        publish=(SCHEDULER_PORT, DASHBOARD_PORT) if publish else (DASHBOARD_PORT,),
        files=tls_files(tls),
    )


def render_worker(
    run_id: str,
    image: str,
    network: str,
    worker: object,
    *,
    tls: "TLSMaterial",
    threads: int = WORKER_THREADS,
    environment: Mapping[str, str] | None = None,
    memory: str | None = None,
    preload: Iterable[str] = WORKER_PRELOAD,
) -> ContainerPlan:
    """A worker container: the image's ``worker`` role, connecting to the run's scheduler."""
    env = dict(environment or {})
    env.update({ENV_RUN_ID: run_id, "FLOWRIG_TLS_DIR": TLS_DIR})
    return ContainerPlan(
        name=container_name(run_id, "worker", worker),
        image=image,
        command=(
            "worker", scheduler_address(run_id),
            "--name", str(worker),
            "--nthreads", str(threads),
            *(item for module in preload for item in ("--preload", module)),
        ),
        labels=labels(run_id, "worker"),
        environment=env,
        network=network,
        files=tls_files(tls),
        memory=memory,
    )


def render_runner(
    run_id: str,
    image: str,
    *,
    parameters: Mapping[str, Any],
    output: str,
    verbosity: str = "normal",
    socket_path: str,
    socket_gid: int | None,
    environ: Mapping[str, str],
) -> ContainerPlan:
    """The runner container ``run_in_container`` starts on the host.

    It runs the image's baked project with the ``docker`` backend. Parameters travel as
    ``FLOWRIG_PARAMETERS`` (one JSON object), which the runner merges like a parameters
    file. ``environ`` is the host's environment; only
    :data:`PASSTHROUGH_ENV` is taken from it.
    """
    name = container_name(run_id, "runner")
    env = {k: environ[k] for k in PASSTHROUGH_ENV if environ.get(k)}
    env.update(
        {
            ENV_RUN_ID: run_id,
            ENV_NETWORK: network_name(run_id),
            ENV_IMAGE: image,
            ENV_RUNNER_HOST: name,
            "FLOWRIG_PARAMETERS": json.dumps(dict(parameters), separators=(",", ":")),
        }
    )
    return ContainerPlan(
        name=name,
        image=image,
        command=(
            "run", "--backend", "docker", "--output", output,
            *({"verbose": ("--verbose",), "quiet": ("--quiet",)}.get(verbosity, ())),
        ),
        labels=labels(run_id, "runner"),
        environment=env,
        network=network_name(run_id),
        aliases=("runner",),
        binds={socket_path: DOCKER_SOCKET},
        # The image runs as a non-root user: the socket's group lets it use Docker.
        group_add=(str(socket_gid),) if socket_gid is not None else (),
        stop_timeout=RUNNER_STOP_TIMEOUT,
    )
