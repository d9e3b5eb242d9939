"""The run's credentials for a Dask client that a task opens on its own cluster.

A task that opens a client of its own (``prefect_dask.get_dask_client()``,
``distributed.Client(get_client().scheduler.address)``) passes no ``security``; over
mutual TLS such a client has no certificate to present, and fails with "TLS expects a
``ssl_context`` argument of type ssl.SSLContext (perhaps check your TLS configuration?)
Instead got None". distributed asks a *security loader* (the public setting
``distributed.client.security-loader``) for the credentials of a client made without
any: :func:`load` answers with the credentials of the worker the task runs on, as a
client's, for that worker's own scheduler only. Every flowrig worker has the setting
(:data:`LOADER_ENV`, from the image's roles and the local backend's environment).

Fenced here (tests/e2e/local/test_internals.py checks both on the locked versions):

- a worker's ``Security`` is ``Worker.security``, and a client without ``security``
  calls the loader with ``{"address": ...}`` from the thread that makes it, where
  ``distributed.get_worker()`` is the task's worker;
- a worker started by ``dask worker --tls-cert/--tls-key`` holds its certificate only
  as ``tls_worker_cert``/``tls_worker_key`` (no client role), so a client made from it
  must be given the worker's certificate as its own.
"""

from __future__ import annotations

from typing import Any

#: The setting, as a dask config key and as the environment variable that sets it in a
#: process that imports dask afterwards (a role in a container).
LOADER_KEY = "distributed.client.security-loader"
LOADER_ENV = "DASK_DISTRIBUTED__CLIENT__SECURITY_LOADER"
#: Its value.
LOADER = "flowrig.internals.worker_security.load"


def current_worker() -> Any:
    """The Dask worker this code runs on (a task's thread, or the worker's loop), else ``None``."""
    try:
        from distributed import get_worker

        return get_worker()
    except (ImportError, ValueError):
        return None


def client_security(security: Any) -> Any:
    """``security`` (a role's ``distributed.Security``) as a client's: the same CA, TLS
    settings and certificate, whichever role the certificate was given for."""
    from distributed.security import Security

    cert = security.tls_client_cert or security.tls_worker_cert or security.tls_scheduler_cert
    key = (
        security.tls_client_key if security.tls_client_cert
        else security.tls_worker_key if security.tls_worker_cert
        else security.tls_scheduler_key
    )
    fields = {
        "tls_ca_file": security.tls_ca_file,
        "tls_ciphers": security.tls_ciphers,
        "tls_min_version": security.tls_min_version,
        "tls_max_version": security.tls_max_version,
        "tls_client_cert": cert,
        "tls_client_key": key,
        "extra_conn_args": security.extra_conn_args or None,
    }
    return Security(require_encryption=security.require_encryption,
                    **{name: value for name, value in fields.items() if value is not None})


def load(info: dict[str, Any]) -> Any:
    """distributed's security loader: the worker's credentials for a client that a task on
    it opens to its own scheduler; ``None`` (distributed's default) for anything else.

    Another address gets nothing: the run's certificate is not presented to a scheduler
    that is not the run's.
    """
    worker = current_worker()
    if worker is None or worker.scheduler is None:
        return None
    if info.get("address") != worker.scheduler.address:
        return None
    return client_security(worker.security)
