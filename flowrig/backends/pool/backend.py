"""The start every cloud backend shares: :class:`PoolBackend`, and :class:`CloudRun`, the
one seam a cloud fills in.

:meth:`PoolBackend.start` is the template: the cloud's extra installed, an image named,
the options checked (all before the first API call), the preflight checks run when the
options ask for them (read-only calls: :meth:`PoolBackend.preflight`; a failure is exit 2
with nothing created), the provisioning deadline set, the run opened
(:meth:`PoolBackend.open_run`, which calls no creating API yet) and its shape checked
(:meth:`CloudRun.check`: GPUs and the image's architecture, read-only, always); then, in
order, the run's network and identity made (:meth:`CloudRun.prepare`), the run's
certificates stored where its roles read them (:meth:`CloudRun.store_certificates`), the
cloud's :class:`~flowrig.backends.pool.launcher.Launcher` made, and the
:class:`~flowrig.backends.pool.cluster.PoolCluster` started through it with its first
workers (:func:`start_pool`). On every way out of that (an error, a deadline, an
interrupt) :func:`close_run` stops the cluster and deletes everything the run made, and
the error is raised as flowrig's own: one line, the ``the NAME cluster could not start``
prefix on anything that is not flowrig's already.
"""

from __future__ import annotations

import abc
import functools
import importlib
import logging
import time
from typing import Any, ClassVar, Mapping

from flowrig.backends.base import Backend, CloseOnce, ClusterSpec, StartedCluster, dashboard_reach
from flowrig.backends.pool.adaptive import adapt_pool_groups
from flowrig.backends.pool.cluster import PoolCluster
from flowrig.backends.pool.launcher import Launcher, StartTimeout
from flowrig.backends.preflight import Check, PreflightPlan, failure_line, failures
from flowrig.backends.watch import follow
from flowrig.errors import BadInput, FlowrigError, InfrastructureError, one_line

logger = logging.getLogger("flowrig.pool")


class CloudRun(abc.ABC):
    """One run's resources in one cloud: made by :meth:`PoolBackend.open_run`, closed on
    every way out of the start and at the run's end.

    Each method blocks (it calls the cloud's API). The template calls them in order:
    :meth:`prepare`, :meth:`store_certificates` (when :attr:`needs_certificates`),
    :meth:`launcher`; :meth:`close` at the end, whichever of them ran.
    """

    #: Whose resources these are, in the message naming what could not be deleted ("AWS").
    provider: str = ""

    @property
    def needs_certificates(self) -> bool:
        """Whether the run's roles read the run's certificates from the cloud (else the
        image's baked files, or definitions of the project's own)."""
        return True

    def check(self) -> None:
        """Check the run's shape against the cloud (GPUs, the image's architecture),
        with read-only calls only: a mismatch is :class:`~flowrig.errors.BadInput`
        before anything is created, whether or not the preflight checks are on."""

    def prepare(self) -> None:
        """Make what the run's roles need before any is started: network rules, an
        identity, a cluster, a log group."""

    def store_certificates(self, line: str) -> str | None:
        """Put the run's certificate ``line`` where only the run's roles read it; the
        reference they read it by (``None``: nothing was stored)."""
        return None

    @abc.abstractmethod
    def launcher(self, secret_ref: str | None, deadline: float) -> Launcher:
        """The launcher of the run's roles, which read their certificates by
        ``secret_ref``; ``deadline`` (``time.monotonic()``) bounds its own waits."""

    @abc.abstractmethod
    def close(self) -> list[str]:
        """Delete everything the run made (after its roles were stopped); ``kind id`` of
        what could not be deleted."""

    def network_description(self) -> str:
        """The run's network in words, for where its dashboard opens from."""
        return "the run's network"


def close_run(cluster: PoolCluster | None, run: CloudRun) -> None:
    """Stop the run's roles, then delete everything of the run; a failure of one never
    skips the other, and what stays is logged once."""
    try:
        if cluster is not None:
            cluster.close()
    except Exception as exc:  # the run's own delete removes whatever is left
        logger.warning("closing the dask cluster failed: %s", one_line(exc))
    finally:
        leftovers = run.close()
        if leftovers:
            logger.error(
                "these %s resources of the run could not be deleted (they carry its tags): %s",
                run.provider, "; ".join(leftovers),
            )


