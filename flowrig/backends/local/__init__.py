"""``local``: a ``distributed.LocalCluster`` on this machine, over mutual TLS; and
``address``: a scheduler someone else started."""

from __future__ import annotations

import functools
import logging
import os
import time
from typing import Any, Mapping

from pydantic import Field, StrictBool, StrictFloat, StrictInt, StrictStr

from flowrig import layout
from flowrig.backends.base import CLUSTER_START_TIMEOUT, Backend, CloseOnce, ClusterSpec, Options, StartedCluster
from flowrig.backends.preflight import Check, PreflightPlan
from flowrig.common import runfolders
from flowrig.errors import BadInput, InfrastructureError, one_line
from flowrig.roles import PRIVATE_HTTP_PRELOAD

logger = logging.getLogger("flowrig.local")

#: Imported by the fork server before it forks the first worker.
WORKER_PRELOAD = "flowrig.backends.local.preload"


class LocalOptions(Options):
    """``[cluster.options]`` of the ``local`` backend: ``LocalCluster`` keywords."""

    memory_limit: StrictStr | StrictInt | None = Field(
        None, description="memory limit of each worker: bytes, `'4GiB'` or `'auto'` (LocalCluster's)"
    )
    dashboard_address: StrictStr | None = Field(
        None,
        description="serve the scheduler's dashboard at this address as distributed does: plain HTTP, no login, "
        "for whoever reaches it; default: over the run's TLS on 127.0.0.1, opened by the run's link",
    )
    worker_dashboard_address: StrictStr | None = Field(
        None,
        description="serve each worker's dashboard at this address as distributed does: plain HTTP, no login; "
        "default: none, and the workers' other HTTP routes over the run's TLS",
    )
    resources: dict[str, StrictFloat | StrictInt] | None = Field(
        None, description="abstract resources each worker offers to tasks that ask for them, e.g. `{ GPU = 1 }`"
    )
    silence_logs: StrictBool | StrictInt | None = Field(
        None, description="level of the cluster's own log lines (a logging level; false leaves logging as it is)"
    )
    timeout: StrictFloat | StrictInt | None = Field(None, description="seconds a worker may take to start")


