"""What an AWS account needs once, before any run (``flowrig aws bootstrap``), and how a
run finds it: the customer-managed policies on flowrig's IAM path, made or brought up to
date, and the shared execution role older bootstraps made.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Callable

from flowrig.backends.aws import policies as iam_docs
from flowrig.backends.aws.names import Account
from flowrig.backends.aws.session import Session, aws_errors, no_such_entity
from flowrig.errors import BadInput

#: IAM keeps at most this many versions of a managed policy.
_POLICY_VERSIONS = 5


def ensure_managed_policy(
    aws: Session, account: Account, name: str, document: dict[str, Any], description: str
) -> tuple[str, str]:
    """The customer-managed policy ``name`` on flowrig's IAM path, created when missing
    and made today's ``document`` when an older bootstrap made another. Returns
    ``(arn, what was done)``: ``created``, ``updated`` or ``unchanged``."""
    from botocore.exceptions import ClientError

    iam = aws.client("iam")
    arn = account.arn("iam", f"policy{iam_docs.ROLE_PATH}{name}")
    with aws_errors(f"creating IAM policy {arn}"):
        try:
            default_version = iam.get_policy(PolicyArn=arn)["Policy"]["DefaultVersionId"]
        except ClientError as exc:
            if not no_such_entity(exc):
                raise
            iam.create_policy(
                PolicyName=name,
                Path=iam_docs.ROLE_PATH,
                PolicyDocument=json.dumps(document),
                Description=description,
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


@dataclass(frozen=True)
class ManagedPolicy:
    """One of the customer-managed policies the bootstrap makes once per account: how it
    is named and written, and what a run that misses it is told."""

    name: str
    document: Callable[[Account], dict[str, Any]]
    #: The policy's description in IAM.
    description: str
    #: What the policy is for, and how to make it, in the error of a run that misses it.
    purpose: str
    fix: str

    def arn(self, account: Account) -> str:
        """The policy's ARN in ``account`` (on flowrig's IAM path)."""
        return account.arn("iam", f"policy{iam_docs.ROLE_PATH}{self.name}")

    def ensure(self, aws: Session, account: Account) -> tuple[str, str]:
        """:func:`ensure_managed_policy` with this policy's name, document and description."""
        return ensure_managed_policy(aws, account, self.name, self.document(account), self.description)

    def find(self, aws: Session) -> str:
        """The policy's ARN.

        Raises
        ------
        BadInput
            When the account has no such policy (with the command that makes it).
        """
        from botocore.exceptions import ClientError

        arn = self.arn(aws.account())
        with aws_errors(f"looking up IAM policy {arn}"):
            try:
                aws.client("iam").get_policy(PolicyArn=arn)
                return arn
            except ClientError as exc:
                if not no_such_entity(exc):
                    raise
        raise BadInput(f"IAM policy {arn} ({self.purpose}) does not exist: {self.fix}")


#: The permissions boundary of every ``ec2`` run's instance role.
INSTANCE_BOUNDARY = ManagedPolicy(
    iam_docs.INSTANCE_BOUNDARY_NAME, iam_docs.instance_boundary_policy,
    "flowrig: the most an ec2 run's instance role may be allowed (its permissions boundary)",
    "the permissions boundary of ec2 runs' instance roles",
    "run `flowrig aws bootstrap --backend ec2` once for the account, or set iam_instance_profile in "
    "[cluster.options]",
)
#: What lets each ``ecs``/``fargate`` run's execution role read its own run's secret.
RUN_SECRET_READER = ManagedPolicy(
    iam_docs.RUN_SECRET_READER_NAME, iam_docs.run_secret_reader_policy,
    "flowrig: an ecs/fargate run's execution role reads its own run's secret and no other",
    "what lets each run's execution role read its own run's secret",
    "run `flowrig aws bootstrap --backend ecs` once for the account, or set execution_role_arn in "
    "[cluster.options]",
)


def ensure_instance_boundary(aws: Session, account: Account) -> tuple[str, str]:
    """The ``ec2`` instance roles' permissions boundary (:func:`ensure_managed_policy`)."""
    return INSTANCE_BOUNDARY.ensure(aws, account)


def ensure_run_secret_reader(aws: Session, account: Account) -> tuple[str, str]:
    """The policy every ``ecs``/``fargate`` run's execution role gets (:func:`ensure_managed_policy`)."""
    return RUN_SECRET_READER.ensure(aws, account)


def legacy_execution_role(aws: Session) -> str | None:
    """The ARN of the shared execution role older bootstraps made, if the account has it."""
    from botocore.exceptions import ClientError

    with aws_errors(f"looking up IAM role {iam_docs.EXECUTION_ROLE_NAME}"):
        try:
            return str(aws.client("iam").get_role(RoleName=iam_docs.EXECUTION_ROLE_NAME)["Role"]["Arn"])
        except ClientError as exc:
            if not no_such_entity(exc):
                raise
    return None


def find_instance_boundary(aws: Session) -> str:
    """The ARN of the instance roles' permissions boundary the bootstrap made
    (:meth:`ManagedPolicy.find`)."""
    return INSTANCE_BOUNDARY.find(aws)


def find_run_secret_reader(aws: Session) -> str:
    """The ARN of the policy that lets a run's execution role read its own run's secret
    (:meth:`ManagedPolicy.find`)."""
    return RUN_SECRET_READER.find(aws)
