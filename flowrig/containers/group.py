"""A group of containers run together until the first essential one exits: the one
run-local loop.

``flowrig ecs run-local`` (a task definition's containers) and ``flowrig vm run-local``
(a VM's roles replayed) plan their containers their own way, then both hand them here
as :class:`Member` s, with the :class:`Network` s they join. :func:`run_group` does the
rest, always the same way:

1. the networks: one of the invocation's own is created (and removed at the end), one
   that invocations share is created when missing (and kept); ``host`` needs none;
2. every member is created, and its ``after_create`` check runs on it before anything
   starts (a check that refuses one leaves nothing running);
3. every member is started, its ``stdin`` written and then closed (it reads end of file);
4. with ``detach``, the names are printed and the containers kept; otherwise their logs
   are streamed, each line prefixed with the member's label;
5. the exit code of the first *essential* member to exit is returned, once its last log
   lines are through; non-essential members may exit before it, as in an ECS task;
6. whatever happened (an error, Ctrl-C, SIGTERM), every container created here and the
   invocation's own networks are removed, with signals held back until that is done.
"""

from __future__ import annotations

import queue
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Callable, Mapping, TextIO

from flowrig.common.signals import shielded, terminating
from flowrig.containers import engine
from flowrig.containers.plans import ContainerPlan

if TYPE_CHECKING:
    from docker import DockerClient
    from docker.models.containers import Container

#: Seconds the last log lines of the member that ended the group get to come through.
LAST_LINES_WAIT = 5.0
#: Seconds between looks at whether an essential member exited (the main thread stays
#: responsive to Ctrl-C meanwhile).
POLL = 0.5


@dataclass(frozen=True)
class Member:
    """One container of a group.

    Attributes
    ----------
    plan
        The container; its ``network`` is the name of a :class:`Network` of the group
        (or ``host``, or one that exists already).
    label
        What its log lines are prefixed with.
    essential
        The group ends when it exits.
    stdin
        Written to its stdin once it started, which is then closed (its plan needs
        ``stdin_open``): certificates that must never be in its configuration.
    after_create
        Called with the created (not started) container; raising refuses the member, and
        the group with it, before anything starts.
    """

    plan: ContainerPlan
    label: str
    essential: bool = True
    stdin: bytes | None = None
    after_create: Callable[["Container"], None] | None = None


@dataclass(frozen=True)
class Network:
    """A network members join, by name.

    Attributes
    ----------
    name
        The Docker network name members' plans give.
    own_run_id
        The network is this invocation's alone: created with this run id as its label,
        and at the end removed together with every container labelled with the run id
        (the id must be this invocation's own). ``None``: a network invocations share,
        created with ``labels`` when missing, and kept.
    labels
        Labels of a shared network this invocation creates.
    """

    name: str
    own_run_id: str | None = None
    labels: Mapping[str, str] = field(default_factory=dict)


def _check(members: list[Member]) -> None:
    if not any(member.essential for member in members):
        raise ValueError("a group needs an essential member, or it would never end")
    for member in members:
        if member.stdin is not None and not member.plan.stdin_open:
            raise ValueError(f"member {member.label} has stdin to write but its plan keeps stdin closed")


def _networks(client: "DockerClient", networks: list[Network]) -> dict[str, str]:
    """``name -> id`` of every network, created as each one asks."""
    ids = {}
    for network in networks:
        if network.own_run_id is not None:
            ids[network.name] = engine.create_network(client, network.name, network.own_run_id)
        else:
            ids[network.name] = engine.ensure_network(client, network.name, dict(network.labels))
    return ids


def _start(member: Member, container: "Container") -> None:
    engine.start_container(container)
    if member.stdin is not None:
        writer = engine.attach_stdin(container)
        try:
            writer.write(member.stdin)
        finally:
            writer.close()  # end of file: what it read is in its memory only


def _create(client: "DockerClient", members: list[Member], network_ids: dict[str, str],
            created: list["Container"]) -> None:
    """Create every member into ``created`` (as it goes: a failure leaves what to remove),
    each checked by its ``after_create`` before the next."""
    for member in members:
        # By id: the name may also be held by a spare network another invocation made.
        plan = replace(member.plan, network=network_ids.get(member.plan.network, member.plan.network))
        created.append(engine.create_container(client, plan))
        if member.after_create is not None:
            member.after_create(created[-1])


def _start_all(members: list[Member], created: list["Container"], pump: Any, out: TextIO, *,
               parallel: bool) -> None:
    """Start every member (at once, or one by one), following its logs with ``pump``."""
    if parallel:
        with ThreadPoolExecutor(max_workers=len(created)) as pool:
            for started in [pool.submit(_start, m, c) for m, c in zip(members, created)]:
                started.result()
    for member, container in zip(members, created):
        if not parallel:
            _start(member, container)
        if pump is not None:
            # A log stream begins at the container's first line, however late it is followed.
            pump.follow(container, member.label, both_to=out)


def _first_essential_exit(members: list[Member], created: list["Container"], pump: Any) -> int:
    """Wait for the first essential member to exit; its exit code."""
    labels = {member.plan.name: member.label for member in members}
    essential = {member.plan.name for member in members if member.essential}
    results = engine.first_exit(created)
    while True:
        try:
            name, code = results.get(timeout=POLL)
        except queue.Empty:
            continue
        if name in essential:
            if pump is not None:
                pump.join(timeout=LAST_LINES_WAIT, label=labels[name])
            return code


def run_group(
    client: "DockerClient",
    members: list[Member],
    networks: list[Network] | None = None,
    *,
    out: TextIO,
    detach: bool = False,
    parallel: bool = True,
) -> int:
    """Run ``members`` until the first essential one exits; its exit code.

    Parameters
    ----------
    client
        The engine (:func:`flowrig.containers.engine.connect`).
    members
        The containers, in the order they are created (and, without ``parallel``,
        started and followed).
    networks
        The networks members join that this call must create or find.
    out
        Where logs (or, with ``detach``, the containers' names) are written.
    detach
        Start the members, print their names one a line and return 0, leaving them
        running.
    parallel
        Start every member at once (a worker retries its scheduler until it listens);
        otherwise one after another, each one's logs followed as it starts, so the
        first lines come in the members' order.

    Raises
    ------
    BadInput, InfrastructureError
        From the engine or an ``after_create`` check; every container created by then
        is removed (and the own networks) before it propagates.
    """
    _check(members)
    networks = networks or []
    created: list[Container] = []
    keep = False
    with terminating():
        try:
            _create(client, members, _networks(client, networks), created)
            pump = None if detach else engine.LogPump(prefix=True)
            _start_all(members, created, pump, out, parallel=parallel)
            if detach:
                out.write("".join(f"{member.plan.name}\n" for member in members))
                out.flush()
                keep = True
                return 0
            return _first_essential_exit(members, created, pump)
        finally:
            if not keep:
                with shielded():
                    for container in created:
                        engine.remove_container(container)
                    for network in networks:
                        if network.own_run_id is not None:
                            engine.remove_run(client, network.own_run_id, network=True)
