"""Starting, observing and stopping a run's VMs: one :class:`~flowrig.backends.pool.Launcher`
for every cloud, over a :class:`~flowrig.backends.vm.cloud.Cloud`.

Each VM gets the cloud-init of its role (:mod:`.cloudinit`), checked for key material
before the cloud is asked for anything. VMs are named by flowrig, in advance
(``flowrig-RUN-scheduler``, ``flowrig-RUN-worker-N``): the name is the worker's Dask
name, so the scheduler's workers and the cloud's VMs match by name.
"""

from __future__ import annotations

import itertools
import logging
import time
from dataclasses import dataclass, field
from typing import Mapping, Sequence

from flowrig.backends.markets import FALLBACK, SpotSetting, fallback_line, markets_to_try, worker_markets
from flowrig.backends.placement import ON_DEMAND, SPOT, Placement
from flowrig.backends.pool import Endpoint, Launcher, Observed, WorkerStart
from flowrig.backends.vm import cloudinit, scheduler_reach
from flowrig.backends.vm.cloud import Cloud, VMRequest
from flowrig.backends.vm.cloudinit import RegistryLogin, TLSDelivery, VMRole
from flowrig.backends.vm.groups import VMGroup
from flowrig.errors import InfrastructureError
from flowrig.roles import DASHBOARD_PORT, NOTICE_ENV, SCHEDULER_PORT

logger = logging.getLogger("flowrig.vm")


@dataclass(frozen=True)
class RoleSettings:
    """What every VM of one run is started with (see :class:`~.cloudinit.VMRole`).

    Parameters
    ----------
    scheduler_args, worker_args
        The image's arguments of each role, a worker's without its scheduler and name.
    spot
        The workers' market (:mod:`flowrig.backends.markets`); the scheduler is never on Spot.
    """

    run_id: str
    image: str
    environment: Mapping[str, str] = field(default_factory=dict)
    tls: TLSDelivery = TLSDelivery()
    registry: RegistryLogin | None = None
    install_docker: bool = True
    worker_threads: int = 1
    no_client_timeout: float | None = None
    dashboard: bool = False
    scheduler_args: tuple[str, ...] = ()
    worker_args: tuple[str, ...] = ()
    spot: SpotSetting = False
    #: GPUs of each worker VM given to its container (and its Dask resource ``GPU``).
    worker_gpu: int = 0
    #: How each worker group's VMs start, by group (``[[cluster.worker_groups]]``).
    groups: Mapping[str, VMGroup] = field(default_factory=dict)

    def group(self, name: str = "") -> VMGroup:
        """How the workers of group ``name`` start (``""``: the run's workers, without groups)."""
        if name:
            return self.groups[name]
        return VMGroup("", self.worker_threads, tuple(self.worker_args), self.spot, self.worker_gpu)


def vm_name(run_id: str, role: str, index: int | None = None) -> str:
    """A VM's name: lower case, digits and dashes, as every cloud accepts."""
    return f"flowrig-{run_id}-{role}" + ("" if index is None else f"-{index}")


def scheduler_role(settings: RoleSettings) -> VMRole:
    """The scheduler VM's role."""
    return VMRole(
        run_id=settings.run_id,
        role="scheduler",
        name=vm_name(settings.run_id, "scheduler"),
        image=settings.image,
        command=cloudinit.scheduler_arguments(settings.no_client_timeout, settings.dashboard, settings.scheduler_args),
        # The scheduler runs no task: the workers' environment is theirs alone.
        tls=settings.tls,
        registry=settings.registry,
        install_docker=settings.install_docker,
    )


def worker_role(settings: RoleSettings, scheduler_address: str, name: str, notice: str | None = None,
                group: str = "") -> VMRole:
    """A worker VM's role (of worker group ``group``), joining ``scheduler_address`` as
    ``name``; a Spot VM's worker watches its cloud's ``notice`` (``ec2``, ``gcp``,
    ``azure``: :mod:`flowrig.roles.metadata`) and hands its work over before the VM is taken back."""
    kind = settings.group(group)
    environment = {**settings.environment, **({NOTICE_ENV: notice} if notice else {})}
    return VMRole(
        run_id=settings.run_id,
        role="worker",
        name=name,
        image=settings.image,
        command=cloudinit.worker_arguments(scheduler_address, name, kind.threads, kind.args),
        environment=environment,
        tls=settings.tls,
        registry=settings.registry,
        install_docker=settings.install_docker,
        gpus=kind.gpu > 0,
    )


def user_data(role: VMRole) -> str:
    """``role``'s cloud-init, refused when it holds key material."""
    text = cloudinit.render(role)
    cloudinit.check_user_data(text, f"the {role.role} VM {role.name}")
    return text


