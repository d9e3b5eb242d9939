"""Cluster backends behind one small interface (:class:`~flowrig.backends.base.Backend`).

Backends are looked up by name, or by ``package.module:ClusterClass`` for any
``distributed`` cluster class; each module is imported only when it is asked for.
"""

from __future__ import annotations

import importlib

from flowrig.backends.base import Backend, ClusterSpec, StartedCluster
from flowrig.errors import BadInput

#: name -> "module:Class" of the backend implementing it.
BACKENDS = {
    "local": "flowrig.backends.local:LocalBackend",
    "address": "flowrig.backends.local:AddressBackend",
    "docker": "flowrig.backends.docker:DockerBackend",
    "ecs": "flowrig.backends.ecs:ECSBackend",
    "fargate": "flowrig.backends.ecs:FargateBackend",
}

__all__ = ["BACKENDS", "Backend", "ClusterSpec", "StartedCluster", "get_backend"]


def get_backend(name: str) -> Backend:
    """Return the backend called ``name``, or one wrapping the cluster class at a path.

    Raises
    ------
    BadInput
        When the name is unknown.
    """
    if name in BACKENDS:
        module, _, cls = BACKENDS[name].partition(":")
        return getattr(importlib.import_module(module), cls)()
    if ":" in name:
        from flowrig.backends.classpath import ClassPathBackend

        return ClassPathBackend(name)
    raise BadInput(
        f"unknown backend {name!r}: use one of {', '.join(sorted(BACKENDS))} "
        "or a cluster class as 'package.module:ClusterClass'"
    )
