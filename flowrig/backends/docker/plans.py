"""The plan of each role's container on the docker backend, as data (pure).

:func:`render_scheduler`, :func:`render_worker` and :func:`render_runner` say what
each role's container looks like; :func:`flowrig.containers.engine.create_container`
is the one place that hands a plan to the Docker engine.
"""

from __future__ import annotations

import math
from typing import Iterable, Mapping

from flowrig.backends.docker.control import CONTROL_ENV, CONTROL_PROTOCOL
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
from flowrig.certs.delivery import FROM_ENV
from flowrig.common.routes import resources_flag
from flowrig.containers import ContainerPlan
from flowrig.project.defaults import WORKER_THREADS
from flowrig.roles import DASHBOARD_PORT, DRAIN_ENV, PRIVATE_HTTP_PRELOAD, SCHEDULER_PORT

#: Modules a worker container imports before it joins the scheduler. The first Prefect
#: task on a worker would import them anyway; importing them at start-up overlaps that
#: with the runner's own start instead of delaying the flow's first tasks.
WORKER_PRELOAD = ("prefect.task_engine", "prefect_dask")
#: Host environment variables a runner container gets in its environment when they
#: are set (nothing secret: credentials go over its stdin, :mod:`.control`).
# FLOWRIG_STARTED_AT: the host command's start, from which the runner counts its
# timings.
PASSTHROUGH_ENV = ("PREFECT_API_URL", "PREFECT_LOGGING_LEVEL", "FLOWRIG_DEBUG", "FLOWRIG_STARTED_AT")
#: Seconds a runner container gets to stop when stopped from outside (``docker stop``).
RUNNER_STOP_TIMEOUT = 20
#: Seconds the host gives a runner container to end its flow run after Ctrl-C or
#: SIGTERM (it reports the end to a Prefect API of the user's own), while the cluster
#: is removed at once; then the runner is killed.
RUNNER_INTERRUPT_GRACE = 2
#: Every role's root file system is read-only; these are its memory file systems, where
#: nothing may be executed. No size: a worker spills to /tmp, and the pages count
#: against the container's memory (``worker_memory``) anyway. Prefect's home (it writes
#: profiles and a local result store) moves into one.
SCRATCH = {"/tmp": "rw,nosuid,nodev,noexec"}
PREFECT_HOME = "/tmp/prefect"
#: Where a worker's HTTP server listens: its container's own loopback.
WORKER_HTTP_ADDRESS = "127.0.0.1:0"
#: Seconds a worker container stopped mid-run has to hand its work over
#: (:mod:`flowrig.roles.drain`); ``docker stop`` then waits :data:`DRAIN_GRACE` more
#: before it kills the container.
DRAIN_TIMEOUT = 30
DRAIN_GRACE = 5
#: The most processes and threads each role may run: a worker's thread pool and
#: Prefect's own threads fit many times over; a fork bomb does not.
PIDS_LIMIT = {"scheduler": 256, "worker": 1024, "runner": 1024}


def hardening(role: str) -> dict[str, object]:
    """What every role container of the docker backend runs with: no capabilities, no
    privilege gain, a read-only root with memory scratch, a process limit, and stdin
    open for its certificates (and, for the runner, its control channel)."""
    return {
        "stdin_open": True,
        "read_only": True,
        "tmpfs": dict(SCRATCH),
        "cap_drop": ("ALL",),
        "security_opt": ("no-new-privileges:true",),
        "pids_limit": PIDS_LIMIT[role],
    }


def role_environment(run_id: str) -> dict[str, str]:
    """Environment every role container starts with (nothing secret in it)."""
    return {ENV_RUN_ID: run_id, FROM_ENV: "stdin", "PREFECT_HOME": PREFECT_HOME}


def render_scheduler(
    run_id: str,
    image: str,
    network: str,
    *,
    publish: bool = False,
    no_client_timeout: float | None = None,
) -> ContainerPlan:
    """The scheduler container: the image's ``scheduler`` role on the run's network.

    Its dashboard answers only the run's certificate (:mod:`flowrig.roles.private_http`)
    and is published on the host's 127.0.0.1 only (a port of its own), where the run's
    dashboard proxy opens it to the host's browser; the scheduler's port too when
    ``publish`` (the cluster is driven from the host). Its certificates arrive on stdin.
    It stops itself once no client has been connected for ``no_client_timeout``
    seconds (default: :data:`flowrig.roles.lifetime.NO_CLIENT_TIMEOUT`).
    """
    name = container_name(run_id, "scheduler")
    lifetime = () if no_client_timeout is None else ("--no-client-timeout", f"{no_client_timeout:g}")
    return ContainerPlan(
        name=name,
        image=image,
        command=(
            "scheduler", "--dashboard-address", f":{DASHBOARD_PORT}", "--preload", PRIVATE_HTTP_PRELOAD, *lifetime,
        ),
        labels=labels(run_id, "scheduler"),
        environment=role_environment(run_id),
        network=network,
        aliases=("scheduler",),
        publish=(SCHEDULER_PORT, DASHBOARD_PORT) if publish else (DASHBOARD_PORT,),
        **hardening("scheduler"),
    )


