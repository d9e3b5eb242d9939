"""The one place flowrig's own AWS code calls AWS (botocore).

Calls are thin: parameters come rendered from :mod:`~flowrig.backends.ecs.taskdefs` or
the backend, and botocore's errors become one-line flowrig errors (:func:`aws_errors`).
botocore honours ``AWS_ENDPOINT_URL`` and the usual credential chain, so the same code
talks to AWS or to a local emulator. botocore rather than boto3: it is what
dask-cloudprovider's aiobotocore pins, and boto3 adds nothing flowrig uses.
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
from contextlib import contextmanager
from typing import Any, Iterator, Mapping

from flowrig.backends.ecs import iam as iam_docs
from flowrig.backends.ecs.defaults import CLEANUP_TIMEOUT
from flowrig.errors import BadInput, InfrastructureError, one_line
from flowrig.roles import DASHBOARD_PORT, SCHEDULER_PORT

logger = logging.getLogger("flowrig.ecs")

#: Attempts and connect timeout (seconds) of every AWS call flowrig makes itself
#: (botocore's standard retries: exponential backoff with full jitter, throttling
#: included); an unreachable endpoint fails in seconds instead of retrying for minutes.
#: ``AWS_MAX_ATTEMPTS`` and ``AWS_RETRY_MODE`` (``adaptive``) override them.
MAX_ATTEMPTS = 5
CONNECT_TIMEOUT = 10

#: Seconds between checks while tasks stop, and between retries of a refused deletion.
_POLL_SECONDS = 2
_RETRY_SECONDS = 5



@contextmanager
def aws_errors(action: str) -> Iterator[None]:
    """Turn botocore's errors raised while doing ``action`` into flowrig errors.

    Missing credentials or region and invalid parameters are :class:`BadInput` (exit 2);
    an unreachable endpoint, a timeout or a refusal by AWS is
    :class:`InfrastructureError` (exit 3). Each message is one line.
    """
    from botocore import exceptions as bx

    try:
        yield
    except (bx.NoCredentialsError, bx.PartialCredentialsError) as exc:
        raise BadInput(
            f"no usable AWS credentials while {action} ({one_line(exc)}): set "
            "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE"
        ) from None
    except bx.NoRegionError:
        raise BadInput(f"no AWS region while {action}: pass --region or set AWS_REGION") from None
    except bx.ParamValidationError as exc:
        raise BadInput(f"invalid AWS parameters while {action}: {one_line(exc)}") from None
    except (bx.EndpointConnectionError, bx.ConnectTimeoutError, bx.ReadTimeoutError) as exc:
        raise InfrastructureError(f"cannot reach AWS while {action}: {one_line(exc)}") from None
    except bx.ClientError as exc:
        error = exc.response.get("Error", {})
        code, message = str(error.get("Code", "error")), str(error.get("Message", exc))
        # Some endpoints answer a JSON API with an XML error body, which botocore keeps whole.
        xml = re.search(r"<Code>(.*?)</Code>.*?<Message>(.*?)</Message>", message, re.DOTALL)
        if xml:
            code, message = xml.groups()
        raise InfrastructureError(f"AWS refused {action}: {code}: {one_line(message)}") from None
    except bx.BotoCoreError as exc:
        raise InfrastructureError(f"AWS call failed while {action}: {one_line(exc)}") from None


class Session:
    """A region, credentials and the clients made from them (one client per service).

    Parameters
    ----------
    region
        The AWS region; default: the usual configuration (``AWS_REGION``, profile).
    access_key_id, secret_access_key
        Credentials; default: botocore's usual chain (environment, profile, role).
    """

    def __init__(
        self, region: str | None = None, *, access_key_id: str | None = None, secret_access_key: str | None = None
    ) -> None:
        try:
            import botocore.session
        except ImportError:
            raise BadInput("AWS support needs botocore: pip install 'flowrig[aws]'") from None
        with aws_errors("loading the AWS configuration"):
            self._session = botocore.session.get_session()
            if access_key_id and secret_access_key:
                self._session.set_credentials(access_key_id, secret_access_key)
            self.region_name = region or self._session.get_config_variable("region")
            if not self.region_name:
                raise BadInput("no AWS region: pass --region or set AWS_REGION")
            if self._session.get_credentials() is None:
                raise BadInput(
                    "no AWS credentials found: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, "
                    "or AWS_PROFILE"
                )
        self._clients: dict[str, Any] = {}

    def client(self, service: str) -> Any:
        """A client with few retries and a short connect timeout, made once per service."""
        if service not in self._clients:
            from botocore.config import Config

            config = Config(
                retries={
                    "max_attempts": int(os.environ.get("AWS_MAX_ATTEMPTS") or MAX_ATTEMPTS),
                    "mode": os.environ.get("AWS_RETRY_MODE") or "standard",
                },
                connect_timeout=CONNECT_TIMEOUT,
            )
            self._clients[service] = self._session.create_client(
                service, region_name=self.region_name, config=config
            )
        return self._clients[service]

    @property
    def partition(self) -> str:
        """The region's partition (``aws``, ``aws-cn``, ``aws-us-gov``), for ARNs."""
        return self._session.get_partition_for_region(self.region_name)

    def account(self) -> iam_docs.Account:
        """The partition and the account the credentials belong to."""
        with aws_errors("asking AWS which account the credentials belong to"):
            account_id = self.client("sts").get_caller_identity()["Account"]
        return iam_docs.Account(self.partition, account_id)


