"""The cluster: :class:`DockerCluster`, a :class:`distributed.SpecCluster` of containers.

The scheduler and each worker are a :class:`distributed.deploy.spec.ProcessInterface`
living in one container; starting one creates its container, closing it removes it.
docker-py blocks, so every daemon call runs in a thread off the cluster's event loop.
"""

from __future__ import annotations

import asyncio
import functools
import time
from typing import TYPE_CHECKING, Any, Iterable, Mapping

from distributed.deploy.spec import ProcessInterface, SpecCluster
from distributed.utils import LoopRunner

from flowrig.backends.docker import lives
from flowrig.backends.docker.group_workers import group_worker, group_workers
from flowrig.backends.docker.naming import (
    check_run_id,
    container_name,
    network_name,
    new_run_id,
    scheduler_address,
)
from flowrig.backends.docker.plans import DRAIN_TIMEOUT, WORKER_PRELOAD, render_scheduler, render_worker
from flowrig.backends.docker.settings import RunSettings, in_thread
from flowrig.backends.group_scaling import adapt_groups
from flowrig.backends.lost_workers import keep_size
from flowrig.backends.watch import exit_text
from flowrig.certs import TLSMaterial, delivery
from flowrig.containers import ContainerPlan
from flowrig.containers.engine import (
    attach_stdin,
    connect,
    create_container,
    create_network,
    engine_resources,
    exit_state,
    published_port,
    remove_named,
    remove_run,
    run_containers,
    start_container,
    stop_and_remove,
    wait_for_log,
)
from flowrig.dashboard import DashboardProxy
from flowrig.errors import flowrig_cause
from flowrig.project.defaults import WORKER_THREADS
from flowrig.roles import DASHBOARD_PORT, SCHEDULER_PORT

if TYPE_CHECKING:
    from docker import DockerClient
    from docker.models.containers import Container

    from flowrig.backends.base import WorkerGroupSpec

#: What a scheduler logs once it listens; the scheduler is ready from then on.
SCHEDULER_READY = "Scheduler at:"
#: Seconds a scheduler container may take to log that it listens; imports alone take
#: about 5 s in the image, more on a busy machine.
SCHEDULER_START_TIMEOUT = 60.0
#: The signal a worker container gets first when its cluster stops it (a teardown, a
#: scale-down): its drain supervisor then stops it at once (:mod:`flowrig.roles.drain`),
#: where ``docker stop``'s SIGTERM from anyone else has it hand its work over first.
STOP_NOW_SIGNAL = "SIGINT"


def deliver_certificates(
    container: "Container", tls: TLSMaterial, environment: Mapping[str, str] | None = None
) -> None:
    """Hand a started role container its run's certificates (and secret ``environment``)
    over its stdin, which then closes: they live in the container's memory only
    (:mod:`flowrig.certs.delivery`)."""
    writer = attach_stdin(container)
    try:
        writer.write(delivery.encode(tls, environment))
    finally:
        writer.close()


class _ContainerProcess(ProcessInterface):
    """A Dask role living in one container; closing it removes the container."""

    #: The role whose life the container is (:mod:`flowrig.backends.usage`).
    role = "worker"
    #: Sent before ``docker stop`` when the cluster stops this role (``None``: none).
    stop_signal: str | None = None

    def __init__(self, settings: RunSettings) -> None:
        super().__init__()
        self.settings = settings
        self.container: "Container | None" = None

    async def _launch(self, plan: ContainerPlan, secrets: Mapping[str, str] | None = None) -> "Container":
        self.container = await in_thread(create_container, self.settings.client, plan)
        await in_thread(start_container, self.container)
        self.settings.started[plan.name] = time.perf_counter()
        await in_thread(lives.log_start, self.settings.lives, self.container, self.role, self.settings.host)
        await in_thread(deliver_certificates, self.container, self.settings.tls, secrets)
        return self.container

    async def close(self) -> None:
        if self.container is not None:
            log_end = functools.partial(lives.log_end, self.settings.lives)
            await in_thread(stop_and_remove, self.container, on_stopped=log_end, first_signal=self.stop_signal)
        await super().close()


