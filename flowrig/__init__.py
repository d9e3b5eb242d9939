"""flowrig: each Prefect flow run on its own short-lived, mutual-TLS Dask cluster.

The public Python API is small and loads lazily, so ``flowrig --help`` stays fast::

    from flowrig import DaskCloudProviderEnvironment, RunConfig, execute

Packages, from the command line down (each one's docstring says what it owns and what
it may import; ``lint-imports`` checks the directions):

- ``cli``, ``entrypoint``: the ``flowrig`` and ``flowrig-entrypoint`` commands;
- ``run``: the one run path;
- ``backends``, ``builder``: where clusters start, how images are built;
- ``api``, ``containers``, ``project``: the run's Prefect API, the Docker engine seam,
  a flow project;
- ``roles``, ``certs``, ``internals``: Dask role commands, certificates, and the fence
  around other projects' internals;
- ``common``, ``layout``, ``errors``: small pieces everything may use.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "DaskCloudProviderEnvironment": "flowrig.run.prefect1",
    "RunConfig": "flowrig.run.config",
    "RunOutcome": "flowrig.run.config",
    "execute": "flowrig.run.execute",
    "FlowrigError": "flowrig.errors",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'flowrig' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