def find_role(aws: Session, name: str) -> str:
    """The ARN of the pre-created role ``name``.

    Raises
    ------
    BadInput
        When there is no such role (with the command that makes it).
    """
    from botocore.exceptions import ClientError

    with aws_errors(f"looking up IAM role {name}"):
        try:
            return aws.client("iam").get_role(RoleName=name)["Role"]["Arn"]
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") != "NoSuchEntity":
                raise
    raise BadInput(
        f"IAM role {name} does not exist: run `flowrig ecs bootstrap` once for the account, "
        "set execution_role_arn in [cluster.options], or set create_roles = true"
    )


def ensure_role(aws: Session, account: iam_docs.Account, name: str, description: str) -> tuple[str, bool]:
    """The bootstrap role ``name`` on flowrig's IAM path with the execution policy;
    created when missing. Returns ``(arn, created)``."""
    from botocore.exceptions import ClientError

    iam = aws.client("iam")
    with aws_errors(f"creating IAM role {name}"):
        try:
            arn = iam.get_role(RoleName=name)["Role"]["Arn"]
            created = False
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") != "NoSuchEntity":
                raise
            arn = iam.create_role(
                RoleName=name,
                Path=iam_docs.ROLE_PATH,
                AssumeRolePolicyDocument=json.dumps(iam_docs.trust_policy(account)),
                Description=description,
                Tags=[{"Key": "createdBy", "Value": "flowrig ecs bootstrap"}],
            )["Role"]["Arn"]
            created = True
        # Idempotent: a role from an older bootstrap gets today's trust and policy.
        iam.update_assume_role_policy(RoleName=name, PolicyDocument=json.dumps(iam_docs.trust_policy(account)))
        iam.attach_role_policy(RoleName=name, PolicyArn=iam_docs.execution_policy_arn(account.partition))
    return arn, created


#: IAM keeps at most this many versions of a managed policy.
_POLICY_VERSIONS = 5


def _no_such_entity(exc: Exception) -> bool:
    return getattr(exc, "response", {}).get("Error", {}).get("Code") == "NoSuchEntity"


def ensure_instance_boundary(aws: Session, account: iam_docs.Account) -> tuple[str, str]:
    """The ``ec2`` instance roles' permissions boundary, created when missing and made
    today's document when an older bootstrap made another. Returns ``(arn, what was done)``:
    ``created``, ``updated`` or ``unchanged``."""
    from botocore.exceptions import ClientError

    iam = aws.client("iam")
    arn = iam_docs.instance_boundary_arn(account)
    document = iam_docs.instance_boundary_policy(account)
    with aws_errors(f"creating IAM policy {arn}"):
        try:
            default_version = iam.get_policy(PolicyArn=arn)["Policy"]["DefaultVersionId"]
        except ClientError as exc:
            if not _no_such_entity(exc):
                raise
            iam.create_policy(
                PolicyName=iam_docs.INSTANCE_BOUNDARY_NAME,
                Path=iam_docs.ROLE_PATH,
                PolicyDocument=json.dumps(document),
                Description="flowrig: the most an ec2 run's instance role may be allowed (its permissions boundary)",
                Tags=[{"Key": "createdBy", "Value": "flowrig bootstrap"}],
            )
            return arn, "created"
        current = iam.get_policy_version(PolicyArn=arn, VersionId=default_version)["PolicyVersion"]["Document"]
        if isinstance(current, str):  # URL-encoded JSON, when the client does not decode it
            from urllib.parse import unquote

            current = json.loads(unquote(current))
        if current == document:
            return arn, "unchanged"
        versions = iam.list_policy_versions(PolicyArn=arn)["Versions"]
        older = sorted((v for v in versions if not v["IsDefaultVersion"]), key=lambda v: v["CreateDate"])
        if len(versions) >= _POLICY_VERSIONS and older:
            iam.delete_policy_version(PolicyArn=arn, VersionId=older[0]["VersionId"])
        iam.create_policy_version(PolicyArn=arn, PolicyDocument=json.dumps(document), SetAsDefault=True)
    return arn, "updated"


