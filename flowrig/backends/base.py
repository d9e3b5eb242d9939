"""The one small interface every cluster backend implements.

A backend turns a :class:`ClusterSpec` into a running Dask cluster and gives back a
:class:`StartedCluster`: the scheduler address the runner's client connects to and a
``close`` that tears everything down. Sizing, TLS and the Prefect API URL are decided
before a backend is called, so backends hold no policy of their own.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, ClassVar, Mapping

if TYPE_CHECKING:
    from flowrig.certs import TLSMaterial
    from flowrig.sizing import ClusterSize


@dataclass(frozen=True)
class ClusterSpec:
    """Everything a backend needs to start one run's cluster.

    Parameters
    ----------
    run_id
        Short unique id of the run; backends put it in names, labels and tags.
    size
        Fixed size or adaptive range, already validated and clamped.
    tls
        Certificates every role uses (mutual TLS is always on).
    image
        Container image for the scheduler and workers (container backends only).
    worker_env
        Environment every worker gets, e.g. ``PREFECT_API_URL`` of the run's API.
    options
        Backend-specific options from ``[cluster.options]``, passed through untouched.
    worker_threads
        Threads per worker.
    """

    run_id: str
    size: "ClusterSize"
    tls: "TLSMaterial"
    image: str | None = None
    worker_env: Mapping[str, str] = field(default_factory=dict)
    options: Mapping[str, Any] = field(default_factory=dict)
    worker_threads: int = 1


@dataclass
class StartedCluster:
    """A running cluster as the runner sees it.

    Parameters
    ----------
    scheduler_address
        ``tls://host:port`` the runner's client connects to.
    dashboard_link
        URL of the Dask dashboard, when the backend serves one.
    close
        Tears the cluster down; safe to call more than once.
    cluster
        The underlying ``distributed`` cluster object, when there is one.
    """

    scheduler_address: str
    dashboard_link: str | None
    close: Callable[[], None]
    cluster: Any = None


class Backend(abc.ABC):
    """Starts clusters of one kind."""

    #: Name used on the command line and in ``flowrig.toml``.
    name: ClassVar[str]

    def prefect_api_hosts(self) -> tuple[str, str]:
        """Where the runner's embedded Prefect API binds, and how workers reach it.

        Returns
        -------
        (bind_host, advertised_host)
            Loopback for in-process clusters; container backends override this.
        """
        return "127.0.0.1", "127.0.0.1"

    @abc.abstractmethod
    def start(self, spec: ClusterSpec) -> StartedCluster:
        """Start the cluster described by ``spec`` and wait until it can take work.

        Raises
        ------
        flowrig.errors.InfrastructureError
            When the cluster cannot start or does not become ready in time.
        flowrig.errors.BadInput
            When ``spec.options`` are invalid for this backend.
        """
