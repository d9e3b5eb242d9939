"""The ECS side of a run's roles: RunTask, DescribeTasks, StopTask (botocore).

:class:`ECSLauncher` is the :class:`~flowrig.backends.pool.Launcher` of the ``ecs`` and
``fargate`` backends: a scheduler task and worker tasks from the run's task
definitions, with the role commands flowrig builds (:mod:`flowrig.roles`), observed
all at once (DescribeTasks takes up to 100 tasks per call) and workers started ten per
RunTask call, each call with a ``clientToken`` so that botocore's retry of a call whose
answer was lost cannot start its tasks twice. RunTask and StopTask are paced below the
rates AWS throttles them at (:mod:`~flowrig.backends.aws.ecs.pacing`), and a run's tasks
are stopped from a few threads at once.

A task that stops is explained in one line (:func:`stop_reason`): its stop code, stopped
reason and containers' reasons, the last lines its container wrote to CloudWatch, and a
hint for the causes seen most (:func:`hint`).
"""

from __future__ import annotations

import logging
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

from flowrig.backends.aws.ecs import pacing
from flowrig.backends.aws.ecs.reasons import explain, failure_reason, stop_reason
from flowrig.backends.aws.ecs.worker_kinds import WorkerKind
from flowrig.backends.aws.session import Session, aws_errors
from flowrig.backends.markets import SpotSetting, fallback_line, first_market, markets_to_try, worker_markets
from flowrig.backends.pool import Endpoint, Launcher, Observed, WorkerStart
from flowrig.backends.usage import ON_DEMAND, SPOT, Placement
from flowrig.errors import InfrastructureError, one_line
from flowrig.roles import DASHBOARD_PORT, SCHEDULER_PORT, WORKER_DEATH_TIMEOUT
from flowrig.roles.task_name import task_id

logger = logging.getLogger("flowrig.ecs")

#: DescribeTasks takes at most this many tasks per call.
DESCRIBE_BATCH = 100
#: RunTask starts at most this many tasks per call (``count``).
RUN_BATCH = 10
#: Lines of a stopped container's CloudWatch log put in its stop reason.
LOG_TAIL_LINES = 3
#: Seconds between RunTask tries while a new role propagates.
_ASSUME_POLL = 2.0
#: The markets in the words the users of each capacity know.
_MARKET_WORDS = {SPOT: "Fargate Spot", ON_DEMAND: "on-demand Fargate"}
_EC2_MARKET_WORDS = {SPOT: "the Spot capacity provider", ON_DEMAND: "the on-demand capacity provider"}
_PENDING = {"PROVISIONING", "PENDING", "ACTIVATING"}
_STOPPED = {"DEACTIVATING", "STOPPING", "DEPROVISIONING", "STOPPED", "DELETED"}


@dataclass(frozen=True)
class TaskSettings:
    """What every task of one run is started with.

    Parameters
    ----------
    cluster_arn, scheduler_task_definition, worker_task_definition
        Where the tasks run and from which task definitions.
    subnets, security_groups, public_ip
        Their ``awsvpc`` network; a public address only when asked for.
    fargate, scheduler_fargate
        Launch type of the workers and of the scheduler: Fargate, else the cluster's
        own capacity.
    spot
        The workers' market on Fargate (:mod:`flowrig.backends.markets`): on-demand,
        Fargate Spot, or Spot falling back to on-demand; the scheduler is never on Spot.
    started_by, tags
        Name the run on every task (teardown finds tasks by ``startedBy``).
    scheduler_command
        The scheduler's command (its TLS flags included).
    worker_threads, worker_args
        Threads of each worker, and the flags after the worker's own (TLS last).
    environment
        Environment every worker gets in its RunTask override: only for a worker task
        definition of the project's (flowrig's own definitions hold it), never secrets.
    dashboard
        Whether the scheduler's dashboard is open to the VPC (and so worth a link).
    scheduler_task_kwargs, worker_task_kwargs
        Further RunTask parameters of the project's.
    """

    cluster_arn: str
    scheduler_task_definition: str
    worker_task_definition: str
    subnets: Sequence[str]
    security_groups: Sequence[str]
    started_by: str
    scheduler_command: Sequence[str]
    worker_args: Sequence[str]
    worker_threads: int = 1
    fargate: bool = True
    scheduler_fargate: bool = True
    spot: SpotSetting = False
    public_ip: bool = False
    tags: Mapping[str, str] = field(default_factory=dict)
    environment: Mapping[str, str] = field(default_factory=dict)
    dashboard: bool = False
    scheduler_task_kwargs: Mapping[str, Any] = field(default_factory=dict)
    worker_task_kwargs: Mapping[str, Any] = field(default_factory=dict)
    scheduler_container: str = "dask-scheduler"
    worker_container: str = "dask-worker"
    #: Where the containers' ``awslogs`` go (empty: not known, no log lines in reasons).
    log_group: str = ""
    log_stream_prefix: str = ""
    #: ``time.monotonic()`` until which the run's new execution role may be unknown to
    #: ECS: a RunTask refused because ECS cannot assume it yet is tried again until then.
    role_propagation_until: float = 0.0
    #: CPU units and MiB of each role's task, by role, where flowrig registered its task
    #: definition (a definition of the project's own is not read: no price).
    shapes: Mapping[str, tuple[int, int]] = field(default_factory=dict)
    cpu_architecture: str = "X86_64"
    #: The capacity provider (an Auto Scaling group of EC2 instances) worker tasks not on
    #: Fargate start on; empty: the cluster's default strategy.
    capacity_provider: str = ""
    #: The Spot capacity provider of worker tasks not on Fargate (``spot`` on EC2 capacity).
    spot_capacity_provider: str = ""
    #: How each worker group's tasks start, by group (``[[cluster.worker_groups]]``).
    groups: Mapping[str, WorkerKind] = field(default_factory=dict)

    def kind(self, group: str = "") -> WorkerKind:
        """How the workers of ``group`` start (``""``: the run's workers, without groups)."""
        if group:
            return self.groups[group]
        return WorkerKind(
            task_definition=self.worker_task_definition, args=tuple(self.worker_args), threads=self.worker_threads,
            fargate=self.fargate, spot=self.spot, capacity_provider=self.capacity_provider,
            spot_capacity_provider=self.spot_capacity_provider, shape=self.shapes.get("worker"),
        )


