"""A Dask preload: this node's HTTP endpoints answer only the run's certificate holders.

``--preload flowrig.roles.private_http`` (or ``preload=[...]`` of a ``Scheduler`` or
``Worker``): the scheduler's dashboard, ``/metrics``, ``/health`` and every other HTTP
route of the node are served over mutual TLS with the run's certificates, as its Dask
port is (:mod:`flowrig.internals.http_tls`). A browser reaches the scheduler's
dashboard through the run's dashboard proxy (:mod:`flowrig.dashboard`), which holds
the run's client certificate.

Importing it is its whole effect: distributed imports a node's preloads while it
builds the node, before the node starts its HTTP server. It has no ``dask_setup``, so
it takes no command-line options and runs beside :mod:`flowrig.roles.lifetime`. Only
Dask roles import it (it imports distributed).
"""

from flowrig.internals.http_tls import require_client_certificates

require_client_certificates()
