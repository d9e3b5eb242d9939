"""``local``: a ``distributed.LocalCluster`` on this machine, over mutual TLS; and
``address``: a scheduler someone else started."""

from __future__ import annotations

import functools
import os
from typing import Any, Mapping

from pydantic import Field, StrictBool, StrictFloat, StrictInt, StrictStr

from flowrig import layout
from flowrig.backends.base import Backend, CloseOnce, ClusterSpec, Options, StartedCluster
from flowrig.common import runfolders
from flowrig.errors import BadInput, InfrastructureError, one_line

#: Imported by the fork server before it forks the first worker.
WORKER_PRELOAD = "flowrig.backends.local.preload"


class LocalOptions(Options):
    """``[cluster.options]`` of the ``local`` backend: ``LocalCluster`` keywords."""

    memory_limit: StrictStr | StrictInt | None = Field(
        None, description="memory limit of each worker: bytes, `'4GiB'` or `'auto'` (LocalCluster's)"
    )
    dashboard_address: StrictStr | None = Field(
        None, description="where the scheduler's dashboard listens; default: a free port on 127.0.0.1"
    )
    worker_dashboard_address: StrictStr | None = Field(
        None, description="where each worker's dashboard listens; default: none"
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

    They fork from a server that has already imported what a first Prefect task
    imports; that server is a fork of the runner where possible
    (:mod:`flowrig.internals.forkserver`), else a fresh preloaded interpreter. The
    scheduler is a process of its own, as on the other backends
    (:mod:`flowrig.backends.local.scheduler`).
    """

    name = "local"
    options_model = LocalOptions

    def prepare(self) -> None:
        from flowrig.internals import forkserver

        forkserver.prepare(WORKER_PRELOAD)

    def start(self, spec: ClusterSpec) -> StartedCluster:
        from flowrig.backends.local.scheduler import LocalClusterWithSchedulerProcess
        from flowrig.backends.watch import follow
        from flowrig.internals import forkserver, worker_security

        options = self.parse_options(spec.options)
        self.prepare()  # nothing more when the run already did
        # The workers' scratch space (spilled data, their lock files) is the run's own
        # folder, removed with the cluster; one left by a killed run is a leftover.
        scratch = runfolders.make("scratch", spec.run_id)
        kwargs: dict[str, Any] = {
            "n_workers": spec.size.n_workers,
            "threads_per_worker": spec.worker_threads,
            "processes": True,
            "host": "127.0.0.1",
            # A fixed dashboard port collides between parallel runs; any free port will do.
            "dashboard_address": "127.0.0.1:0",
            **options.given(),
        }
        # Mutual TLS and the run's environment are not options a project may drop.
        kwargs.update(
            protocol="tls://", security=spec.tls.to_security(), env=dict(spec.worker_env),
            worker_class=forkserver.nanny_class(), local_directory=str(scratch.path),
            # A worker process takes the runner's dask config over the environment it
            # is given: settings that only workers have go here.
            config={worker_security.LOADER_KEY: worker_security.LOADER},
        )
        # The scheduler removes it when this process is killed before it could.
        kwargs["folder"] = str(scratch.path)
        if spec.no_client_timeout is not None:
            kwargs["no_client_timeout"] = spec.no_client_timeout
        try:
            cluster = LocalClusterWithSchedulerProcess(**kwargs)
        except Exception as exc:
            scratch.remove()
            raise InfrastructureError(f"the local cluster could not start: {one_line(exc)}") from None
        except BaseException:
            scratch.remove()
            raise
        follow(cluster, spec.on_news)
        if spec.size.adapt:
            cluster.adapt(minimum=spec.size.adapt[0], maximum=spec.size.adapt[1])
        return StartedCluster(
            scheduler_address=cluster.scheduler_address,
            dashboard_link=cluster.dashboard_link,
            close=CloseOnce(functools.partial(_close, cluster, scratch)),
            cluster=cluster,
            scheduler_up=cluster.scheduler_up_at,
        )


def _close(cluster: Any, scratch: runfolders.RunFolder) -> None:
    """Close the cluster, then remove its scratch folder; a scheduler that already
    stopped on its own (its no-client rule) is not an error, though closing then cannot
    ask it to retire the workers."""
    try:
        cluster.close()
    except OSError:
        process = cluster.scheduler.process
        if process is None or process.exitcode is None:
            raise
    finally:
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
