"""The ``docker`` backend: checks ``[cluster.options]`` and starts a :class:`DockerCluster`."""

from __future__ import annotations

import functools
import logging
import os
import socket
from typing import Any, Mapping

from pydantic import Field, StrictInt, StrictStr, field_validator

from flowrig.backends.base import (
    CLUSTER_START_TIMEOUT,
    Backend,
    CloseOnce,
    ClusterSpec,
    Options,
    Seconds,
    StartedCluster,
    StringMap,
)
from flowrig.backends.docker import control
from flowrig.backends.docker.cluster import SCHEDULER_START_TIMEOUT, DockerCluster
from flowrig.backends.docker.group_workers import check_gpu_runtime
from flowrig.backends.docker.naming import ENV_IMAGE, ENV_NETWORK, ENV_RUNNER_HOST, check_run_id
from flowrig.backends.docker.plans import DRAIN_TIMEOUT
from flowrig.backends.preflight import Check, PreflightPlan
from flowrig.backends.usage import RoleLife
from flowrig.backends.watch import follow
from flowrig.common.environ import check_env_name
from flowrig.common.net import is_loopback_url
from flowrig.containers.engine import connect, require_image
from flowrig.errors import BadInput, InfrastructureError

logger = logging.getLogger("flowrig.docker")

class DockerOptions(Options):
    """``[cluster.options]`` of the ``docker`` backend."""

    worker_memory: StrictStr | StrictInt | None = Field(
        None, description="memory limit of each worker container, e.g. '2g'"
    )
    environment: StringMap = Field(
        default_factory=dict, description="table of extra environment variables for the workers (nothing secret)"
    )
    secrets: list[StrictStr] = Field(
        default_factory=list,
        description="names of variables of flowrig run's own environment handed to the runner and the "
        "workers over their stdin, never into the containers' configuration",
    )

    @field_validator("secrets")
    @classmethod
    def _names(cls, names: list[str]) -> list[str]:
        for name in names:
            check_env_name("secrets entry", name)
        return names
    scheduler_start_timeout: Seconds = Field(
        SCHEDULER_START_TIMEOUT, description="seconds the scheduler may take to start"
    )
    start_timeout: Seconds = Field(
        CLUSTER_START_TIMEOUT, description="seconds the cluster may take to get its first worker"
    )
    drain_timeout: Seconds = Field(
        DRAIN_TIMEOUT,
        description="seconds a worker container stopped mid-run (docker stop, SIGTERM) has to hand its "
        "work to the other workers before it is killed; a cluster's own teardown does not wait for it",
    )


def _check_options(options: Mapping[str, Any]) -> dict[str, Any]:
    """The docker backend's options, validated, as a dict (every key, defaults filled in)."""
    return DockerBackend().parse_options(options).model_dump()