def find_instance_boundary(aws: Session) -> str:
    """The ARN of the instance roles' permissions boundary the bootstrap made.

    Raises
    ------
    BadInput
        When there is none (with the command that makes it).
    """
    from botocore.exceptions import ClientError

    arn = iam_docs.instance_boundary_arn(aws.account())
    with aws_errors(f"looking up IAM policy {arn}"):
        try:
            aws.client("iam").get_policy(PolicyArn=arn)
            return arn
        except ClientError as exc:
            if not _no_such_entity(exc):
                raise
    raise BadInput(
        f"IAM policy {arn} (the permissions boundary of ec2 runs' instance roles) does not exist: run "
        "`flowrig aws bootstrap --backend ec2` once for the account, or set iam_instance_profile in "
        "[cluster.options]"
    )


def session(region: str | None = None, **credentials: str | None) -> Session:
    """A :class:`Session`, its region and credentials checked before any call is made.

    Raises
    ------
    BadInput
        When botocore is missing, or no region or credentials are configured.
    """
    return Session(region, **credentials)


def register_task_definitions(
    aws: Session, task_definitions: Mapping[str, Mapping[str, Any]]
) -> dict[str, str]:
    """Register each task definition; return ``role -> taskDefinitionArn``."""
    ecs = aws.client("ecs")
    arns = {}
    for role, params in task_definitions.items():
        with aws_errors(f"registering the {role} task definition"):
            response = ecs.register_task_definition(**params)
        arns[role] = response["taskDefinition"]["taskDefinitionArn"]
    return arns


def _ecs_tags(tags: Mapping[str, str]) -> list[dict[str, str]]:
    return [{"key": key, "value": value} for key, value in sorted(tags.items())]


def _upper_tags(tags: Mapping[str, str]) -> list[dict[str, str]]:
    return [{"Key": key, "Value": value} for key, value in sorted(tags.items())]