def worker_command(settings: "TaskSettings | WorkerKind", scheduler_address: str, name: str | None = None) -> list[str]:
    """A worker's command: its scheduler, name and threads, then its flags (its group's
    Dask resources among them) and TLS.

    The name defaults to the task's own id (after its group's name), filled in by the
    image's entry point, since all tasks of one RunTask call share one command.
    """
    kind = settings.kind() if isinstance(settings, TaskSettings) else settings
    return [
        "dask-worker", scheduler_address,
        "--name", kind.name_template if name is None else name,
        "--nthreads", str(kind.threads),
        "--memory-limit", "auto",
        "--death-timeout", str(WORKER_DEATH_TIMEOUT),
        *kind.args,
    ]


def _env(mapping: Mapping[str, str]) -> list[dict[str, str]]:
    return [{"name": key, "value": value} for key, value in sorted(mapping.items())]


def _private_ip(task: Mapping[str, Any]) -> str | None:
    """The task's private address, from its network interface attachment."""
    for attachment in task.get("attachments", ()):
        for detail in attachment.get("details", ()):
            if detail.get("name") == "privateIPv4Address":
                return detail.get("value")
    for container in task.get("containers", ()):
        for interface in container.get("networkInterfaces", ()):
            if interface.get("privateIpv4Address"):
                return interface["privateIpv4Address"]
    return None