class DockerBackend(Backend):
    """Scheduler and workers as containers of the run's image.

    In a runner container that :func:`~flowrig.run.in_container.run_in_container`
    started, it asks that host process for the cluster (:mod:`.control`): every role
    is then on the run's network, and the run's Prefect API listens there too. Used
    directly on a host (with access to Docker), it starts a :class:`DockerCluster` of
    its own network with the scheduler published on 127.0.0.1; workers then reach
    Prefect only through a ``PREFECT_API_URL`` that is not on loopback.
    """

    name = "docker"
    options_model = DockerOptions
    # On a host, the runner runs in a container of the image with no Docker socket,
    # and this process serves its requests for a cluster.
    runner_in_container = True
    takes_worker_groups = True
    group_refusals = {
        "market": "drop market: every worker of the docker backend runs on this machine's engine, which has no "
        "Spot market (market is for the cloud backends)",
    }
    group_options = frozenset({"drain_timeout"})

    def prefect_api_hosts(self) -> tuple[str, str]:
        """In a runner container: listen on all interfaces, advertise the container's name.

        Nothing is published to the host: only containers on the run's network can reach it.
        """
        if os.environ.get(ENV_NETWORK):
            return "0.0.0.0", os.environ.get(ENV_RUNNER_HOST) or socket.gethostname()
        return super().prefect_api_hosts()

    def preflight(self, plan: PreflightPlan) -> list[Check]:
        """The image on this machine's engine, of the engine's architecture."""
        from flowrig.backends.docker.preflight import docker_checks

        self.parse_options(plan.options)
        return docker_checks(PreflightPlan(**{**plan.__dict__, "image": plan.image or os.environ.get(ENV_IMAGE)}))

    def start(self, spec: ClusterSpec) -> StartedCluster:
        if control.controlled():
            return self._start_through_host(spec)
        image = spec.image or os.environ.get(ENV_IMAGE)
        if not image:
            raise BadInput("the docker backend needs an image: pass --image TAG (build one with flowrig build)")
        options = self.parse_options(spec.options)
        check_run_id(spec.run_id)
        network = os.environ.get(ENV_NETWORK) or None
        environment = {**spec.worker_env, **options.environment}
        if network is None and is_loopback_url(environment.get("PREFECT_API_URL")):
            logger.warning(
                "the docker backend runs outside a runner container: workers cannot reach the "
                "Prefect API at %s; use `flowrig run --backend docker` from the host, or set "
                "PREFECT_API_URL to a server the containers can reach",
                environment["PREFECT_API_URL"],
            )
        secrets = secret_environment(options.secrets, os.environ)
        client = connect()
        require_image(client, image)
        check_gpu_runtime(client, spec.groups)
        cluster = DockerCluster(
            image,
            n_workers=spec.size.n_workers,
            groups=spec.groups,
            run_id=spec.run_id,
            network=network,
            tls=spec.tls,
            worker_threads=spec.worker_threads,
            environment=environment,
            secret_environment=secrets,
            worker_memory=None if options.worker_memory is None else str(options.worker_memory),
            scheduler_start_timeout=float(options.scheduler_start_timeout),
            no_client_timeout=spec.no_client_timeout,
            drain_timeout=float(options.drain_timeout),
            client=client,
        )
        close = CloseOnce(functools.partial(_close_and_sweep, cluster))
        try:
            follow(cluster, spec.on_news)
            if spec.size.adapt:
                cluster.adapt(minimum=spec.size.adapt[0], maximum=spec.size.adapt[1])
            if spec.size.n_workers > 0:
                # Every worker it starts with; every group's, or a group's tasks could wait for ever.
                cluster.wait_for_first_workers(
                    spec.size.n_workers, float(options.start_timeout), all_of_them=bool(spec.groups)
                )
        except BaseException:
            close()
            raise
        return StartedCluster(
            scheduler_address=cluster.scheduler_address,
            dashboard_link=cluster.dashboard_link or None,
            close=close,
            cluster=cluster,
            scheduler_up=getattr(cluster.scheduler, "up_at", None),
            marks={k: at for k, at in cluster.start_marks.items() if k != "scheduler_up"},
            lives=cluster.life_log.lives,
        )


    def _start_through_host(self, spec: ClusterSpec) -> StartedCluster:
        """A runner container's cluster: the host starts it (this container has no
        Docker socket) and tears it down when asked, or when this runner has gone."""
        self.parse_options(spec.options)  # bad options fail here, in one line, first
        channel = control.runner_channel()
        channel.on_news = spec.on_news
        reply = channel.request(
            "start",
            control.START_REPLY_TIMEOUT,
            n_workers=spec.size.n_workers,
            adapt=list(spec.size.adapt) if spec.size.adapt else None,
            worker_threads=spec.worker_threads,
            options=dict(spec.options),
            worker_env=dict(spec.worker_env),
            no_client_timeout=spec.no_client_timeout,
            news=spec.on_news is not None,
            **({"groups": control.groups_message(spec.groups)} if spec.groups else {}),
        )

        told: list[RoleLife] = []

        def close() -> None:
            try:
                closed = channel.request("close", control.CLOSE_REPLY_TIMEOUT)
            except InfrastructureError as exc:
                # The host removes everything of the run when this runner exits anyway.
                logger.warning("the host did not confirm the cluster's teardown: %s", exc)
                return
            told.extend(control.lives_of(closed))

        marks = control.start_marks(reply)
        return StartedCluster(
            scheduler_address=str(reply["scheduler_address"]),
            dashboard_link=reply.get("dashboard_link") or None,
            scheduler_up=marks.pop("scheduler_up", None),
            marks=marks,
            close=CloseOnce(close),
            workers_joined=lambda: channel.workers_joined,
            lives=lambda: list(told),
        )


def secret_environment(names: list[str], environ: Mapping[str, str]) -> dict[str, str]:
    """The values of ``[cluster.options] secrets``, from ``environ`` (flowrig run's own).

    Raises
    ------
    BadInput
        A name that ``environ`` does not set.
    """
    missing = [name for name in names if name not in environ]
    if missing:
        raise BadInput(
            f"[cluster.options] secrets names {', '.join(missing)}, which the environment of flowrig run "
            "does not set: export them before the run (they reach the containers over their stdin)"
        )
    return {name: environ[name] for name in names}


def _close_and_sweep(cluster: DockerCluster) -> None:
    try:
        cluster.close()
    finally:
        # Even when the graceful close failed, nothing of the cluster may stay.
        cluster._sweep()
