"""The one interface each cloud implements for the VM backends (EC2, Azure, GCP).

A :class:`Cloud` is the run's view of one cloud's API: it creates what the run's VMs
need (network rules, an identity, the run's secret), creates, observes and deletes VMs,
and at the end deletes everything it created. Everything the clouds share (cloud-init,
names, deadlines, scaling, stop reasons) is in :mod:`.launcher` and :mod:`.backend`;
a cloud holds only its API calls. Each method blocks and may be called from threads.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Mapping

from flowrig.backends.placement import ON_DEMAND
from flowrig.backends.pool import Observed

if TYPE_CHECKING:
    from flowrig.backends.vm.cloudinit import RegistryLogin


@dataclass(frozen=True)
class VMRequest:
    """One VM to create.

    Parameters
    ----------
    name
        The VM's name, unique in the run (a worker's Dask name too).
    role
        ``scheduler`` or ``worker``: which size and rules apply.
    user_data
        Its rendered cloud-init (checked for key material already).
    market
        ``on-demand``, or ``spot``: the cloud's Spot or preemptible VMs (workers only).
    options
        The ``[cluster.options]`` its worker group sets otherwise (its VM type, boot
        image: the backend's ``group_options``); empty: the run's.
    gpu
        The worker's GPUs: its group's ``gpu``, else the run's ``worker_gpu``.
    """

    name: str
    role: str
    user_data: str
    market: str = ON_DEMAND
    options: Mapping[str, Any] = field(default_factory=dict)
    gpu: int = 0


@dataclass(frozen=True)
class Created:
    """What came of creating VMs: ``name -> handle`` of each, and a reason per VM not.

    ``short`` holds, by name, the reasons of the VMs refused for want of capacity in the
    market they were asked in (their reasons are in ``refused`` too): another market may
    have room for them.
    """

    started: dict[str, str] = field(default_factory=dict)
    refused: list[str] = field(default_factory=list)
    short: dict[str, str] = field(default_factory=dict)

    def refuse(self, name: str, reason: str, short: bool = True) -> None:
        """VM ``name`` was not created, for ``reason`` (``short``: its market lacked room)."""
        self.refused.append(reason)
        if short:
            self.short[name] = reason


class Cloud(abc.ABC):
    """One cloud's API, for one run.

    Parameters are the cloud's own (its options model, the run id, the tags); see the
    subclasses. :meth:`prepare` runs first, :meth:`delete` last, on every exit path.
    """

    #: The backend's name: ``ec2``, ``azure``, ``gcp``.
    name: ClassVar[str]
    #: What the cloud calls a VM, in messages ("instance", "VM").
    kind: ClassVar[str] = "instance"
    #: The markets in the words of the cloud's users, for the line a fallback is told in.
    market_words: ClassVar[Mapping[str, str]] = {"spot": "Spot", "on-demand": "on-demand"}

    #: The run's worker groups (:class:`~flowrig.backends.base.WorkerGroupSpec`), set
    #: before :meth:`check`: a cloud checks each group's VM type and GPUs too.
    worker_groups: tuple[Any, ...] = ()

    def check(self, image: str) -> None:
        """Check the run's VM types against ``image`` and the workers' GPUs, with
        read-only calls: a mismatch is :class:`~flowrig.errors.BadInput` before anything
        is created. Nothing is checked by default."""

    @abc.abstractmethod
    def prepare(self, dashboard: bool) -> None:
        """Create the network rules (the Dask ports open to the run's network only, the
        dashboard's only with ``dashboard``) and the identity the run's VMs use."""

    @abc.abstractmethod
    def store_certificates(self, line: str) -> str:
        """Put the run's certificate line into the cloud's secret store, readable by the
        run's VM identity only; the reference a VM reads it by."""

    def allow_registry(self, login: "RegistryLogin", image: str) -> None:
        """Let the run's VM identity pull ``image`` from the cloud's private registry
        (its VMs log in with that identity); nothing where the identity is the project's."""

    @abc.abstractmethod
    def create(self, requests: list[VMRequest]) -> Created:
        """Create the VMs of ``requests`` in as few calls as the API allows; raises only
        when the API refused the call itself (permissions, parameters)."""

    @abc.abstractmethod
    def observe(self, handles: list[str]) -> dict[str, Observed]:
        """The state of each VM: ``pending``, ``running`` or ``stopped`` (with the reason)."""

    def short_of_capacity(self, reason: str) -> bool:
        """Whether a stopped VM's ``reason`` (from :meth:`observe`) says its creation failed
        for want of capacity or quota in its market, after the create call had returned;
        never by default (the cloud refuses at the call)."""
        return False

    @abc.abstractmethod
    def private_address(self, handle: str) -> str:
        """The VM's address in the run's network."""

    def public_address(self, handle: str) -> str | None:
        """The VM's public address, when it has one."""
        return None

    @abc.abstractmethod
    def terminate(self, handles: list[str]) -> None:
        """Delete VMs; quiet about VMs that are gone already."""

    @abc.abstractmethod
    def delete(self) -> list[str]:
        """Delete every VM and resource of the run; what could not be deleted (``kind id``)."""

    def network_description(self) -> str:
        """The run's network in words, for the message when the runner cannot reach it."""
        return f"the run's {self.name} network"

    @staticmethod
    def labels(run_id: str, tags: Mapping[str, str]) -> dict[str, str]:
        """The tags every resource of the run carries."""
        return {**tags, "flowrig-run-id": run_id, "createdBy": "flowrig"}
