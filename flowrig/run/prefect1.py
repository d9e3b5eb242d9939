"""A Prefect 1 style front end: :class:`DaskCloudProviderEnvironment`.

Users coming from Prefect 1's ``DaskCloudProviderEnvironment`` keep their arguments
and hooks; a run goes through the same code path as ``flowrig run``.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

from flowrig.project import defaults
from flowrig.run.config import RunConfig, RunOutcome
from flowrig.run.execute import execute
from flowrig.run.prepared import given_certificates


class DaskCloudProviderEnvironment:
    """Run Prefect 3 flows on a fresh, mutual-TLS Dask cluster per run.

    Parameters
    ----------
    provider_class
        A backend name (``"local"``, ``"docker"``, ``"ecs"``, ``"fargate"``), a
        ``"package.module:ClusterClass"`` path, or a ``distributed`` cluster class
        itself (as in Prefect 1, e.g. ``dask_cloudprovider.aws.FargateCluster``).
    adaptive_min_workers, adaptive_max_workers
        Adaptive range. Unlike Prefect 1, a minimum of ``0`` is honoured.
    security
        A :class:`flowrig.certs.TLSMaterial`, or a directory holding ``ca.crt``,
        ``tls.crt`` and ``tls.key``; ``None`` makes per-run certificates. TLS cannot be
        turned off.
    on_execute
        ``on_execute(parameters, provider_kwargs)``: may change ``n_workers`` or any
        provider option. Its errors fail the run; its sizes are clamped to
        ``[min_workers, max_workers]``.
    on_start, on_exit
        Called once the cluster is up, and after it is torn down.
    min_workers, max_workers
        Bounds for every size.
    image
        Image of the scheduler and workers (container backends).
    **provider_kwargs
        Options passed to the cluster class; ``n_workers`` sets a fixed size.

    Examples
    --------
    >>> env = DaskCloudProviderEnvironment("local", n_workers=2)   # doctest: +SKIP
    >>> outcome = env.run(my_flow, parameters={"x": [1, 2, 3]})    # doctest: +SKIP
    >>> outcome.result                                             # doctest: +SKIP
    """

    def __init__(
        self,
        provider_class: Any = defaults.BACKEND,
        adaptive_min_workers: int | None = None,
        adaptive_max_workers: int | None = None,
        security: Any = None,
        on_execute: Callable[[dict[str, Any], dict[str, Any]], Any] | None = None,
        on_start: Callable[[], Any] | None = None,
        on_exit: Callable[[], Any] | None = None,
        min_workers: int = defaults.MIN_WORKERS,
        max_workers: int = defaults.MAX_WORKERS,
        image: str | None = None,
        **provider_kwargs: Any,
    ) -> None:
        from flowrig.errors import BadInput

        if (adaptive_min_workers is None) != (adaptive_max_workers is None):
            # Prefect 1 treated a lone bound as "not adaptive"; say so instead of guessing.
            raise BadInput("set both adaptive_min_workers and adaptive_max_workers, or neither")
        self.backend = _backend_of(provider_class)
        self.adapt = (
            (adaptive_min_workers, adaptive_max_workers)
            if adaptive_min_workers is not None and adaptive_max_workers is not None
            else None
        )
        self.n_workers = provider_kwargs.pop("n_workers", None)
        self.tls = given_certificates(security)
        self.on_execute = on_execute
        self.on_start = on_start
        self.on_exit = on_exit
        self.min_workers = min_workers
        self.max_workers = max_workers
        self.image = image
        self.provider_kwargs = provider_kwargs

    def run(self, flow: Any, parameters: Mapping[str, Any] | None = None) -> RunOutcome:
        """Run ``flow`` once with ``parameters`` on a cluster of its own.

        Returns
        -------
        RunOutcome
            ``state``, ``result``, sizes, addresses and timings; call
            :meth:`RunOutcome.raise_for_state` to turn a failed run into an exception.
        """
        config = RunConfig(
            flow=flow,
            parameters=dict(parameters or {}),
            backend=self.backend,
            n_workers=self.n_workers,
            adapt=self.adapt,
            min_workers=self.min_workers,
            max_workers=self.max_workers,
            sizing_hook=self.on_execute,
            sizing_hook_name=getattr(self.on_execute, "__name__", "on_execute"),
            options=self.provider_kwargs,
            tls=self.tls,
            image=self.image,
            on_start=self.on_start,
            on_exit=self.on_exit,
        )
        # Resolved by prepare_config inside execute, under the run's stop guard: a
        # failure or a signal while the API starts still ends in on_exit.
        return execute(config)


def _backend_of(provider_class: Any) -> str:
    if isinstance(provider_class, str):
        return provider_class
    if isinstance(provider_class, type):
        known = {
            "dask_cloudprovider.aws.ecs.FargateCluster": "fargate",
            "dask_cloudprovider.aws.ecs.ECSCluster": "ecs",
            "distributed.deploy.local.LocalCluster": "local",
        }
        path = f"{provider_class.__module__}.{provider_class.__qualname__}"
        return known.get(path, f"{provider_class.__module__}:{provider_class.__qualname__}")
    raise TypeError(f"provider_class must be a name or a cluster class, got {provider_class!r}")