class PoolBackend(Backend):
    """A backend whose roles a :class:`Launcher` starts in a cloud (ECS tasks, VMs); a
    cloud fills in :meth:`open_run` and the :class:`CloudRun` it returns."""

    #: flowrig's extra that brings the cloud's SDK, and the modules that tell it is there.
    extra: ClassVar[str]
    sdk_modules: ClassVar[tuple[str, ...]] = ()
    #: What the message asks for when a module is missing (default: the module's package).
    sdk_name: ClassVar[str | None] = None
    # Each group's workers start through the cloud's launcher with the group's name
    # (:meth:`~flowrig.backends.pool.launcher.Launcher.start_workers`).
    takes_worker_groups = True

    def require_extra(self) -> None:
        """The cloud's SDK is installed.

        Raises
        ------
        BadInput
            Naming the exact install command.
        """
        for module in self.sdk_modules:
            parts = module.split(".")
            try:
                # Every package on the way: a module imported once stays in sys.modules
                # when its package is gone (or blocked) since.
                for depth in range(1, len(parts) + 1):
                    importlib.import_module(".".join(parts[:depth]))
            except ImportError:
                raise BadInput(
                    f"the {self.name} backend needs {self.sdk_name or module.split('.')[0]}: "
                    f"pip install 'flowrig[{self.extra}]'"
                ) from None

    def options(self, raw: Mapping[str, Any], allowed_environment: frozenset[str] = frozenset()) -> Any:
        """``[cluster.options]`` parsed and checked, before anything is created;
        ``allowed_environment``: ``[build] allow_environment``."""
        return self.parse_options(raw)

    def preflight(self, plan: PreflightPlan) -> list[Check]:
        """The options checked as :meth:`start` checks them, then the cloud's own
        preflight checks (:meth:`cloud_preflight`)."""
        self.require_extra()
        options = self.options(plan.options, plan.allowed_environment)
        return self.cloud_preflight(plan, options)

    def cloud_preflight(self, plan: PreflightPlan, options: Any) -> list[Check]:
        """Read-only checks of what a run of ``plan`` with ``options`` needs in the cloud;
        by default none."""
        return Backend.preflight(self, plan)

    def _preflight_before_start(self, spec: ClusterSpec, options: Any) -> None:
        """The preflight checks of a run about to start: each failure logged on its own
        line, then exit 2 before anything is created."""
        size = spec.size
        plan = PreflightPlan(
            image=spec.image, options=spec.options, allowed_environment=spec.allowed_environment,
            max_workers=size.adapt[1] if size.adapt else size.n_workers, run_id=spec.run_id,
            groups=tuple(spec.groups),
        )
        failed = failures(self.cloud_preflight(plan, options))
        for check in failed:
            logger.error("preflight: %s", failure_line(check))
        if failed:
            raise BadInput(
                f"preflight: {len(failed)} check{'s' if len(failed) > 1 else ''} failed, nothing was created; "
                f"first: {failure_line(failed[0])} (flowrig preflight lists them all; "
                "[cluster.options] preflight = false skips them)"
            )

    @abc.abstractmethod
    def open_run(self, spec: ClusterSpec, options: Any) -> CloudRun:
        """The run's view of the cloud; no call that creates anything yet."""

    def start(self, spec: ClusterSpec) -> StartedCluster:
        """Make the run's resources, start the cluster, wait for its first workers, all
        within ``provision_timeout`` seconds; on any failure everything made is removed
        before the error is raised.

        Raises
        ------
        BadInput
            No image, the cloud's extra missing, invalid options, no credentials.
        InfrastructureError
            The cloud refusing, the scheduler out of reach, or the cluster not ready in time.
        """
        from flowrig.certs import delivery

        self.require_extra()
        if not spec.image:
            raise BadInput(f"the {self.name} backend needs an image: pass --image or build one with flowrig build")
        options = self.options(spec.options, spec.allowed_environment)
        if getattr(options, "preflight", False):
            self._preflight_before_start(spec, options)
        timeout = float(options.provision_timeout)
        deadline = time.monotonic() + timeout
        run = self.open_run(spec, options)
        run.check()
        cluster: PoolCluster | None = None
        try:
            run.prepare()
            secret_ref = None
            if run.needs_certificates:
                secret_ref = run.store_certificates(delivery.encode(spec.tls).decode().strip())
            launcher = run.launcher(secret_ref, deadline)
            cluster = start_pool(
                launcher, spec, backend=self.name, timeout=timeout, deadline=deadline,
                scheduler_address=options.scheduler_address,
            )
        except BaseException as exc:
            close_run(cluster, run)
            if isinstance(exc, (FlowrigError, KeyboardInterrupt)) or not isinstance(exc, Exception):
                raise
            raise InfrastructureError(f"the {self.name} cluster could not start: {one_line(exc)}") from None
        return StartedCluster(
            scheduler_address=cluster.scheduler_address,
            dashboard_link=cluster.dashboard_link or None,
            close=CloseOnce(functools.partial(close_run, cluster, run)),
            cluster=cluster,
            scheduler_up=cluster.scheduler_up_at,
            lives=cluster.life_log.lives,
            dashboard_reach=None if options.scheduler_address else dashboard_reach(
                options.dashboard, run.network_description()
            ),
        )


