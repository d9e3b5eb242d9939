"""A run's lease: the time until which its AWS resources are known to be in use.

``flowrig aws leftovers`` must tell a run that is over from one that is still going,
also when the runner is a laptop (no ECS task of its own to look at). So every
resource a run creates carries :data:`LEASE_TAG`, an expiry time in UTC, from its
creation on (:func:`initial_tags`), and while the run lives :class:`LeaseRenewer`
pushes that time forward on one of them every :func:`renew_interval` seconds. A run
whose newest lease has expired is over: its runner stopped renewing, which a
``kill -9``, an OOM kill or a lost laptop all do.

The lease is an absolute time on the runner's clock; a clock that runs ahead or behind
the one of whoever lists leftovers shifts it, which ``--older-than`` absorbs.
"""

from __future__ import annotations

import logging
import os
import threading
from datetime import datetime, timedelta, timezone
from typing import Any, Mapping, Protocol

# Lease readers take the tag from here, where the lease is explained.
from flowrig.backends.aws.names import LEASE_TAG as LEASE_TAG
from flowrig.common.environ import positive_seconds
from flowrig.errors import one_line

logger = logging.getLogger("flowrig.ecs")

#: ISO 8601 in UTC to the second: allowed in the tag values of every service flowrig tags.
TIME_FORMAT = "%Y-%m-%dT%H:%M:%SZ"
#: Seconds a lease lasts unless ``FLOWRIG_AWS_LEASE_SECONDS`` says otherwise. Five
#: minutes: several renewals may fail (throttling, a slow network) before it lapses,
#: and leftovers of a killed run are found a few minutes later.
LEASE_SECONDS = 300.0
LEASE_SECONDS_ENV = "FLOWRIG_AWS_LEASE_SECONDS"
#: Renewals per lease: a lease outlives this many renewal periods.
RENEWALS_PER_LEASE = 5
#: Kinds of a run's own resources that can hold the renewed lease, preferred first:
#: the cluster and security group live as long as the run and are tagged in place; an
#: ``ec2`` run given its security groups holds it on its live instances.
HOLDER_KINDS = ("cluster", "security-group", "task-definition", "instance")


def lease_seconds() -> float:
    """How long a lease lasts: ``FLOWRIG_AWS_LEASE_SECONDS``, else :data:`LEASE_SECONDS`.

    Raises
    ------
    BadInput
        When the variable is not a number of seconds greater than zero.
    """
    return positive_seconds(os.environ, LEASE_SECONDS_ENV, LEASE_SECONDS)


def renew_interval(seconds: float) -> float:
    """Seconds between two renewals of a lease lasting ``seconds``."""
    return seconds / RENEWALS_PER_LEASE


def format_time(moment: datetime) -> str:
    """``moment`` as a tag value (:data:`TIME_FORMAT`)."""
    return moment.astimezone(timezone.utc).strftime(TIME_FORMAT)


def parse_time(value: str) -> datetime | None:
    """A tag value written by :func:`format_time`; ``None`` for anything else."""
    try:
        return datetime.strptime(value, TIME_FORMAT).replace(tzinfo=timezone.utc)
    except (TypeError, ValueError):
        return None


def lease_until(tags: Mapping[str, str]) -> datetime | None:
    """The lease a resource's tags hold, if they hold a readable one."""
    return parse_time(tags[LEASE_TAG]) if LEASE_TAG in tags else None


def initial_tags(seconds: float, now: datetime | None = None) -> dict[str, str]:
    """The lease tag every resource of a run is created with: ``seconds`` from ``now``.

    Being on every resource from its creation, a run killed before its first renewal
    still has a lease.
    """
    now = now or datetime.now(timezone.utc)
    return {LEASE_TAG: format_time(now + timedelta(seconds=seconds))}


class _Clients(Protocol):
    def client(self, service: str) -> Any: ...


class LeaseHolders(Protocol):
    """What a lease is renewed on: a run's resources
    (:class:`~flowrig.backends.aws.resources.RunResources` is one), read, never changed."""

    @property
    def aws(self) -> _Clients:
        """The session every renewal call uses."""

    @property
    def created(self) -> list[tuple[str, str]]:
        """``(kind, id)`` of what the run made so far, oldest first."""

    @property
    def task_sources(self) -> list[tuple[str, str]]:
        """``(cluster ARN, startedBy)`` of the tasks the run started."""