class LocalBackend(Backend):
    """A scheduler and worker processes on this machine, listening on loopback only.

    Loopback is every local user's: their HTTP endpoints answer only the run's
    certificate, the dashboard reaches a browser through the run's proxy
    (:mod:`flowrig.dashboard`), and their scratch space is a private folder of the
    run's own (:mod:`flowrig.common.runfolders`).

    They fork from a server that has already imported what a first Prefect task
    imports; that server is a fork of the runner where possible
    (:mod:`flowrig.internals.forkserver`), else a fresh preloaded interpreter. The
    scheduler is a process of its own, as on the other backends
    (:mod:`flowrig.backends.local.scheduler`).
    """

    name = "local"
    options_model = LocalOptions
    takes_worker_groups = True
    group_refusals = {
        "cpu": "drop cpu (a local worker is a process of this machine, whose CPUs it shares), or run with "
        "--backend docker, which limits each container's CPUs",
        "gpu": "drop gpu, or run with --backend docker on an engine with a GPU runtime (the local backend gives "
        "no worker GPUs of its own)",
        "market": "drop market: the local backend runs every worker on this machine (market is for the cloud "
        "backends)",
    }

    def preflight(self, plan: PreflightPlan) -> list[Check]:
        """Nothing to check: the cluster is processes of this machine, made by the run."""
        self.parse_options(plan.options)
        return [Check("backend", "local", None, "the local backend runs on this machine and makes nothing "
                      "elsewhere: nothing to check")]

    def prepare(self) -> None:
        from flowrig.internals import forkserver

        forkserver.prepare(WORKER_PRELOAD)

    def start(self, spec: ClusterSpec) -> StartedCluster:
        from flowrig.backends.local.lives import LocalLives
        from flowrig.backends.local.scheduler import LocalClusterWithSchedulerProcess
        from flowrig.backends.watch import follow

        options = self.parse_options(spec.options)
        given = options.given()
        self.prepare()  # nothing more when the run already did
        # A dashboard address of the project's own is served as distributed serves it;
        # otherwise only over the run's TLS, opened to this machine's browser by the proxy.
        private_dashboard = "dashboard_address" not in given
        # The scratch space of the scheduler, the nannies and the workers (spilled data,
        # lock files; each node puts it first on its sys.path) is the run's own private
        # folder, never the $TMPDIR/dask-scratch-space any user can make first; removed
        # with the cluster, and one left by a killed run is a leftover.
        scratch = runfolders.make("scratch", spec.run_id)
        began = time.time()
        kwargs = _cluster_kwargs(spec, given, scratch)
        try:
            cluster = LocalClusterWithSchedulerProcess(private_http=private_dashboard, **kwargs)
        except Exception as exc:
            scratch.remove()
            raise InfrastructureError(f"the local cluster could not start: {one_line(exc)}") from None
        except BaseException:
            scratch.remove()
            raise
        proxy = scaling = None
        try:
            lives = LocalLives(cluster, began)
            follow(cluster, spec.on_news)
            if private_dashboard:
                proxy = open_dashboard(cluster, spec.tls)
                link = proxy.link
            else:
                link = cluster.dashboard_link
                logger.warning(
                    "the dashboard at %s is served without authentication ([cluster.options] "
                    "dashboard_address): anyone who can reach it sees the run's tasks and logs", link,
                )
            if spec.size.adapt:
                cluster.adapt(minimum=spec.size.adapt[0], maximum=spec.size.adapt[1])
            if spec.groups:
                scaling = _start_groups(cluster, spec, float(given.get("timeout") or CLUSTER_START_TIMEOUT))
        except BaseException:
            _close(cluster, proxy, scratch, scaling=scaling)
            raise
        return StartedCluster(
            scheduler_address=cluster.scheduler_address,
            dashboard_link=link,
            close=CloseOnce(functools.partial(_close, cluster, proxy, scratch, lives, scaling=scaling)),
            cluster=cluster,
            scheduler_up=cluster.scheduler_up_at,
            lives=lives.log.lives,
        )


def _cluster_kwargs(spec: ClusterSpec, given: dict[str, Any], scratch: Any) -> dict[str, Any]:
    """LocalCluster's arguments for a run: the project's options, then what a project
    may not drop (mutual TLS, the run's environment, its scratch folder)."""
    from flowrig.internals import forkserver, worker_security

    kwargs: dict[str, Any] = {
        # Worker groups are started once the cluster is up, each worker of its group's shape.
        "n_workers": 0 if spec.groups else spec.size.n_workers,
        "threads_per_worker": spec.worker_threads,
        "processes": True,
        "host": "127.0.0.1",
        # A fixed dashboard port collides between parallel runs; any free port will do.
        "dashboard_address": "127.0.0.1:0",
        **given,
    }
    if "worker_dashboard_address" not in given:
        # Workers serve HTTP (/metrics, /health) even without a dashboard: only to
        # holders of the run's certificate, as their Dask ports.
        # Given as an argument, a preload list replaces the workers' configured one:
        # the user's preloads (distributed.worker.preload) come first, as before.
        import dask

        configured = dask.config.get("distributed.worker.preload", default=None) or []
        kwargs["preload"] = [*([configured] if isinstance(configured, str) else configured), PRIVATE_HTTP_PRELOAD]
    # Mutual TLS, the run's environment and its scratch folder are not options a
    # project may drop.
    kwargs.update(
        protocol="tls://", security=spec.tls.to_security(), env=dict(spec.worker_env),
        worker_class=forkserver.nanny_class(), local_directory=str(scratch.path),
        scheduler_kwargs={"local_directory": str(scratch.path)},
        # A worker process takes the runner's dask config over the environment it
        # is given: settings that only workers have go here.
        config={worker_security.LOADER_KEY: worker_security.LOADER},
    )
    # The scheduler removes it when this process is killed before it could.
    kwargs["folder"] = str(scratch.path)
    if spec.no_client_timeout is not None:
        kwargs["no_client_timeout"] = spec.no_client_timeout
    return kwargs


