"""Dask's HTTP endpoints served only to holders of the run's certificate.

Every Dask scheduler and worker serves HTTP besides its Dask port: the scheduler's
dashboard (call stacks with source paths, task keys, logs), and on every node
``/metrics``, ``/health`` and more, to anyone who can connect. distributed can serve
it over TLS (its ``distributed.scheduler.dashboard.tls.*`` settings, which every node
reads), but the context it builds from them asks no client for a certificate.
:func:`require_client_certificates` makes every node of this process serve its HTTP
with the listening context of its own ``Security`` instead: the run's leaf, trusting
only the run's CA, and a client certificate required, as on its Dask port.

Fenced here: ``distributed.node.ServerNode.start_http_server(routes,
dashboard_address, default_port=0, ssl_options=None)`` is where every node makes its
tornado ``HTTPServer`` (the scheduler in ``__init__``, a worker in its start), with
``ssl_options`` unless those settings name a certificate, and keeps it as
``self.http_server``; the node's ``security`` is set before it is called; a
preload module is imported while the node is built, before that call (so importing
:mod:`flowrig.roles.private_http` as a preload is early enough). tests/e2e/local/test_internals.py
checks each on a real scheduler and worker.
"""

from __future__ import annotations

import functools
import ssl
from typing import Any

_MARK = "_flowrig_requires_client_certificates"


def listening_context(node: Any) -> ssl.SSLContext:
    """The TLS context ``node`` listens with on its Dask port: the run's leaf, the
    run's CA, a client certificate required.

    Raises
    ------
    RuntimeError
        When the node has no certificate: its HTTP endpoints would be open to anyone,
        so it must not start them.
    """
    from distributed import Scheduler

    role = "scheduler" if isinstance(node, Scheduler) else "worker"
    context = node.security.get_listen_args(role).get("ssl_context")
    if not isinstance(context, ssl.SSLContext) or context.verify_mode != ssl.CERT_REQUIRED:
        raise RuntimeError(f"the {role} has no TLS certificate: it serves no HTTP without one")
    return context


def require_client_certificates() -> None:
    """From now on, every Dask node this process starts serves HTTP over mutual TLS.

    Idempotent. Where distributed's dashboard TLS settings name a certificate (they
    take precedence), that context is made to require client certificates too.
    """
    from distributed.node import ServerNode

    current = ServerNode.start_http_server
    if getattr(current, _MARK, False):
        return

    @functools.wraps(current)
    def start_http_server(
        self: Any, routes: Any, dashboard_address: Any, default_port: int = 0, ssl_options: Any = None
    ) -> Any:
        context = listening_context(self)
        result = current(self, routes, dashboard_address, default_port=default_port, ssl_options=context)
        served = getattr(self.http_server, "ssl_options", None)
        if served is not context:
            if not isinstance(served, ssl.SSLContext):
                raise RuntimeError("the node's HTTP server is not TLS: it must not serve")
            # Set before the event loop runs again: no connection was accepted yet.
            served.verify_mode = ssl.CERT_REQUIRED
        return result

    setattr(start_http_server, _MARK, True)
    ServerNode.start_http_server = start_http_server  # type: ignore[method-assign]


def requires_client_certificates(http_server: Any) -> bool:
    """Whether a node's HTTP server (``node.http_server``) asks every client for a
    certificate."""
    context = getattr(http_server, "ssl_options", None)
    return isinstance(context, ssl.SSLContext) and context.verify_mode == ssl.CERT_REQUIRED