def start_pool(
    launcher: Launcher,
    spec: Any,
    *,
    backend: str,
    timeout: float,
    deadline: float,
    scheduler_address: str | None = None,
) -> PoolCluster:
    """Start ``spec``'s cluster through ``launcher`` and wait for its first workers.

    The scheduler (unless ``scheduler_address`` names a running one) and at least
    ``spec.start_minimum`` workers come up by ``deadline`` (``time.monotonic()``);
    ``timeout`` is that budget in seconds, for the messages. An adaptive cluster starts
    at its minimum, and so does each adaptive worker group, which then follows its own
    tasks' demand (:mod:`flowrig.backends.pool.adaptive`). On failure the cluster is
    closed (its roles stopped) before the error is raised; what the backend created besides is the caller's to remove.

    Raises
    ------
    InfrastructureError
        The cluster did not start, or had too few workers, in time.
    """
    initial = spec.size.adapt[0] if spec.size.adapt else spec.size.n_workers
    groups = {group.name: group.n_workers for group in getattr(spec, "groups", ())}
    try:
        cluster = PoolCluster(
            launcher,
            security=spec.tls.to_security(),
            n_workers=0,
            start_timeout=max(deadline - time.monotonic(), 0.0),
            scheduler_address=scheduler_address,
            name=f"flowrig-{spec.run_id}",
        )
    except StartTimeout as exc:
        raise InfrastructureError(
            f"the {backend} cluster did not start within {timeout:g} s ({exc}); "
            "everything created for the run is being removed"
        ) from None
    try:
        follow(cluster, getattr(spec, "on_news", None))
        if groups:
            cluster.scale_groups(groups)
        elif initial:
            cluster.scale(initial)
        if spec.size.adapt and not groups:
            cluster.adapt(minimum=spec.size.adapt[0], maximum=spec.size.adapt[1])
        if initial:
            try:
                cluster.wait_for_start(minimum=spec.start_minimum, timeout=max(deadline - time.monotonic(), 0.0))
            except StartTimeout as exc:
                raise InfrastructureError(
                    f"the {backend} cluster had no worker within {timeout:g} s ({exc}); "
                    "everything created for the run is being removed"
                ) from None
        # Each adaptive group now follows its own tasks' demand (it started at its minimum).
        cluster.group_adaptives = adapt_pool_groups(cluster, getattr(spec, "groups", ()))
    except BaseException:
        try:
            cluster.close()
        except Exception as exc:  # the backend's own teardown removes what is left
            logger.warning("closing the dask cluster failed: %s", one_line(exc))
        raise
    return cluster