def _start_groups(cluster: Any, spec: ClusterSpec, timeout: float) -> Any:
    """Start the workers of each worker group, named ``GROUP-N``, with the group's
    threads, resources and memory over the cluster's own worker template; wait until
    they have all joined; scale the adaptive groups with their demand
    (:mod:`flowrig.backends.group_scaling`). A lost worker starts again from its own
    spec, so in its group. Returns the groups' scaling."""
    from flowrig.backends.group_scaling import adapt_groups

    # SpecCluster's public template of a new worker (LocalCluster's options: TLS, the
    # run's environment and folder...), which each group's shape then changes.
    template = next(iter(cluster.new_worker_spec().values()))

    def worker_of(group: Any) -> dict[str, Any]:
        options = template.get("options", {})
        shape = {**options, "nthreads": group.threads,
                 "resources": {**(options.get("resources") or {}), **group.resources}}
        if group.memory_mib is not None:
            shape["memory_limit"] = f"{group.memory_mib}MiB"
        return {"cls": template["cls"], "options": shape}

    for group in spec.groups:
        for name in group.worker_names():
            cluster.worker_spec[name] = worker_of(group)
    cluster.scale(len(cluster.worker_spec))
    try:
        cluster.wait_for_workers(spec.size.n_workers, timeout=timeout)
    except TimeoutError:
        raise InfrastructureError(
            f"the local cluster's {spec.size.describe()} did not all join within {timeout:g} s"
        ) from None
    return adapt_groups(cluster, spec.groups, worker_of)


def open_dashboard(cluster: Any, tls: Any) -> Any:
    """Start the run's dashboard proxy (:mod:`flowrig.dashboard`) in front of the
    scheduler's dashboard, which answers only the run's certificate."""
    from flowrig.dashboard import DashboardProxy

    port = (cluster.scheduler_info or {}).get("services", {}).get("dashboard")
    if not port:
        raise InfrastructureError("the local scheduler serves no dashboard")
    context = tls.to_security().get_connection_args("client")["ssl_context"]
    proxy = DashboardProxy(f"https://127.0.0.1:{port}", context)
    proxy.start()
    return proxy


def _close(
    cluster: Any, proxy: Any, scratch: runfolders.RunFolder, lives: Any = None, *, scaling: Any = None
) -> None:
    """Stop scaling the worker groups, close the dashboard proxy and the cluster, then
    remove its scratch folder; a scheduler that already stopped on its own (its
    no-client rule) is not an error, though closing then cannot ask it to retire the
    workers."""
    try:
        if scaling is not None:
            scaling.stop()
        if proxy is not None:
            proxy.stop()
        cluster.close()
    except OSError:
        process = cluster.scheduler.process
        if process is None or process.exitcode is None:
            raise
    finally:
        if lives is not None:
            lives.closed()
        scratch.remove()


class AddressBackend(Backend):
    """``address``: a scheduler that is already running (``--scheduler-address``).

    The runner only connects; the cluster belongs to whoever started it.
    """

    name = "address"

    def roles_use_image_certificates(self, options: Mapping[str, Any]) -> bool:
        """The scheduler and its workers were started by someone else."""
        return True

    def prefect_api_hosts(self) -> tuple[str, str]:
        """In a runner container the workers are elsewhere: listen on all interfaces and
        advertise this container (``FLOWRIG_RUNNER_HOST``, else its own address); on a
        host machine stay on loopback."""
        from flowrig.common.net import own_address

        if not layout.in_image():
            return super().prefect_api_hosts()
        return "0.0.0.0", os.environ.get("FLOWRIG_RUNNER_HOST") or own_address()

    def start(self, spec: ClusterSpec) -> StartedCluster:
        address = spec.options.get("address")
        if not address or not str(address).startswith("tls://"):
            raise BadInput(
                f"the address backend needs a tls:// scheduler address, got {address!r}: "
                "pass --scheduler-address tls://HOST:8786"
            )
        return StartedCluster(scheduler_address=str(address), dashboard_link=None, close=lambda: None)