#: Docker's memory units (powers of 1024) as Dask writes them.
_DOCKER_UNITS = {"": "B", "b": "B", "k": "KiB", "kb": "KiB", "m": "MiB", "mb": "MiB", "g": "GiB", "gb": "GiB"}


def dask_memory_limit(memory: str) -> str:
    """A container's memory limit (Docker's syntax: ``"400m"``, bytes) as a Dask worker's
    ``--memory-limit``: one worker per container may use all of it. Dask's own
    ``auto`` would give it the container's limit times its share of the machine's
    cores, a half or less, and restart it long before the container is full."""
    text = str(memory).strip().lower()
    number = text.rstrip("bkmg")
    unit = _DOCKER_UNITS.get(text[len(number):])
    if not number or unit is None:
        return str(memory)  # Docker refuses it when the container is created
    return f"{number}{unit}"


def render_worker(
    run_id: str,
    image: str,
    network: str,
    worker: object,
    *,
    threads: int = WORKER_THREADS,
    environment: Mapping[str, str] | None = None,
    memory: str | None = None,
    preload: Iterable[str] = WORKER_PRELOAD,
    drain_timeout: float = DRAIN_TIMEOUT,
    resources: Mapping[str, float] | None = None,
    cpus: float | None = None,
    gpus: int = 0,
) -> ContainerPlan:
    """A worker container: the image's ``worker`` role, connecting to the run's scheduler.

    It serves no dashboard, and the HTTP server every worker runs anyway (``/metrics``,
    ``/health``) listens on the container's own loopback: nothing on the run's network
    or the host reaches it. Its certificates arrive on stdin. With ``memory`` (the
    container's limit), Dask's memory budget is the same. Stopped mid-run, it has
    ``drain_timeout`` seconds to hand its work over (:mod:`flowrig.roles.drain`), and
    ``docker stop`` waits that long and :data:`DRAIN_GRACE` more. ``resources`` are
    the Dask resources it offers (a worker group's, :mod:`flowrig.common.routes`);
    ``cpus`` its CPU limit and ``gpus`` the GPUs it is given (a worker group's shape).
    """
    env = dict(environment or {})
    env.update(role_environment(run_id))
    env[DRAIN_ENV] = f"{drain_timeout:g}"
    return ContainerPlan(
        name=container_name(run_id, "worker", worker),
        image=image,
        command=(
            "worker", scheduler_address(run_id),
            "--name", str(worker),
            "--nthreads", str(threads),
            "--no-dashboard",
            "--dashboard-address", WORKER_HTTP_ADDRESS,
            *(("--memory-limit", dask_memory_limit(memory)) if memory else ()),
            *(("--resources", resources_flag(resources)) if resources else ()),
            *(item for module in preload for item in ("--preload", module)),
        ),
        labels=labels(run_id, "worker"),
        environment=env,
        network=network,
        memory=memory,
        cpus=cpus,
        gpus=gpus,
        stop_timeout=math.ceil(drain_timeout) + DRAIN_GRACE,
        **hardening("worker"),
    )


def render_runner(
    run_id: str,
    image: str,
    *,
    output: str,
    verbosity: str = "normal",
    environ: Mapping[str, str],
    timeout: float | None = None,
    strict: bool | None = None,
) -> ContainerPlan:
    """The runner container ``run_in_container`` starts on the host.

    It runs the image's baked project with the ``docker`` backend, asking the host for
    its cluster (:mod:`.control`): it holds no Docker socket. Its certificates, the
    parameters and any credentials arrive on its stdin, so neither they nor the run's
    API credentials are in what ``docker inspect`` shows. ``environ`` is the host's
    environment; only :data:`PASSTHROUGH_ENV` is taken from it. ``timeout`` is the
    run's ``--timeout``, when one was given on the host; ``strict`` its strictness,
    when the host decided it (``None``: the image's project decides).
    """
    name = container_name(run_id, "runner")
    env = {k: environ[k] for k in PASSTHROUGH_ENV if environ.get(k)}
    env.update(role_environment(run_id))
    env.update(
        {
            ENV_NETWORK: network_name(run_id),
            ENV_IMAGE: image,
            ENV_RUNNER_HOST: name,
            CONTROL_ENV: CONTROL_PROTOCOL,
        }
    )
    return ContainerPlan(
        name=name,
        image=image,
        command=(
            "run", "--backend", "docker", "--output", output,
            *({"verbose": ("--verbose",), "quiet": ("--quiet",)}.get(verbosity, ())),
            *(("--timeout", f"{timeout:g}") if timeout is not None else ()),
            *(() if strict is None else ("--strict",) if strict else ("--no-strict",)),
        ),
        labels=labels(run_id, "runner"),
        environment=env,
        network=network_name(run_id),
        aliases=("runner",),
        stop_timeout=RUNNER_STOP_TIMEOUT,
        **hardening("runner"),
    )
