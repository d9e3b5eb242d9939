"""``local``: a ``distributed.LocalCluster`` on this machine, over mutual TLS."""

from __future__ import annotations

import os
import socket
from typing import Any

from flowrig.backends.base import Backend, ClusterSpec, StartedCluster
from flowrig.errors import BadInput, InfrastructureError

#: Imported by the fork server before it forks the first worker.
WORKER_PRELOAD = "flowrig.worker_preload"


def _fork_workers_from_preloaded_server() -> None:
    # Worker processes fork from a server that has imported what a first Prefect task
    # imports, instead of each importing it on that task. That server is a fork of the
    # runner where possible (see forked_forkserver), else a fresh interpreter that
    # imports it and starts with the first worker.
    import multiprocessing
    from multiprocessing import forkserver

    import dask
    from distributed.utils import get_mp_context

    from flowrig.backends import forked_forkserver

    dask.config.set({"distributed.worker.multiprocessing-method": "forkserver"})
    # distributed sets the fork server's preload list the first time it is asked for
    # the context; ask first, then extend that list, or it would replace ours.
    get_mp_context()
    preload = list(getattr(forkserver._forkserver, "_preload_modules", None) or ["distributed"])
    multiprocessing.get_context("forkserver").set_forkserver_preload(
        [WORKER_PRELOAD] + [m for m in preload if m != WORKER_PRELOAD]
    )
    forked_forkserver.start()


class LocalBackend(Backend):
    """Worker processes on this machine, listening on loopback only."""

    name = "local"

    def start(self, spec: ClusterSpec) -> StartedCluster:
        from distributed import LocalCluster

        _fork_workers_from_preloaded_server()
        options: dict[str, Any] = {
            "n_workers": spec.size.n_workers,
            "threads_per_worker": spec.worker_threads,
            "processes": True,
            "host": "127.0.0.1",
            # A fixed dashboard port collides between parallel runs; any free port will do.
            "dashboard_address": "127.0.0.1:0",
            **spec.options,
        }
        # Mutual TLS and the run's environment are not options a project may drop.
        options.update(protocol="tls://", security=spec.tls.to_security(), env=dict(spec.worker_env))
        try:
            cluster = LocalCluster(**options)
        except TypeError as exc:
            raise BadInput(f"[cluster.options] not accepted by LocalCluster: {exc}") from None
        except Exception as exc:
            raise InfrastructureError(f"the local cluster could not start: {exc}") from None
        if spec.size.adapt:
            cluster.adapt(minimum=spec.size.adapt[0], maximum=spec.size.adapt[1])
        return StartedCluster(
            scheduler_address=cluster.scheduler_address,
            dashboard_link=cluster.dashboard_link,
            close=cluster.close,
            cluster=cluster,
        )


class AddressBackend(Backend):
    """``address``: a scheduler that is already running (``--scheduler-address``).

    The runner only connects; the cluster belongs to whoever started it.
    """

    name = "address"

    def prefect_api_hosts(self) -> tuple[str, str]:
        """In a runner container the workers are elsewhere: listen on all interfaces and
        advertise this container (``FLOWRIG_RUNNER_HOST``, else its own address); on a
        host machine stay on loopback."""
        if not os.environ.get("FLOWRIG_IN_IMAGE"):
            return super().prefect_api_hosts()
        host = os.environ.get("FLOWRIG_RUNNER_HOST")
        if not host:
            try:
                host = socket.gethostbyname(socket.gethostname())
            except OSError:
                host = socket.gethostname()
        return "0.0.0.0", host

    def start(self, spec: ClusterSpec) -> StartedCluster:
        address = spec.options.get("address")
        if not address or not str(address).startswith("tls://"):
            raise BadInput(
                f"the address backend needs a tls:// scheduler address, got {address!r}: "
                "pass --scheduler-address tls://HOST:8786"
            )
        return StartedCluster(scheduler_address=str(address), dashboard_link=None, close=lambda: None)
