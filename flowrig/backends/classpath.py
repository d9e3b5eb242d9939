"""``package.module:ClusterClass``: the backend for any ``distributed`` cluster class."""

from __future__ import annotations

import asyncio
import importlib
import inspect
from typing import Any, Mapping

from flowrig.backends.base import CLUSTER_START_TIMEOUT, N_WORKERS_FIX, Backend, CloseOnce, ClusterSpec, StartedCluster
from flowrig.errors import BadInput, FlowrigError, InfrastructureError, one_line


def _accepts(cls: type, parameter: str) -> bool:
    """Whether ``cls(**{parameter: ...})`` reaches a constructor that names ``parameter``.

    Follows ``**kwargs`` up the class hierarchy, as subclasses such as
    ``FargateCluster(**kwargs)`` pass them on to ``SpecCluster(security=...)``.
    """
    for klass in cls.__mro__:
        init = klass.__dict__.get("__init__")
        if init is None:
            continue
        try:
            parameters = inspect.signature(init).parameters
        except (TypeError, ValueError):
            return False
        if parameter in parameters:
            return True
        if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
            return False
    return False


class ClassPathBackend(Backend):
    """``package.module:ClusterClass``: any :class:`distributed.deploy.Cluster` subclass.

    ``[cluster.options]`` become its keyword arguments; ``security=`` is added when the
    class accepts it, and the run's size is applied with ``scale()`` or ``adapt()``.

    Parameters
    ----------
    path
        ``package.module:ClusterClass``.
    """

    def __init__(self, path: str) -> None:
        self.path = path

    @property
    def name(self) -> str:  # type: ignore[override]
        """The class path, so that a run's output says which class ran."""
        return self.path

    def _load(self) -> type:
        from distributed.deploy import Cluster

        module_name, _, class_name = self.path.partition(":")
        if not module_name or not class_name:
            raise BadInput(f"backend {self.path!r} is not 'package.module:ClusterClass'")
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            raise BadInput(f"backend {self.path!r}: cannot import {module_name} ({one_line(exc)})") from None
        cls = getattr(module, class_name, None)
        if cls is None:
            raise BadInput(f"backend {self.path!r}: {module_name} has no {class_name}")
        if not (isinstance(cls, type) and issubclass(cls, Cluster)):
            raise BadInput(f"backend {self.path!r}: {class_name} is not a distributed Cluster class")
        return cls

    def roles_use_image_certificates(self, options: Mapping[str, Any]) -> bool:
        """A class that takes no ``security=`` cannot be given the run's certificates:
        the roles it starts can only have the image's."""
        return not _accepts(self._load(), "security")

    def start(self, spec: ClusterSpec) -> StartedCluster:
        """Construct the class, size it, and wait (bounded) for its first worker.

        Raises
        ------
        BadInput
            The path cannot be imported, is not a cluster class, or rejects the options.
        InfrastructureError
            The class fails to start, or no worker joins within
            :data:`flowrig.CLUSTER_START_TIMEOUT` seconds.
        """
        cls = self._load()
        options = dict(spec.options)
        if "n_workers" in options:
            raise BadInput(f"[cluster.options] n_workers: {N_WORKERS_FIX}")
        initial = spec.size.adapt[0] if spec.size.adapt else spec.size.n_workers
        if _accepts(cls, "security"):
            options["security"] = spec.tls.to_security()
        if _accepts(cls, "n_workers"):
            # Without it, classes such as LocalCluster start a default number of workers.
            options["n_workers"] = initial
        try:
            cluster = cls(**options)
        except TypeError as exc:
            raise BadInput(f"[cluster.options] not accepted by {self.path}: {one_line(exc)}") from None
        except FlowrigError:
            raise
        except Exception as exc:
            raise InfrastructureError(f"{self.path} could not start: {one_line(exc)}") from None
        close = CloseOnce(cluster.close)
        try:
            if spec.size.adapt:
                cluster.adapt(minimum=spec.size.adapt[0], maximum=spec.size.adapt[1])
            else:
                cluster.scale(initial)
            if initial:
                cluster.wait_for_workers(1, timeout=CLUSTER_START_TIMEOUT)
        except BaseException as exc:
            close()
            if isinstance(exc, (asyncio.TimeoutError, TimeoutError)):
                raise InfrastructureError(
                    f"{self.path} had no worker within {CLUSTER_START_TIMEOUT:g} s"
                ) from None
            if isinstance(exc, Exception):
                raise InfrastructureError(f"{self.path} could not start workers: {one_line(exc)}") from None
            raise
        return StartedCluster(
            scheduler_address=cluster.scheduler_address,
            dashboard_link=getattr(cluster, "dashboard_link", None) or None,
            close=close,
            cluster=cluster,
        )