class DockerScheduler(_ContainerProcess):
    """The scheduler container; ready once it logs that it listens."""

    role = "scheduler"

    def __init__(self, settings: RunSettings) -> None:
        super().__init__(settings)
        self.address = scheduler_address(settings.run_id)
        self.contact_address = self.address
        self.dashboard_address: str | None = None
        #: The run's dashboard proxy, in front of the scheduler's published dashboard.
        self.dashboard_proxy: Any = None
        #: When the scheduler logged that it listens (``time.perf_counter()``).
        self.up_at: float | None = None

    async def start(self) -> None:
        s = self.settings
        if s.own_network:
            await in_thread(create_network, s.client, s.network, s.run_id)
        plan = render_scheduler(s.run_id, s.image, s.network, publish=s.publish, no_client_timeout=s.no_client_timeout)
        container = await self._launch(plan)
        # The first workers start and import beside it, and connect by name once it listens.
        for name, options in s.first_workers.items():
            s.early[name] = asyncio.ensure_future(DockerWorker(self.address, name, **options).launch())
        try:
            await in_thread(wait_for_log, container, SCHEDULER_READY, s.scheduler_start_timeout, "scheduler")
        except BaseException:  # what they made goes with the run's other containers
            await asyncio.gather(*s.early.values(), return_exceptions=True)
            raise
        self.up_at = time.perf_counter()
        if s.publish:
            port = await in_thread(published_port, container, SCHEDULER_PORT)
            self.external_address = f"tls://127.0.0.1:{port}"
        # Published on the host's loopback, where it answers the run's certificate
        # only: the run's proxy opens it to a browser there (the link to print).
        dashboard = await in_thread(published_port, container, DASHBOARD_PORT)
        self.dashboard_proxy = DashboardProxy(
            f"https://127.0.0.1:{dashboard}", s.tls.to_security().get_connection_args("client")["ssl_context"]
        )
        self.dashboard_address = await in_thread(self.dashboard_proxy.start)
        await super().start()

    async def close(self) -> None:
        if self.dashboard_proxy is not None:
            await in_thread(self.dashboard_proxy.stop)
        await super().close()


class DockerWorker(_ContainerProcess):
    """One worker container. Ready as soon as it runs: the cluster waits for workers
    to join the scheduler, which is the readiness that counts.

    ``scheduler`` (what :class:`SpecCluster` passes) is not used: a worker always
    reaches the scheduler by its container name on the run's network.
    """

    # The cluster's own stop (a teardown, a scale-down) is no notice: no drain.
    stop_signal = STOP_NOW_SIGNAL

    def __init__(
        self, scheduler: str, name: object = None, *, settings: RunSettings, threads: int | None = None,
        resources: Mapping[str, float] | None = None, memory: str | None = None, cpus: float | None = None,
        gpus: int = 0, drain_timeout: float | None = None,
    ) -> None:
        super().__init__(settings)
        self.name = name
        #: A worker group's shape (:mod:`~flowrig.backends.docker.group_workers`); else the run's.
        self.threads = settings.worker_threads if threads is None else threads
        self.resources = dict(resources or {})
        self.shape = {"memory": memory or settings.worker_memory, "cpus": cpus, "gpus": gpus,
                      "drain_timeout": settings.drain_timeout if drain_timeout is None else drain_timeout}

    async def start(self) -> None:
        self.container = await (self.settings.early.pop(self.name, None) or self.launch())
        await super().start()

    async def launch(self) -> "Container":
        """Create and start this worker's container and hand it its certificates."""
        s = self.settings
        plan = render_worker(
            s.run_id, s.image, s.network, self.name,
            threads=self.threads, environment=s.environment, preload=s.worker_preload, resources=self.resources,
            **self.shape,
        )
        # A worker started again takes its predecessor's name: that container, given
        # up by the cluster, may still be on its way out (a stop waits for it).
        await in_thread(remove_named, s.client, plan.name)
        # Only workers run the flow's tasks: the scheduler gets no secret.
        return await self._launch(plan, s.secret_environment)


