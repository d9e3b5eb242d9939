"""Cluster backends behind one small interface (:class:`~flowrig.backends.base.Backend`).

Owns: the interface (:class:`Backend`, :class:`ClusterSpec`, :class:`StartedCluster`),
the registry below, and each backend: ``local`` and ``address``
(:mod:`~flowrig.backends.local`), ``docker`` (:mod:`~flowrig.backends.docker`), ``ecs``
and ``fargate`` with their task definitions and run-local
(:mod:`~flowrig.backends.aws.ecs`), ``ec2`` (:mod:`~flowrig.backends.aws.ec2`), what
the AWS backends share (:mod:`~flowrig.backends.aws`), ``azure`` and ``gcp`` VMs and the
VM template ``ec2`` also fills in (:mod:`~flowrig.backends.vm`), and any cluster class by path
(:mod:`~flowrig.backends.classpath`). Every cloud backend records what a run creates in
one :class:`~flowrig.backends.ledger.Ledger` and removes it newest first.

A backend plugs in by subclassing :class:`Backend` (a name, an options model,
``start``) and adding a line to :data:`BACKENDS`; each module is imported only when
its backend is asked for.

May import: :mod:`flowrig.containers`, :mod:`flowrig.roles`, :mod:`flowrig.certs`,
:mod:`flowrig.project` (sizes), :mod:`flowrig.internals`, :mod:`flowrig.common`;
never :mod:`flowrig.run` or the CLI.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from flowrig.errors import BadInput

if TYPE_CHECKING:
    from flowrig.backends.base import Backend, ClusterSpec, Options, StartedCluster

#: name -> "module:Class" of the backend implementing it.
BACKENDS = {
    "local": "flowrig.backends.local:LocalBackend",
    "address": "flowrig.backends.local:AddressBackend",
    "docker": "flowrig.backends.docker:DockerBackend",
    "ecs": "flowrig.backends.aws.ecs:ECSBackend",
    "fargate": "flowrig.backends.aws.ecs:FargateBackend",
    "ec2": "flowrig.backends.aws.ec2.backend:EC2Backend",
    "azure": "flowrig.backends.vm.azure:AzureBackend",
    "gcp": "flowrig.backends.vm.gcp:GCPBackend",
}

__all__ = ["BACKENDS", "Backend", "ClusterSpec", "Options", "StartedCluster", "get_backend", "resolve_backend"]


def __getattr__(name: str) -> Any:
    # The interface imports pydantic: ``flowrig --help`` and the CLI's defaults go without.
    if name in ("Backend", "ClusterSpec", "Options", "StartedCluster"):
        from flowrig.backends import base

        return getattr(base, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def get_backend(name: str) -> "Backend":
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


def resolve_backend(backend: "str | Backend") -> "Backend":
    """``backend`` itself, or the backend its name names."""
    return get_backend(backend) if isinstance(backend, str) else backend


#: Backends chosen by an option of their own rather than by name.
IMPLIED = {"address": "--scheduler-address"}
#: How help texts and errors write "any cluster class".
CLASS_PATH = "package.module:ClusterClass"


def backend_choices() -> str:
    """The backends a run may name, as help texts list them (``local | docker | ...``)."""
    return " | ".join([*(name for name in BACKENDS if name not in IMPLIED), CLASS_PATH])
