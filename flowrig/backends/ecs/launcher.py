"""The ECS side of a run's roles: RunTask, DescribeTasks, StopTask (botocore).

:class:`ECSLauncher` is the :class:`~flowrig.backends.pool.Launcher` of the ``ecs`` and
``fargate`` backends: a scheduler task and worker tasks from the run's task
definitions, with the role commands flowrig builds (:mod:`flowrig.roles`), observed
all at once (DescribeTasks takes up to 100 tasks per call).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

from flowrig.backends.ecs.aws import Session, aws_errors
from flowrig.backends.pool import Endpoint, Launcher, Observed
from flowrig.errors import InfrastructureError, one_line
from flowrig.roles import DASHBOARD_PORT, SCHEDULER_PORT, WORKER_DEATH_TIMEOUT

logger = logging.getLogger("flowrig.ecs")

#: DescribeTasks takes at most this many tasks per call.
DESCRIBE_BATCH = 100
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
    fargate, scheduler_fargate, fargate_spot
        Launch type of the workers and of the scheduler: Fargate (workers on Spot
        capacity when asked), else the cluster's own capacity.
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
    fargate_spot: bool = False
    public_ip: bool = False
    tags: Mapping[str, str] = field(default_factory=dict)
    environment: Mapping[str, str] = field(default_factory=dict)
    dashboard: bool = False
    scheduler_task_kwargs: Mapping[str, Any] = field(default_factory=dict)
    worker_task_kwargs: Mapping[str, Any] = field(default_factory=dict)
    scheduler_container: str = "dask-scheduler"
    worker_container: str = "dask-worker"


def worker_command(settings: TaskSettings, scheduler_address: str, name: str) -> list[str]:
    """A worker's command: its scheduler, name and threads, then the project's flags and TLS."""
    return [
        "dask-worker", scheduler_address,
        "--name", name,
        "--nthreads", str(settings.worker_threads),
        "--memory-limit", "auto",
        "--death-timeout", str(WORKER_DEATH_TIMEOUT),
        *settings.worker_args,
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


def stop_reason(task: Mapping[str, Any]) -> str:
    """One line: the stop code, the stopped reason and each container's own reason."""
    parts = [task.get("stopCode"), task.get("stoppedReason")]
    for container in task.get("containers", ()):
        if container.get("reason"):
            parts.append(f"{container.get('name', 'container')}: {container['reason']}")
        elif container.get("exitCode") not in (None, 0):
            parts.append(f"{container.get('name', 'container')} exited with code {container['exitCode']}")
    return one_line("; ".join(p for p in parts if p) or "no reason given")


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

    @property
    def _ecs(self) -> Any:
        return self.aws.client("ecs")

    def _run_task(self, role: str, definition: str, container: str, command: list[str],
                  environment: Mapping[str, str], extra: Mapping[str, Any], fargate: bool) -> str:
        s = self.settings
        override: dict[str, Any] = {"name": container, "command": command}
        if environment:
            override["environment"] = _env(environment)
        kwargs: dict[str, Any] = {
            **dict(extra),
            "cluster": s.cluster_arn,
            "taskDefinition": definition,
            "count": 1,
            "startedBy": s.started_by,
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
        if fargate:
            if s.fargate_spot and role == "worker":
                kwargs["capacityProviderStrategy"] = [{"capacityProvider": "FARGATE_SPOT", "weight": 1}]
            else:
                kwargs["launchType"] = "FARGATE"
        with aws_errors(f"starting the {role} task"):
            response = self._ecs.run_task(**kwargs)
        tasks, failures = response.get("tasks") or [], response.get("failures") or []
        if not tasks:
            reason = "; ".join(
                one_line(f"{f.get('reason')}: {f.get('detail') or f.get('arn') or ''}") for f in failures
            )
            raise InfrastructureError(f"ECS did not start the {role} task: {reason or 'no task and no reason'}")
        task = tasks[0]
        self._tasks[task["taskArn"]] = task
        return task["taskArn"]

    def start_scheduler(self) -> str:
        s = self.settings
        return self._run_task(
            "scheduler", s.scheduler_task_definition, s.scheduler_container, list(s.scheduler_command),
            {}, s.scheduler_task_kwargs, s.scheduler_fargate,
        )

    def scheduler_endpoint(self, handle: str) -> Endpoint:
        task = self._tasks.get(handle) or {}
        address = _private_ip(task)
        if not address:
            raise InfrastructureError(f"the scheduler task {handle} has no private address")
        return Endpoint(
            contact_address=f"tls://{address}:{SCHEDULER_PORT}",
            dashboard_link=f"http://{address}:{DASHBOARD_PORT}/status" if self.settings.dashboard else None,
        )

    def start_workers(self, scheduler_address: str, names: list[str]) -> list[str]:
        s = self.settings
        return [
            self._run_task(
                "worker", s.worker_task_definition, s.worker_container,
                worker_command(s, scheduler_address, name), s.environment, s.worker_task_kwargs, s.fargate,
            )
            for name in names
        ]

    def observe(self, handles: list[str]) -> dict[str, Observed]:
        found: dict[str, Observed] = {}
        for start in range(0, len(handles), DESCRIBE_BATCH):
            chunk = handles[start : start + DESCRIBE_BATCH]
            with aws_errors("describing the run's tasks"):
                response = self._ecs.describe_tasks(cluster=self.settings.cluster_arn, tasks=chunk)
            for task in response.get("tasks", ()):
                self._tasks[task["taskArn"]] = task
                status = task.get("lastStatus", "PENDING")
                if status in _STOPPED:
                    found[task["taskArn"]] = Observed("stopped", stop_reason(task))
                elif status in _PENDING:
                    found[task["taskArn"]] = Observed("pending")
                else:
                    found[task["taskArn"]] = Observed("running")
            for failure in response.get("failures", ()):
                if failure.get("arn"):
                    found[failure["arn"]] = Observed("stopped", one_line(failure.get("reason") or "missing"))
        return found

    def stop(self, handles: list[str], reason: str) -> None:
        for handle in handles:
            try:
                self._ecs.stop_task(cluster=self.settings.cluster_arn, task=handle, reason=reason[:255])
            except Exception as exc:  # gone already, or teardown's sweep will try again
                logger.debug("stopping task %s failed: %s", handle, one_line(exc))