class ECSLauncher(Launcher):
    """Starts, observes and stops a run's ECS tasks.

    Parameters
    ----------
    aws
        The session (its ECS client is used).
    settings
        What every task is started with.
    """

    kind = "task"

    def __init__(self, aws: Session, settings: TaskSettings) -> None:
        self.aws = aws
        self.settings = settings
        self._tasks: dict[str, dict[str, Any]] = {}
        #: The market and the group each worker task was started in, by ARN.
        self._markets: dict[str, str] = {}
        self._groups: dict[str, str] = {}
        #: One-line explanation of each task seen stopped (its log lines are read once).
        self._explained: dict[str, str] = {}
        self._launches = pacing.Pacer(pacing.LAUNCHES)
        self._run_calls = pacing.Pacer(pacing.RUN_TASK_CALLS)
        self._stop_calls = pacing.Pacer(pacing.STOP_TASK_CALLS)

    @property
    def _ecs(self) -> Any:
        return self.aws.client("ecs")

    def _run_task(self, role: str, definition: str, container: str, command: list[str],
                  environment: Mapping[str, str], extra: Mapping[str, Any], placing: Mapping[str, Any],
                  count: int = 1) -> tuple[list[dict[str, Any]], list[str]]:
        """Ask for ``count`` tasks in one call, placed by ``placing`` (a launch type or a
        capacity provider strategy): the tasks started and ECS's reason per task not, as
        it gave it."""
        s = self.settings
        override: dict[str, Any] = {"name": container, "command": command}
        if environment:
            override["environment"] = _env(environment)
        kwargs: dict[str, Any] = {
            **dict(extra),
            "cluster": s.cluster_arn,
            "taskDefinition": definition,
            "count": count,
            "startedBy": s.started_by,
            # botocore resends the same parameters when it retries: ECS then answers with
            # the tasks of the first call instead of starting more.
            "clientToken": uuid.uuid4().hex,
            "overrides": {"containerOverrides": [override]},
            "networkConfiguration": {
                "awsvpcConfiguration": {
                    "subnets": list(s.subnets),
                    "securityGroups": list(s.security_groups),
                    "assignPublicIp": "ENABLED" if s.public_ip else "DISABLED",
                }
            },
            "tags": [{"key": k, "value": v} for k, v in sorted(s.tags.items())],
        }
        kwargs.update(placing)
        with aws_errors(f"starting the {role} task{'s' if count > 1 else ''}"):
            response = self._run_task_call(kwargs)
        tasks = list(response.get("tasks") or [])[:count]
        for task in tasks:
            self._tasks[task["taskArn"]] = task
        refused = [failure_reason(f) for f in response.get("failures") or []]
        # A short answer with no failure listed still leaves tasks unstarted.
        refused += ["ECS started fewer tasks than asked, without a reason"] * max(count - len(tasks) - len(refused), 0)
        return tasks, refused[: count - len(tasks)]

    def _run_task_call(self, kwargs: Mapping[str, Any]) -> Any:
        """RunTask, tried again while ECS cannot assume a role the run made moments
        before (IAM has not told it yet); the same ``clientToken`` each time."""
        from botocore.exceptions import ClientError

        while True:
            # Fargate counts launched tasks, RunTask calls: wait for both rather than be throttled.
            self._run_calls.wait()
            self._launches.wait(int(kwargs.get("count", 1)))
            try:
                return self._ecs.run_task(**kwargs)
            except ClientError as exc:
                message = str(exc.response.get("Error", {}).get("Message", ""))
                propagating = time.monotonic() < self.settings.role_propagation_until
                if "unable to assume" not in message.lower() or not propagating:
                    raise
                logger.debug("ECS cannot assume the run's new role yet, trying again: %s", one_line(message))
            time.sleep(_ASSUME_POLL)

    def start_scheduler(self) -> str:
        s = self.settings
        tasks, refused = self._run_task(
            "scheduler", s.scheduler_task_definition, s.scheduler_container, list(s.scheduler_command),
            # The scheduler is never on Spot: losing it ends the run.
            {}, s.scheduler_task_kwargs, {"launchType": "FARGATE"} if s.scheduler_fargate else {},
        )
        if not tasks:
            raise InfrastructureError(f"ECS did not start the scheduler task: {explain(refused[0])}")
        return tasks[0]["taskArn"]

    def scheduler_endpoint(self, handle: str) -> Endpoint:
        task = self._tasks.get(handle) or {}
        address = _private_ip(task)
        if not address:
            raise InfrastructureError(f"the scheduler task {handle} has no private address")
        return Endpoint(
            contact_address=f"tls://{address}:{SCHEDULER_PORT}",
            dashboard_link=f"http://{address}:{DASHBOARD_PORT}/status" if self.settings.dashboard else None,
        )

    def start_workers(
        self, scheduler_address: str, count: int, replacing: Sequence[str] = (), group: str = ""
    ) -> WorkerStart:
        """Ask for ``count`` workers (of worker group ``group``, with its task definition,
        Dask resources and market), :data:`RUN_BATCH` per RunTask call; each is named
        after its task's id (after its group's name). Each is asked in its market
        (:mod:`flowrig.backends.markets`: a replacement of a lost worker of ``replacing``
        in that worker's), and with ``spot = "fallback"`` the ones that market had no room
        for are asked again in the other market, said in one line. A call AWS refuses
        outright raises; failures of single tasks are returned with their reasons."""
        kind = self.settings.kind(group)
        command = worker_command(kind, scheduler_address)
        firsts = worker_markets(kind.spot, count, [self._markets.get(handle) for handle in replacing])
        words = _MARKET_WORDS if kind.fargate else _EC2_MARKET_WORDS
        of_group = f" of group {group}" if group else ""
        started: dict[str, str] = {}
        refused: list[str] = []
        for market in dict.fromkeys(firsts):
            got, short = self._start_in(kind, market, firsts.count(market), command, refused)
            started.update(got)
            tries = markets_to_try(kind.spot, market)
            if short and len(tries) > 1:
                logger.warning(fallback_line(len(short), "worker task", words[market], words[tries[1]], short[0],
                                             of_group))
                got, short = self._start_in(kind, tries[1], len(short), command, refused)
                started.update(got)
            refused += short
        return WorkerStart(started=started, refused=[explain(reason) for reason in refused])

    def _start_in(self, kind: WorkerKind, market: str, count: int, command: list[str],
                  refused: list[str]) -> tuple[dict[str, str], list[str]]:
        """Ask for ``count`` workers of ``kind`` in ``market``: ``name -> ARN`` of those
        started, and the reasons of those the market had no room for; other reasons go to
        ``refused``."""
        s = self.settings
        started: dict[str, str] = {}
        short: list[str] = []
        for start in range(0, count, RUN_BATCH):
            tasks, failures = self._run_task(
                "worker", kind.task_definition, s.worker_container, command, s.environment, s.worker_task_kwargs,
                kind.placement_kwargs(market), count=min(RUN_BATCH, count - start),
            )
            for task in tasks:
                started[kind.worker_name(task["taskArn"])] = task["taskArn"]
                self._markets[task["taskArn"]] = market
                self._groups[task["taskArn"]] = kind.group
            for reason in failures:
                (short if kind.short_of_room(reason) else refused).append(reason)
        return started, short

    def observe(self, handles: list[str]) -> dict[str, Observed]:
        found: dict[str, Observed] = {}
        for start in range(0, len(handles), DESCRIBE_BATCH):
            chunk = handles[start : start + DESCRIBE_BATCH]
            with aws_errors("describing the run's tasks"):
                response = self._ecs.describe_tasks(cluster=self.settings.cluster_arn, tasks=chunk)
            for task in response.get("tasks", ()):
                arn = task["taskArn"]
                self._tasks[arn] = task
                status = task.get("lastStatus", "PENDING")
                if status in _STOPPED:
                    if arn not in self._explained:
                        self._explained[arn] = explain(stop_reason(task), self._log_tail(task))
                    found[arn] = Observed("stopped", self._explained[arn])
                elif status in _PENDING:
                    found[arn] = Observed("pending")
                else:
                    found[arn] = Observed("running")
            for failure in response.get("failures", ()):
                if failure.get("arn"):
                    found[failure["arn"]] = Observed("stopped", one_line(failure.get("reason") or "missing"))
        return found

    def _log_tail(self, task: Mapping[str, Any]) -> list[str]:
        """The last lines the task's role container wrote to CloudWatch; best effort
        (none when the logs are elsewhere, missing or not readable)."""
        s = self.settings
        if not (s.log_group and s.log_stream_prefix):
            return []
        names = {s.scheduler_container, s.worker_container}
        container = next((c.get("name") for c in task.get("containers", ()) if c.get("name") in names), None)
        if not container:
            return []
        stream = f"{s.log_stream_prefix}/{container}/{task_id(task['taskArn'])}"
        try:
            events = self.aws.client("logs").get_log_events(
                logGroupName=s.log_group, logStreamName=stream, limit=LOG_TAIL_LINES, startFromHead=False
            )["events"]
        except Exception as exc:  # no stream yet (the container never started), no right to read
            logger.debug("no log lines of %s: %s", stream, one_line(exc))
            return []
        return [event["message"] for event in events if str(event.get("message", "")).strip()][-LOG_TAIL_LINES:]

    def placement(self, handle: str, role: str) -> Placement | None:
        """A Fargate task's shape from its task definition's size (its group's), in the
        market it was started in; tasks on the cluster's own capacity are not priced here."""
        s = self.settings
        if role == "worker":
            kind = s.kind(self._groups.get(handle, ""))
            fargate, (cpu, memory) = kind.fargate, kind.shape or (0, 0)
            market = self._markets.get(handle, first_market(kind.spot))
        else:
            fargate, (cpu, memory), market = s.scheduler_fargate, s.shapes.get(role, (0, 0)), ON_DEMAND
        if not fargate or not cpu:
            return None
        return Placement(
            market=market, vcpu=cpu / 1024,
            memory_gib=memory / 1024, price_key=f"fargate:{self.aws.region_name}:{s.cpu_architecture}",
        )

    def stop(self, handles: list[str], reason: str) -> None:
        """StopTask for each task, from a few threads at the paced rate: one call after
        another, 500 tasks took a round trip each; all at once, AWS throttles them."""
        if not handles:
            return
        ecs = self._ecs  # made here: botocore does not make clients safely from two threads at once

        def stop_one(handle: str) -> None:
            self._stop_calls.wait()
            try:
                ecs.stop_task(cluster=self.settings.cluster_arn, task=handle, reason=reason[:255])
            except Exception as exc:  # gone already, or teardown's sweep will try again
                logger.debug("stopping task %s failed: %s", handle, one_line(exc))

        if len(handles) == 1:
            return stop_one(handles[0])
        with ThreadPoolExecutor(min(pacing.STOP_THREADS, len(handles)), thread_name_prefix="flowrig-stop") as pool:
            list(pool.map(stop_one, handles))
