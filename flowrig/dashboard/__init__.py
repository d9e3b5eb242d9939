"""The run's Dask dashboard, for the browser of the person who started the run.

Schedulers flowrig starts on this machine (local processes, docker containers) serve
their dashboard only over the run's mutual TLS; :class:`DashboardProxy` (in the process
the person started) opens it to a browser on this machine that holds the run's link.

May import: :mod:`flowrig.errors` and tornado.
"""

from flowrig.dashboard.proxy import TOKEN_PARAMETER, DashboardProxy

__all__ = ["DashboardProxy", "TOKEN_PARAMETER"]