class DockerCluster(SpecCluster):
    """A Dask cluster whose scheduler and workers are containers of one flowrig image.

    A worker container that stops mid-run is replaced (:mod:`flowrig.backends.lost_workers`);
    the scheduler stops itself once no client has been connected for
    ``no_client_timeout`` seconds (:mod:`flowrig.roles.lifetime`).

    Parameters
    ----------
    image
        The image (built by ``flowrig build``); it must exist locally.
    n_workers
        Workers to start with; :meth:`adapt` and :meth:`scale` work as usual.
    groups
        Worker groups (:class:`~flowrig.backends.base.WorkerGroupSpec`) instead of
        ``n_workers``: a group's worker ``GROUP-N`` (container ``flowrig-RUN-worker-GROUP-N``)
        has its shape; a lost one starts again in its group; adaptive groups scale.
    run_id
        Names and labels of the containers; a new one when omitted.
    network
        A network of the caller's that the containers join. When omitted the cluster
        makes its own network and removes it again on close.
    publish
        Publish the scheduler's port on 127.0.0.1 and connect through it (a cluster
        driven from the host); default: when the cluster makes its own network.
    tls
        Certificates every role uses, handed to each container over its stdin at start.
        Default: new ones for this cluster.
    worker_threads
        Threads per worker.
    environment
        Environment of every worker (e.g. ``PREFECT_API_URL``), in its container's
        configuration: nothing secret.
    secret_environment
        Secrets of every worker, by name: delivered over its stdin with its
        certificates, never in its container's configuration.
    worker_memory
        Memory limit of each worker container, e.g. ``"2g"``.
    worker_preload
        Modules each worker imports before it joins (``--preload``).
    scheduler_start_timeout
        Seconds the scheduler may take to listen.
    no_client_timeout
        Seconds the scheduler stays up once no client is connected (default: the
        scheduler role's).
    drain_timeout
        Seconds a worker container stopped mid-run has to hand its work over
        (:mod:`flowrig.roles.drain`); the cluster's own close does not wait for it.
    client
        A ``docker.DockerClient``; default: from the environment.
    asynchronous, loop
        As for every ``distributed`` cluster.
    """

    def __init__(
        self,
        image: str,
        *,
        n_workers: int = 1,
        groups: "Iterable[WorkerGroupSpec]" = (),
        run_id: str | None = None,
        network: str | None = None,
        publish: bool | None = None,
        tls: "TLSMaterial | None" = None,
        worker_threads: int = WORKER_THREADS,
        environment: Mapping[str, str] | None = None,
        secret_environment: Mapping[str, str] | None = None,
        worker_memory: str | None = None,
        worker_preload: Iterable[str] = WORKER_PRELOAD,
        scheduler_start_timeout: float = SCHEDULER_START_TIMEOUT,
        no_client_timeout: float | None = None,
        drain_timeout: float = DRAIN_TIMEOUT,
        client: "DockerClient | None" = None,
        asynchronous: bool = False,
        loop: Any = None,
    ) -> None:
        run_id = check_run_id(run_id or new_run_id())
        client = client or connect()
        tls = TLSMaterial.for_run(tls)
        self.settings = RunSettings(
            client=client,
            run_id=run_id,
            image=image,
            network=network or network_name(run_id),
            tls=tls,
            own_network=network is None,
            publish=network is None if publish is None else publish,
            worker_threads=worker_threads,
            environment=dict(environment or {}),
            worker_memory=worker_memory,
            worker_preload=tuple(worker_preload),
            scheduler_start_timeout=scheduler_start_timeout,
            no_client_timeout=no_client_timeout,
            drain_timeout=drain_timeout,
            secret_environment=dict(secret_environment or {}),
            host=engine_resources(client),
        )
        self.run_id = run_id
        #: The lives of the cluster's containers (:mod:`flowrig.backends.usage`).
        self.life_log = self.settings.lives
        worker = {"cls": DockerWorker, "options": {"settings": self.settings}}
        groups = tuple(groups)
        workers = group_workers(worker, groups) or {i: worker for i in range(n_workers)}
        self.settings.first_workers.update({name: spec["options"] for name, spec in workers.items()})
        # A loop of our own when none is given, so that a failed start can stop it:
        # distributed's clusters leave theirs running when their start fails.
        self._own_loop = None
        if loop is None and not asynchronous:
            self._own_loop = LoopRunner(asynchronous=False)
            self._own_loop.start()
            loop = self._own_loop.loop
        try:
            super().__init__(
                workers=workers,
                scheduler={"cls": DockerScheduler, "options": {"settings": self.settings}},
                worker=worker,
                security=tls.to_security(),
                asynchronous=asynchronous,
                loop=loop,
                name=f"flowrig-{run_id}",
            )
        except BaseException as exc:
            # A failed start must not leave containers, a network or a loop thread.
            self._stop_own_loop()
            self._sweep()
            cause = flowrig_cause(exc)
            if cause is not None:
                raise cause from None
            raise
        #: Starts lost worker containers again (:mod:`flowrig.backends.lost_workers`).
        self.keeper = keep_size(self)
        #: Scales the adaptive worker groups (:mod:`flowrig.backends.group_scaling`).
        self.group_scaling = adapt_groups(self, groups, functools.partial(group_worker, worker))

    def _stop_own_loop(self) -> None:
        if self._own_loop is not None:
            self._own_loop.stop()

    def close(self, timeout: float | None = None) -> Any:
        """Remove every container of the cluster (and its network, when its own)."""
        self.group_scaling.stop()
        try:
            return super().close(timeout)
        finally:
            self._stop_own_loop()

    def _sweep(self) -> list[str]:
        s = self.settings
        roles = None if s.own_network else ("scheduler", "worker")
        return remove_run(s.client, s.run_id, roles=roles, network=s.own_network)

    def abort(self) -> list[str]:
        """Remove every container of the cluster at once (``docker rm -f``), asking
        nothing of its scheduler: a run that must end now. Nothing of it starts again.

        Returns
        -------
        list of str
            Names of what was removed.
        """
        # distributed's exit hook would otherwise wait for a graceful close.
        self.shutdown_on_close = False
        self.keeper.stop()
        self.group_scaling.stop()
        adaptive = getattr(self, "_adaptive", None)
        if adaptive is not None:
            self.loop.add_callback(adaptive.stop)
        return self._sweep()

    async def _close(self) -> None:
        try:
            await super()._close()
        finally:
            # Whatever the graceful close missed (a worker still starting, a failed start).
            await in_thread(self._sweep)

    @property
    def start_marks(self) -> dict[str, float]:
        """The start's timeline as far as it is known (``time.perf_counter()`` by mark):
        ``containers_started``, when the scheduler's container and those of the workers
        the cluster starts with had all started, and ``scheduler_up``, when it listened."""
        s = self.settings
        first = [container_name(s.run_id, "scheduler")]
        first += [container_name(s.run_id, "worker", name) for name in s.first_workers]
        marks = {}
        if all(name in s.started for name in first):
            marks["containers_started"] = max(s.started[name] for name in first)
        up = getattr(self.scheduler, "up_at", None)
        if up is not None:
            marks["scheduler_up"] = up
        return marks

    @property
    def dashboard_link(self) -> str:
        """The link to the run's dashboard proxy on the host's 127.0.0.1, with the run's
        token (``""`` when the scheduler serves no dashboard)."""
        if "dashboard" not in (self.scheduler_info or {}).get("services", {}):
            return ""
        return getattr(self.scheduler, "dashboard_address", None) or ""

    def lost_reason(self, name: str) -> str | None:
        """Why worker ``name``'s container ended (:mod:`flowrig.backends.watch`); ``None``
        while it runs. Blocks on the engine: call it off the cluster's loop."""
        worker = next((w for n, w in list(self.workers.items()) if str(n) == name), None)
        container = getattr(worker, "container", None)
        ended = exit_state(container) if container is not None else None
        if ended is None:
            return None
        code, oom = ended
        if oom:
            limit = getattr(worker, "shape", {}).get("memory") or self.settings.worker_memory
            return (f"out of memory: the kernel killed its container ({exit_text(code)}"
                    + (f", memory limit {limit})" if limit else ")"))
        return f"its container ended: {exit_text(code)}"

    def worker_containers(self) -> list["Container"]:
        """This cluster's worker containers, running or not."""
        return run_containers(self.settings.client, self.run_id, roles=("worker",))

    def wait_for_first_workers(self, n: int, timeout: float, *, all_of_them: bool = False) -> int:
        """Block until the ``n`` workers the cluster starts with have joined, or at least
        one has and the rest are late or gone (:mod:`flowrig.backends.docker.joining`);
        with ``all_of_them`` (worker groups, whose tasks only their own workers run),
        until all ``n`` have.

        Raises
        ------
        InfrastructureError
            When every worker container has exited before one joined, or too few joined
            within ``timeout`` seconds; the message holds a worker's last log lines.
        """
        from flowrig.backends.docker.joining import wait_for_workers

        return wait_for_workers(self, n, timeout, all_of_them=all_of_them)
