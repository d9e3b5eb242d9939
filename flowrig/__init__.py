"""flowrig: each Prefect flow run on its own short-lived, mutual-TLS Dask cluster.

The public Python API is small and loads lazily, so ``flowrig --help`` stays fast::

    from flowrig import DaskCloudProviderEnvironment, RunConfig, execute
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "DaskCloudProviderEnvironment": "flowrig.compat",
    "RunConfig": "flowrig.runner",
    "RunOutcome": "flowrig.runner",
    "execute": "flowrig.runner",
    "FlowrigError": "flowrig.errors",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'flowrig' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
