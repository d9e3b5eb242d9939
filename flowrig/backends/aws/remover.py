"""Removal of what runs that are over left in AWS (``flowrig aws leftovers --remove``).

Removal follows :data:`~flowrig.backends.aws.leftovers.REMOVAL_ORDER` and is
idempotent: a resource that is already gone is not an error
(:func:`~flowrig.backends.aws.sweep.is_gone`); one still in use by another being removed
is retried until a deadline.
"""

from __future__ import annotations

import functools
import time
from typing import Any, Callable

from flowrig.backends.aws.leftovers import Resource, RunLeftovers
from flowrig.backends.aws.session import Session
from flowrig.backends.aws.sweep import DESCRIBE_BATCH, IN_USE_CODES, POLL_SECONDS, chunks, error_code, is_gone
from flowrig.backends.ledger import retry
from flowrig.errors import one_line


class Remover:
    """Removes runs' resources in dependency order, retrying while AWS says "in use".

    Parameters
    ----------
    aws
        The session every call uses.
    timeout
        Seconds one run's removal keeps waiting for tasks to stop and retrying
        deletions refused because something still uses the resource.
    """

    def __init__(self, aws: Session, timeout: float) -> None:
        self.aws = aws
        self.timeout = timeout

    def remove(self, run: RunLeftovers) -> tuple[list[str], list[tuple[str, str]]]:
        """Remove what ``run`` left; returns what went (``kind id``) and what did not,
        with why (``(kind id, reason)``).

        Nothing raises: a failure is recorded and the rest still goes.
        """
        deadline = time.monotonic() + self.timeout
        removed: list[str] = []
        failed: list[tuple[str, str]] = []
        tasks = run.of_kind("task")
        if tasks:
            self._attempt("task", [t.ident for t in tasks], lambda: self._stop_tasks(tasks, deadline), removed, failed)
        instances = run.of_kind("instance")
        if instances:
            self._attempt(
                "instance", [i.ident for i in instances],
                lambda: self._terminate_instances([i.ident for i in instances], deadline), removed, failed,
            )
        steps: list[tuple[str, Callable[[Resource], None]]] = [
            ("task-definition", self._delete_task_definition),
            ("log-group", lambda r: self.aws.client("logs").delete_log_group(logGroupName=r.ident)),
            ("security-group", lambda r: self._retry(
                lambda: self.aws.client("ec2").delete_security_group(GroupId=r.ident), deadline)),
            ("cluster", lambda r: self._retry(
                lambda: self.aws.client("ecs").delete_cluster(cluster=r.ident), deadline)),
            ("secret", lambda r: self.aws.client("secretsmanager").delete_secret(
                SecretId=r.ident, ForceDeleteWithoutRecovery=True)),
            ("instance-profile", self._delete_instance_profile),
            ("role", self._delete_role),
        ]
        for kind, delete in steps:
            for resource in run.of_kind(kind):
                self._attempt(kind, [resource.ident], functools.partial(delete, resource), removed, failed)
        return removed, failed

    @staticmethod
    def _attempt(
        kind: str, idents: list[str], call: Callable[[], None], removed: list[str], failed: list[tuple[str, str]]
    ) -> None:
        try:
            call()
        except Exception as exc:
            if not is_gone(exc):
                failed.extend((f"{kind} {ident}", one_line(exc)) for ident in idents)
                return
        removed.extend(f"{kind} {ident}" for ident in idents)

    def _stop_tasks(self, tasks: list[Resource], deadline: float) -> None:
        ecs = self.aws.client("ecs")
        by_cluster: dict[str, list[str]] = {}
        for task in tasks:
            by_cluster.setdefault(task.detail["cluster"], []).append(task.ident)
        for cluster, arns in by_cluster.items():
            for arn in arns:
                try:
                    ecs.stop_task(cluster=cluster, task=arn, reason=f"flowrig aws leftovers (run {tasks[0].run_id})")
                except Exception as exc:
                    if not is_gone(exc):
                        raise
            # Until tasks are STOPPED they hold network interfaces in the security group.
            while arns:
                described = []
                for chunk in chunks(arns, DESCRIBE_BATCH):
                    try:
                        described.extend(ecs.describe_tasks(cluster=cluster, tasks=chunk)["tasks"])
                    except Exception as exc:
                        if not is_gone(exc):
                            raise
                arns = [t["taskArn"] for t in described if t.get("lastStatus") != "STOPPED"]
                if arns and time.monotonic() > deadline:
                    raise TimeoutError(f"{len(arns)} task(s) of cluster {cluster} not STOPPED in time")
                if arns:
                    time.sleep(POLL_SECONDS)

    def _terminate_instances(self, instance_ids: list[str], deadline: float) -> None:
        ec2 = self.aws.client("ec2")
        ec2.terminate_instances(InstanceIds=instance_ids)
        # Until they are terminated they hold network interfaces in the security group.
        while instance_ids:
            pages = ec2.get_paginator("describe_instances").paginate(
                Filters=[{"Name": "instance-id", "Values": instance_ids}]
            )
            instance_ids = [
                i["InstanceId"] for page in pages for r in page["Reservations"] for i in r["Instances"]
                if i["State"]["Name"] != "terminated"
            ]
            if instance_ids and time.monotonic() > deadline:
                raise TimeoutError(f"{len(instance_ids)} instance(s) not terminated in time")
            if instance_ids:
                time.sleep(POLL_SECONDS)

    def _delete_instance_profile(self, resource: Resource) -> None:
        iam = self.aws.client("iam")
        name = resource.ident
        for role in iam.get_instance_profile(InstanceProfileName=name)["InstanceProfile"]["Roles"]:
            iam.remove_role_from_instance_profile(InstanceProfileName=name, RoleName=role["RoleName"])
        iam.delete_instance_profile(InstanceProfileName=name)

    def _delete_task_definition(self, resource: Resource) -> None:
        ecs = self.aws.client("ecs")
        if resource.detail.get("status") == "ACTIVE":
            try:
                ecs.deregister_task_definition(taskDefinition=resource.ident)
            except Exception as exc:
                if not is_gone(exc):
                    raise
        # Deregistered definitions stay listed as INACTIVE; deleting removes them.
        failures = ecs.delete_task_definitions(taskDefinitions=[resource.ident]).get("failures") or []
        for failure in failures:
            reason = str(failure.get("reason") or failure.get("detail") or "")
            if "not found" not in reason.lower() and "does not exist" not in reason.lower():
                raise RuntimeError(f"ECS did not delete it: {reason or 'no reason given'}")

    def _delete_role(self, resource: Resource) -> None:
        iam = self.aws.client("iam")
        name = resource.ident
        for page in iam.get_paginator("list_attached_role_policies").paginate(RoleName=name):
            for policy in page["AttachedPolicies"]:
                iam.detach_role_policy(RoleName=name, PolicyArn=policy["PolicyArn"])
        for page in iam.get_paginator("list_role_policies").paginate(RoleName=name):
            for policy_name in page["PolicyNames"]:
                iam.delete_role_policy(RoleName=name, PolicyName=policy_name)
        iam.delete_role(RoleName=name)

    @staticmethod
    def _retry(call: Callable[[], Any], deadline: float) -> None:
        retry(call, until=deadline, when=lambda exc: error_code(exc) in IN_USE_CODES, pause=POLL_SECONDS)