class LeaseRenewer:
    """Renews a run's lease on one of its resources until :meth:`stop`.

    The holder is the first of the run's own resources (:attr:`LeaseHolders.created`)
    of the kinds in :data:`HOLDER_KINDS` (a run that made none renews it on its running
    tasks); before any exists there is nothing to renew, and the lease every resource
    is created with still holds. Renewal failures are
    logged, never raised: the run goes on, and its lease may lapse early.

    Parameters
    ----------
    resources
        The run's resources (their session is used).
    seconds
        How long each renewal extends the lease.
    """

    def __init__(self, resources: LeaseHolders, seconds: float) -> None:
        self.resources = resources
        self.seconds = seconds
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def holder(self) -> tuple[str, str] | None:
        """``(kind, id)`` of the resource that holds the lease, if the run has one yet."""
        created = self.resources.created
        for kind in HOLDER_KINDS:
            for found_kind, ident in created:
                if found_kind == kind:
                    return kind, ident
        return None

    def renew(self, now: datetime | None = None) -> list[tuple[str, str]]:
        """Extend the lease once; returns the ``(kind, id)`` of what now holds it.

        When the run made none of :data:`HOLDER_KINDS` (the project named its cluster,
        security group and task definitions), its running tasks hold the lease, one
        call each: the tasks are then all of the run there is to judge.
        """
        value = initial_tags(self.seconds, now)[LEASE_TAG]
        holder = self.holder()
        if holder is not None:
            kind, ident = holder
            try:
                if kind in ("security-group", "instance"):
                    self._client("ec2").create_tags(Resources=[ident], Tags=[{"Key": LEASE_TAG, "Value": value}])
                else:  # an ECS cluster or task definition, by ARN
                    self._tag_ecs(ident, value)
            except Exception:
                if holder in self.resources.created:
                    raise
                return []  # deleted meanwhile by the run's teardown: nothing left to hold
            return [holder]
        renewed = []
        for cluster_arn, started_by in self.resources.task_sources:
            pages = self._client("ecs").get_paginator("list_tasks").paginate(
                cluster=cluster_arn, startedBy=started_by, desiredStatus="RUNNING"
            )
            for arn in [arn for page in pages for arn in page["taskArns"]]:
                self._tag_ecs(arn, value)
                renewed.append(("task", arn))
        return renewed

    def _tag_ecs(self, arn: str, value: str) -> None:
        self._client("ecs").tag_resource(resourceArn=arn, tags=[{"key": LEASE_TAG, "value": value}])

    def _client(self, service: str) -> Any:
        return self.resources.aws.client(service)

    def start(self) -> "LeaseRenewer":
        """Renew in a daemon thread every :func:`renew_interval` seconds; returns self."""
        # Clients are made here, in the caller's thread: botocore does not make clients
        # safely from two threads at once, while calls on a made client are safe.
        self._client("ec2")
        self._client("ecs")
        self._thread = threading.Thread(target=self._loop, name="flowrig-lease", daemon=True)
        self._thread.start()
        return self

    def _loop(self) -> None:
        failures = 0
        while not self._stop.wait(renew_interval(self.seconds)):
            try:
                self.renew()
                failures = 0
            except Exception as exc:  # the run matters more than its lease
                failures += 1
                # One renewal is left before the lease lapses: say so loudly, once.
                lapsing = failures == RENEWALS_PER_LEASE - 1
                logger.log(
                    logging.ERROR if lapsing else logging.WARNING,
                    "could not renew the run's lease%s (once it lapses, `flowrig aws leftovers` "
                    "counts the run as over; check ecs:TagResource and ec2:CreateTags of "
                    "`flowrig aws iam-policy --backend BACKEND`): %s",
                    " for the last time before it lapses" if lapsing else "", one_line(exc),
                )

    def stop(self) -> None:
        """Stop renewing (once the run's resources are deleted); safe to call twice."""
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=30)
