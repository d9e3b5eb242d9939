"""The AWS resources one run makes, recorded as they are made and removed after the run.

Calls are thin: parameters come rendered from :mod:`~flowrig.backends.aws.ecs.taskdefs`,
the backend or :mod:`~flowrig.backends.aws.policies`, and botocore's errors become
one-line flowrig errors (:func:`~flowrig.backends.aws.session.aws_errors`).
:class:`RunResources` holds what ECS and EC2 runs share; ``ec2`` extends it
(:mod:`flowrig.backends.aws.ec2.cloud`). Each ``create_*`` records its own undo on the
run's :class:`~flowrig.backends.ledger.Ledger` in the statement that creates it.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any, Callable, Mapping

from flowrig.backends.aws import policies as iam_docs
from flowrig.backends.aws.names import CLEANUP_TIMEOUT
from flowrig.backends.aws.session import Session, aws_errors, denied, no_such_entity
from flowrig.backends.ledger import Group, Ledger, retry
from flowrig.errors import BadInput, one_line
from flowrig.roles import DASHBOARD_PORT, SCHEDULER_PORT

logger = logging.getLogger("flowrig.ecs")

#: Seconds between checks while tasks stop.
_POLL_SECONDS = 2
#: The ledger's group of the tasks a run started (``(cluster ARN, startedBy)``).
TASKS = "tasks"
#: Seconds a role made moments before may still be unknown to the services that use it
#: (IAM propagates a change within seconds, rarely a minute): calls refused for want of
#: it are tried again until then.
ROLE_PROPAGATION = 60.0
#: Seconds between such tries.
_PROPAGATION_POLL = 2.0


def _ecs_tags(tags: Mapping[str, str]) -> list[dict[str, str]]:
    return [{"key": key, "value": value} for key, value in sorted(tags.items())]


def _upper_tags(tags: Mapping[str, str]) -> list[dict[str, str]]:
    return [{"Key": key, "Value": value} for key, value in sorted(tags.items())]


def error_codes(*codes: str) -> Callable[[BaseException], bool]:
    """Whether a botocore error carries one of ``codes``."""
    def matches(exc: BaseException) -> bool:
        response = getattr(exc, "response", None)
        return isinstance(response, dict) and response.get("Error", {}).get("Code") in codes

    return matches


def _task_source(source: tuple[str, str]) -> str:
    cluster_arn, started_by = source
    return f"{started_by} in {cluster_arn}"


class RunResources:
    """The AWS resources one run created, and their removal in reverse order.

    Every ``create_*`` method tags what it creates and records it with its undo on
    :attr:`ledger` at once, so a run that fails half-way still removes everything it
    made. :meth:`delete` also stops any task the run started (found by its ``startedBy``
    value), including tasks whose start was interrupted: :meth:`track_tasks` records
    them after everything they need, so they are stopped first.

    Parameters
    ----------
    aws
        The session every call uses.
    tags
        Tags put on every resource (they name the run).
    cleanup_timeout
        Seconds :meth:`delete` keeps retrying while AWS still holds resources in use.
    """

    def __init__(
        self,
        aws: Session,
        tags: Mapping[str, str],
        cleanup_timeout: float = CLEANUP_TIMEOUT,
    ) -> None:
        self.aws = aws
        self.tags = dict(tags)
        self.cleanup_timeout = cleanup_timeout
        # AWS's "not found" is no success: a resource gone already is still reported.
        self.ledger = Ledger(cleanup_timeout)
        self._tasks: Group[tuple[str, str]] | None = None
        #: When the run made its (last) role, ``time.monotonic()``; ``None`` when it made none.
        self.role_made_at: float | None = None
        #: Names of the roles the run made.
        self.new_roles: list[str] = []
        #: Task definitions the runner may not deregister (see :meth:`delete`).
        self.left_registered: list[str] = []

    def _client(self, service: str) -> Any:
        return self.aws.client(service)

    @property
    def created(self) -> list[tuple[str, str]]:
        """``(kind, id)`` of every resource created and not yet deleted, oldest first."""
        return [entry for entry in self.ledger.created if entry[0] != TASKS]

    # --- reading -------------------------------------------------------------------
    def default_vpc(self) -> str:
        """Id of the region's default VPC.

        Raises
        ------
        BadInput
            When the region has none.
        """
        with aws_errors("looking up the default VPC"):
            vpcs = self._client("ec2").describe_vpcs(
                Filters=[{"Name": "is-default", "Values": ["true"]}]
            )["Vpcs"]
        if not vpcs:
            raise BadInput(
                f"region {self.aws.region_name} has no default VPC: set vpc and subnets in [cluster.options]"
            )
        return vpcs[0]["VpcId"]

    def vpc_subnets(self, vpc_id: str) -> list[str]:
        """Ids of a VPC's subnets.

        Raises
        ------
        BadInput
            When the VPC has none.
        """
        with aws_errors(f"listing the subnets of VPC {vpc_id}"):
            subnets = self._client("ec2").describe_subnets(
                Filters=[{"Name": "vpc-id", "Values": [vpc_id]}]
            )["Subnets"]
        if not subnets:
            raise BadInput(f"VPC {vpc_id} has no subnets: set subnets in [cluster.options]")
        return sorted(subnet["SubnetId"] for subnet in subnets)

    def vpc_cidrs(self, vpc_id: str) -> list[str]:
        """IPv4 CIDR blocks of a VPC (the primary one and any associated ones)."""
        with aws_errors(f"describing VPC {vpc_id}"):
            [vpc] = self._client("ec2").describe_vpcs(VpcIds=[vpc_id])["Vpcs"]
        cidrs = [vpc["CidrBlock"]]
        for association in vpc.get("CidrBlockAssociationSet", []):
            state = association.get("CidrBlockState", {}).get("State", "associated")
            if state == "associated" and association["CidrBlock"] not in cidrs:
                cidrs.append(association["CidrBlock"])
        return cidrs

    # --- creating ------------------------------------------------------------------
    def create_cluster(self, name: str) -> str:
        """An ECS cluster that runs Fargate and Fargate Spot tasks; returns its ARN."""
        with aws_errors(f"creating ECS cluster {name}"):
            response = self._client("ecs").create_cluster(
                clusterName=name,
                tags=_ecs_tags(self.tags),
                capacityProviders=["FARGATE", "FARGATE_SPOT"],
            )
        arn = response["cluster"]["clusterArn"]
        self.ledger.record(
            "cluster", arn, lambda _: self._client("ecs").delete_cluster(cluster=arn),
            retry_when=error_codes(
                "ClusterContainsTasksException", "UpdateInProgressException", "ResourceInUseException"
            ),
        )
        return arn

    def create_execution_role(self, name: str, reader_policy_arn: str) -> str:
        """A run's execution role; returns its ARN.

        Only ECS tasks of this account may assume it; it holds AWS's managed execution
        policy (pull the image, write logs) and ``reader_policy_arn``, which lets it
        read its own run's secret and no other (:func:`~flowrig.backends.aws.policies.run_secret_reader_policy`).
        Its tags (the run id, and the caller as owner) are what that policy and the
        runner's own rights check.
        """
        iam = self._client("iam")
        account = self.aws.account()
        with aws_errors(f"creating IAM role {name}"):
            response = iam.create_role(
                RoleName=name,
                Path=iam_docs.ROLE_PATH,
                AssumeRolePolicyDocument=json.dumps(iam_docs.trust_policy(account)),
                Description="flowrig: lets ECS pull the image, write logs and read the secret of one run",
                Tags=_upper_tags(self.tags),
            )
        self.made_role(name)
        for policy_arn in (iam_docs.execution_policy_arn(account.partition), reader_policy_arn):
            with aws_errors(f"attaching {policy_arn} to IAM role {name}"):
                self.while_role_propagates(
                    lambda arn=policy_arn: iam.attach_role_policy(RoleName=name, PolicyArn=arn),
                    lambda exc: denied(exc) or no_such_entity(exc),
                )
        return response["Role"]["Arn"]

    def made_role(self, name: str, *, inline_policies: bool = False) -> None:
        """Record a role the run made: deleted with the run (its attached policies detached
        and, with ``inline_policies``, its inline ones deleted first), waited for while it
        propagates."""
        self.ledger.record("role", name, lambda _: self._delete_role(name, inline_policies))
        self.new_roles.append(name)
        self.role_made_at = time.monotonic()

    def _delete_role(self, name: str, inline_policies: bool) -> None:
        iam = self._client("iam")
        if inline_policies:
            for policy_name in iam.list_role_policies(RoleName=name)["PolicyNames"]:
                iam.delete_role_policy(RoleName=name, PolicyName=policy_name)
        for policy in iam.list_attached_role_policies(RoleName=name)["AttachedPolicies"]:
            iam.detach_role_policy(RoleName=name, PolicyArn=policy["PolicyArn"])
        iam.delete_role(RoleName=name)

    @property
    def role_propagation_until(self) -> float:
        """``time.monotonic()`` until which a role the run made may still be unknown to
        the services that use it (0 when it made none)."""
        return self.role_made_at + ROLE_PROPAGATION if self.role_made_at is not None else 0.0

    def while_role_propagates(self, call: Any, retry_when: Any) -> Any:
        """``call()``, tried again while it fails as ``retry_when(exc)`` says and a role the
        run made may not have reached every service yet: IAM checks the new role's tags
        (its owner) and ECS assumes it, both a few seconds after it was made."""
        from botocore.exceptions import ClientError

        def propagating(exc: BaseException) -> bool:
            if not isinstance(exc, ClientError) or not retry_when(exc):
                return False
            logger.debug("a new IAM role may not be known everywhere yet: %s", one_line(exc))
            return True

        return retry(call, until=self.role_propagation_until, when=propagating, pause=_PROPAGATION_POLL)

    def create_run_secret(self, name: str, value: str, reader_role_arn: str, *, grant: bool = False) -> str:
        """A Secrets Manager secret holding ``value`` that every principal but
        ``reader_role_arn`` is denied reading (resource policy); returns its ARN.
        ``grant`` also allows the reader there (a role that exists already, named by
        the project). Deleted without recovery."""
        client = self._client("secretsmanager")
        with aws_errors(f"creating secret {name}"):
            arn = client.create_secret(
                Name=name,
                SecretString=value,
                Description="flowrig: one run's TLS certificates, deleted with the run",
                Tags=_upper_tags(self.tags),
            )["ARN"]
            # No recovery window: the certificates are worthless after the run anyway.
            self.ledger.record("secret", arn, lambda _: client.delete_secret(
                SecretId=arn, ForceDeleteWithoutRecovery=True))
            client.put_resource_policy(
                SecretId=arn,
                ResourcePolicy=json.dumps(iam_docs.secret_read_policy(arn, reader_role_arn, grant=grant)),
                BlockPublicPolicy=True,
            )
        return arn

    def create_log_group(self, name: str) -> str:
        """A CloudWatch log group; returns its name."""
        with aws_errors(f"creating log group {name}"):
            self._client("logs").create_log_group(logGroupName=name, tags=dict(self.tags))
        self.ledger.record("log-group", name, lambda _: self._client("logs").delete_log_group(logGroupName=name))
        return name

    def create_security_group(self, name: str, vpc_id: str, cidrs: list[str], *, dashboard: bool = False) -> str:
        """A security group for one run's tasks; returns its id.

        Tasks in the group reach each other on every TCP port (workers listen on
        random ones); the scheduler port is open to the VPC's own addresses, for a
        runner in the same VPC, and the dashboard port too only with ``dashboard``.
        Nothing is open to the internet.
        """
        ec2 = self._client("ec2")
        with aws_errors(f"creating security group {name}"):
            group_id = ec2.create_security_group(
                GroupName=name,
                Description=f"flowrig {name}: Dask traffic inside the VPC only",
                VpcId=vpc_id,
                TagSpecifications=[
                    {"ResourceType": "security-group", "Tags": _upper_tags(self.tags)}
                ],
            )["GroupId"]
            # Interfaces of stopped tasks and instances are released a little later: retried until then.
            self.ledger.record("security-group", group_id, lambda _: ec2.delete_security_group(GroupId=group_id),
                               retry_when=error_codes("DependencyViolation"))
            ec2.authorize_security_group_ingress(
                GroupId=group_id,
                IpPermissions=[
                    {
                        "IpProtocol": "tcp",
                        "FromPort": 0,
                        "ToPort": 65535,
                        "UserIdGroupPairs": [
                            {"GroupId": group_id, "Description": "between this run's tasks"}
                        ],
                    },
                    *(
                        {
                            "IpProtocol": "tcp",
                            "FromPort": port,
                            "ToPort": port,
                            "IpRanges": [{"CidrIp": cidr, "Description": f"{what}, same VPC"} for cidr in cidrs],
                        }
                        for port, what in ((SCHEDULER_PORT, "runner"), (DASHBOARD_PORT, "dashboard"))
                        if port == SCHEDULER_PORT or dashboard
                    ),
                ],
            )
        return group_id

    def register_task_definition(self, params: Mapping[str, Any]) -> str:
        """Register a task definition (tags are the caller's); returns its ARN.

        Passing a role made moments before is refused until IAM knows its owner tag:
        tried again while the role propagates (a refusal naming another role is final)."""
        with aws_errors(f"registering task definition {params.get('family')}"):
            response = self.while_role_propagates(
                lambda: self._client("ecs").register_task_definition(**params),
                lambda exc: denied(exc) and "iam:PassRole" in str(exc)
                and any(name in str(exc) for name in self.new_roles),
            )
        arn = response["taskDefinition"]["taskDefinitionArn"]
        self.ledger.record("task-definition", arn, lambda _: self._delete_task_definition(arn))
        return arn

    def track_tasks(self, cluster_arn: str, started_by: str) -> None:
        """Stop every task ``started_by`` in ``cluster_arn`` when :meth:`delete` runs.

        The first call records the run's tasks in the ledger: after what they need (the
        cluster, task definitions, security group), so they are stopped before any of it.
        """
        if self._tasks is None:
            self._tasks = self.ledger.group(TASKS, self._stop_tasks, name=_task_source)
        self._tasks.add((cluster_arn, started_by))

    @property
    def task_sources(self) -> list[tuple[str, str]]:
        """``(cluster ARN, startedBy)`` of the tasks :meth:`delete` stops."""
        return list(self._tasks.members) if self._tasks is not None else []

    # --- deleting ------------------------------------------------------------------
    def delete(self) -> list[str]:
        """Stop the run's tasks, then delete what was created, newest first.

        Safe to call more than once. Failures do not stop the removal of the other
        resources; each is logged.

        Returns
        -------
        list of str
            ``kind id`` of each resource that could not be deleted (empty when all went).
        """
        leftovers = self.ledger.delete()
        if self.left_registered:
            logger.debug(
                "the run's task definitions stay registered (deregistering needs %s on every task definition "
                "of the account, which the runner policy leaves out; `flowrig aws leftovers --remove` "
                "deregisters them): %s", iam_docs.DEREGISTER_ACTION, ", ".join(self.left_registered),
            )
        return leftovers

    def _stop_tasks(self, sources: list[tuple[str, str]], deadline: float) -> None:
        for cluster_arn, started_by in sources:
            self._stop_tasks_of(cluster_arn, started_by, deadline)

    def _stop_tasks_of(self, cluster_arn: str, started_by: str, deadline: float) -> None:
        from botocore.exceptions import ClientError

        ecs = self._client("ecs")
        try:
            arns = []
            for page in ecs.get_paginator("list_tasks").paginate(
                cluster=cluster_arn, startedBy=started_by, desiredStatus="RUNNING"
            ):
                arns.extend(page["taskArns"])
        except ClientError as exc:
            if exc.response["Error"]["Code"] == "ClusterNotFoundException":
                return
            raise
        for arn in arns:
            ecs.stop_task(cluster=cluster_arn, task=arn, reason=f"flowrig teardown ({started_by})")
        # Until tasks are STOPPED they hold network interfaces in the security group.
        while arns and time.monotonic() < deadline:
            tasks = []
            for start in range(0, len(arns), 100):
                tasks.extend(ecs.describe_tasks(cluster=cluster_arn, tasks=arns[start : start + 100])["tasks"])
            arns = [task["taskArn"] for task in tasks if task["lastStatus"] != "STOPPED"]
            if arns:
                time.sleep(_POLL_SECONDS)

    def _delete_task_definition(self, arn: str) -> None:
        from botocore.exceptions import ClientError

        ecs = self._client("ecs")
        try:
            ecs.deregister_task_definition(taskDefinition=arn)
        except ClientError as exc:
            if not denied(exc):
                raise
            # IAM cannot limit deregistering to the run's own task definitions, so
            # the runner policy leaves it out unless asked: the definition stays, its
            # secret and role gone, for `flowrig aws leftovers --remove`.
            self.left_registered.append(arn)
            return
        # Deregistered definitions stay listed as INACTIVE; deleting removes them.
        ecs.delete_task_definitions(taskDefinitions=[arn])
