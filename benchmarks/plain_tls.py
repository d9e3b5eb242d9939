"""The floor's cluster: plain Dask on a mutual-TLS ``LocalCluster`` with a run's certificates.

The plain-Dask sides of the benchmarks (``bench_local``, ``bench_scale``, the patterns of
``scale_patterns`` and prefect-dask's own runner in ``server_runs``) are scripts run in a
process of their own; :func:`install` puts this module beside them, so each one makes the
same cluster with the same security, and only its work differs.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any


def security(certs: str) -> Any:
    """A ``distributed.Security`` from the certificate folder ``certs`` (``ca.crt``,
    ``tls.crt``, ``tls.key``: what ``flowrig certs`` writes), encryption required."""
    from distributed.security import Security

    cert, key = f"{certs}/tls.crt", f"{certs}/tls.key"
    return Security(
        tls_ca_file=f"{certs}/ca.crt", tls_client_cert=cert, tls_client_key=key,
        tls_scheduler_cert=cert, tls_scheduler_key=key, tls_worker_cert=cert, tls_worker_key=key,
        require_encryption=True,
    )


def cluster_kwargs(sec: Any, workers: int) -> dict[str, Any]:
    """``LocalCluster`` arguments: ``workers`` single-threaded worker processes over TLS."""
    return {"n_workers": workers, "threads_per_worker": 1, "protocol": "tls://", "security": sec,
            "host": "127.0.0.1", "dashboard_address": ":0"}


def tls_cluster(certs: str, workers: int) -> Any:
    """A ``LocalCluster`` of ``workers`` (use it as a context manager)."""
    from distributed import LocalCluster

    return LocalCluster(**cluster_kwargs(security(certs), workers))


def install(folder: Path) -> None:
    """Put this module in ``folder``, beside the scripts that import it."""
    shutil.copy(Path(__file__), Path(folder) / "plain_tls.py")