class RunResources:
    """The AWS resources one run created, and their removal in reverse order.

    Every ``create_*`` method tags what it creates and records it at once, so a run
    that fails half-way still removes everything it made. :meth:`delete` also stops
    any task the run started (found by its ``startedBy`` value), including tasks whose
    start was interrupted.

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
        self._created: list[tuple[str, str]] = []
        self._task_sources: list[tuple[str, str]] = []

    def _client(self, service: str) -> Any:
        return self.aws.client(service)

    @property
    def created(self) -> list[tuple[str, str]]:
        """``(kind, id)`` of every resource created and not yet deleted, oldest first."""
        return list(self._created)

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
        self._created.append(("cluster", arn))
        return arn

    def create_execution_role(self, name: str) -> str:
        """A run's execution role: only ECS tasks of this account may assume it, and it
        holds AWS's managed execution policy alone; returns its ARN."""
        iam = self._client("iam")
        account = self.aws.account()
        with aws_errors(f"creating IAM role {name}"):
            response = iam.create_role(
                RoleName=name,
                Path=iam_docs.ROLE_PATH,
                AssumeRolePolicyDocument=json.dumps(iam_docs.trust_policy(account)),
                Description="flowrig: lets ECS pull the image and write logs for one run",
                Tags=_upper_tags(self.tags),
            )
            self._created.append(("role", name))
            iam.attach_role_policy(RoleName=name, PolicyArn=iam_docs.execution_policy_arn(account.partition))
        return response["Role"]["Arn"]

    def create_run_secret(self, name: str, value: str, reader_role_arn: str) -> str:
        """A Secrets Manager secret holding ``value`` that only ``reader_role_arn`` is
        named to read (resource policy); returns its ARN. Deleted without recovery."""
        client = self._client("secretsmanager")
        with aws_errors(f"creating secret {name}"):
            arn = client.create_secret(
                Name=name,
                SecretString=value,
                Description="flowrig: one run's TLS certificates, deleted with the run",
                Tags=_upper_tags(self.tags),
            )["ARN"]
            self._created.append(("secret", arn))
            client.put_resource_policy(
                SecretId=arn,
                ResourcePolicy=json.dumps(iam_docs.secret_read_policy(arn, reader_role_arn)),
                BlockPublicPolicy=True,
            )
        return arn

    def create_log_group(self, name: str) -> str:
        """A CloudWatch log group; returns its name."""
        with aws_errors(f"creating log group {name}"):
            self._client("logs").create_log_group(logGroupName=name, tags=dict(self.tags))
        self._created.append(("log-group", name))
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
            self._created.append(("security-group", group_id))
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
        """Register a task definition (tags are the caller's); returns its ARN."""
        with aws_errors(f"registering task definition {params.get('family')}"):
            response = self._client("ecs").register_task_definition(**params)
        arn = response["taskDefinition"]["taskDefinitionArn"]
        self._created.append(("task-definition", arn))
        return arn

    def track_tasks(self, cluster_arn: str, started_by: str) -> None:
        """Stop every task ``started_by`` in ``cluster_arn`` when :meth:`delete` runs."""
        if (cluster_arn, started_by) not in self._task_sources:
            self._task_sources.append((cluster_arn, started_by))

    @property
    def task_sources(self) -> list[tuple[str, str]]:
        """``(cluster ARN, startedBy)`` of the tasks :meth:`delete` stops."""
        return list(self._task_sources)

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
        deadline = time.monotonic() + self.cleanup_timeout
        leftovers = []
        for cluster_arn, started_by in list(self._task_sources):
            try:
                self._stop_tasks(cluster_arn, started_by, deadline)
                self._task_sources.remove((cluster_arn, started_by))
            except Exception as exc:  # keep going: the other resources can still go
                logger.warning("could not stop the tasks of %s in %s: %s", started_by, cluster_arn, exc)
                leftovers.append(f"tasks {started_by} in {cluster_arn}")
        for kind, ident in reversed(list(self._created)):
            try:
                self._delete_one(kind, ident, deadline)
                self._created.remove((kind, ident))
            except Exception as exc:
                logger.warning("could not delete %s %s: %s", kind, ident, one_line(exc))
                leftovers.append(f"{kind} {ident}")
        return leftovers

    def _stop_tasks(self, cluster_arn: str, started_by: str, deadline: float) -> None:
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

    def _delete_one(self, kind: str, ident: str, deadline: float) -> None:
        if kind == "task-definition":
            ecs = self._client("ecs")
            ecs.deregister_task_definition(taskDefinition=ident)
            # Deregistered definitions stay listed as INACTIVE; deleting removes them.
            ecs.delete_task_definitions(taskDefinitions=[ident])
        elif kind == "log-group":
            self._client("logs").delete_log_group(logGroupName=ident)
        elif kind == "security-group":
            # Interfaces of stopped tasks are released a little later: retry until then.
            self._retry(
                lambda: self._client("ec2").delete_security_group(GroupId=ident),
                {"DependencyViolation"},
                deadline,
            )
        elif kind == "secret":
            # No recovery window: the certificates are worthless after the run anyway.
            self._client("secretsmanager").delete_secret(SecretId=ident, ForceDeleteWithoutRecovery=True)
        elif kind == "role":
            iam = self._client("iam")
            for policy in iam.list_attached_role_policies(RoleName=ident)["AttachedPolicies"]:
                iam.detach_role_policy(RoleName=ident, PolicyArn=policy["PolicyArn"])
            iam.delete_role(RoleName=ident)
        elif kind == "cluster":
            self._retry(
                lambda: self._client("ecs").delete_cluster(cluster=ident),
                {"ClusterContainsTasksException", "UpdateInProgressException", "ResourceInUseException"},
                deadline,
            )
        else:  # pragma: no cover - every create_* records one of the kinds above
            raise ValueError(f"unknown resource kind {kind}")

    @staticmethod
    def _retry(call: Any, retry_codes: set[str], deadline: float) -> None:
        from botocore.exceptions import ClientError

        while True:
            try:
                call()
                return
            except ClientError as exc:
                if exc.response["Error"]["Code"] not in retry_codes or time.monotonic() > deadline:
                    raise
            time.sleep(_RETRY_SECONDS)