class VMLauncher(Launcher):
    """A run's VMs through one cloud.

    Parameters
    ----------
    cloud
        The cloud's API for this run (prepared already).
    settings
        What every VM is started with.
    deadline
        ``time.monotonic()`` by which the cluster must have started.
    reach_timeout
        Seconds a running scheduler VM may take to answer at its address at all.
    public_address
        Reach the scheduler at its public address (``use_private_ip = false``).
    """

    def __init__(
        self,
        cloud: Cloud,
        settings: RoleSettings,
        *,
        deadline: float,
        reach_timeout: float = scheduler_reach.REACH_TIMEOUT,
        public_address: bool = False,
    ) -> None:
        self.cloud = cloud
        self.settings = settings
        self.kind = cloud.kind
        self.deadline = deadline
        self.reach_timeout = reach_timeout
        self.public_address = public_address
        #: Worker numbers, by group: ``flowrig-RUN-worker-N``, ``flowrig-RUN-worker-GROUP-N``.
        self._numbers: dict[str, itertools.count] = {}
        #: The market and the worker group each worker VM was created in, by handle.
        self._markets: dict[str, str] = {}
        self._groups: dict[str, str] = {}
        #: Spot VMs whose creation failed for want of capacity after the create call had
        #: returned (the cloud's long-running operation): handle -> the cloud's reason.
        self._short: dict[str, str] = {}

    def start_scheduler(self) -> str:
        role = scheduler_role(self.settings)
        created = self.cloud.create([VMRequest(role.name, "scheduler", user_data(role))])
        if role.name not in created.started:
            reason = created.refused[0] if created.refused else "no reason given"
            raise InfrastructureError(f"{self.cloud.name} did not create the scheduler {self.kind}: {reason}")
        return created.started[role.name]

    def scheduler_endpoint(self, handle: str) -> Endpoint:
        private = self.cloud.private_address(handle)
        address = (self.cloud.public_address(handle) or private) if self.public_address else private
        if not address:
            raise InfrastructureError(f"the scheduler {self.kind} {handle} has no address")
        # Fail within minutes, with the layouts that work, when this runner is outside
        # the network; a VM that is still booting answers with a refusal already.
        scheduler_reach.wait_reachable(
            address, SCHEDULER_PORT, min(self.deadline, time.monotonic() + self.reach_timeout),
            f"the scheduler {self.kind}", self.cloud.network_description(),
        )
        return Endpoint(
            contact_address=f"tls://{private or address}:{SCHEDULER_PORT}",
            client_address=f"tls://{address}:{SCHEDULER_PORT}",
            dashboard_link=f"http://{address}:{DASHBOARD_PORT}/status" if self.settings.dashboard else None,
        )

    def start_workers(
        self, scheduler_address: str, count: int, replacing: Sequence[str] = (), group: str = ""
    ) -> WorkerStart:
        """Create ``count`` worker VMs (of worker group ``group``: its VM type, GPUs, market
        and Dask resources), each in its market (:mod:`flowrig.backends.markets`: a
        replacement of a lost worker of ``replacing`` in that worker's); with
        ``spot = "fallback"`` the ones the cloud had no capacity for are asked again in
        the other market, said in one line."""
        spot = self.settings.group(group).spot
        short = {handle: self._short.pop(handle) for handle in replacing if handle in self._short}
        # A replacement of a Spot VM that never ran for want of Spot capacity goes on-demand.
        markets = worker_markets(spot, count, [ON_DEMAND if handle in short else self._markets.get(handle)
                                               for handle in replacing])
        numbers = self._numbers.setdefault(group, itertools.count(1))
        role = f"worker-{group}" if group else "worker"
        names = [vm_name(self.settings.run_id, role, next(numbers)) for _ in markets]
        requests = [self._worker_request(scheduler_address, name, market, group)
                    for name, market in zip(names, markets)]
        if short:
            words = self.cloud.market_words
            logger.warning(fallback_line(len(short), f"worker {self.kind}", words[SPOT], words[ON_DEMAND],
                                         next(iter(short.values()))))
        created = self.cloud.create(requests)
        refused = list(created.refused)
        again: dict[str, list[VMRequest]] = {}
        for request in requests:
            tries = markets_to_try(spot, request.market)
            if request.name in created.short and len(tries) > 1:
                refused.remove(created.short[request.name])
                again.setdefault(request.market, []).append(
                    self._worker_request(scheduler_address, request.name, tries[1], group))
        words = self.cloud.market_words
        for market, moved in again.items():
            logger.warning(fallback_line(len(moved), f"worker {self.kind}", words[market], words[moved[0].market],
                                         created.short[moved[0].name], f" of group {group}" if group else ""))
        if again:
            retried = self.cloud.create([request for moved in again.values() for request in moved])
            created.started.update(retried.started)
            refused += retried.refused
        for request in [*requests, *(request for moved in again.values() for request in moved)]:
            if request.name in created.started:
                self._markets[created.started[request.name]] = request.market
                self._groups[created.started[request.name]] = group
        return WorkerStart(started=dict(created.started), refused=refused)

    def _worker_request(self, scheduler_address: str, name: str, market: str, group: str = "") -> VMRequest:
        role = worker_role(self.settings, scheduler_address, name, self.cloud.name if market == SPOT else None, group)
        kind = self.settings.group(group)
        return VMRequest(role.name, "worker", user_data(role), market=market, options=kind.options, gpu=kind.gpu)

    def placement(self, handle: str, role: str) -> Placement | None:
        """A worker VM's market (its shape is not read: no price)."""
        market = self._markets.get(handle) if role == "worker" else None
        return Placement(market=market) if market else None

    def observe(self, handles: list[str]) -> dict[str, Observed]:
        """The cloud's view of each VM; with ``spot = "fallback"``, a Spot VM whose creation
        failed for want of capacity after the create call returned (the clouds say so
        through the creation's long-running operation) is ``moved``: its replacement is
        asked on-demand, as a refusal of the create call itself would have been."""
        seen = self.cloud.observe(handles)
        for handle, state in seen.items():
            if self.settings.group(self._groups.get(handle, "")).spot != FALLBACK:
                continue
            if (state.status == "stopped" and self._markets.get(handle) == SPOT and not state.moved
                    and self.cloud.short_of_capacity(state.reason)):
                self._short[handle] = state.reason
                seen[handle] = Observed("stopped", state.reason, moved=True)
        return seen

    def stop(self, handles: list[str], reason: str) -> None:
        self.cloud.terminate(handles)
