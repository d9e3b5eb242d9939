"""What an AWS account needs once, before any run (``flowrig aws bootstrap``), and how a
run finds it: the customer-managed policies on flowrig's IAM path, made or brought up to
date, and the shared execution role older bootstraps made.
"""

from __future__ import annotations

import json
from typing import Any

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


def ensure_instance_boundary(aws: Session, account: Account) -> tuple[str, str]:
    """The ``ec2`` instance roles' permissions boundary (:func:`ensure_managed_policy`)."""
    return ensure_managed_policy(
        aws, account, iam_docs.INSTANCE_BOUNDARY_NAME, iam_docs.instance_boundary_policy(account),
        "flowrig: the most an ec2 run's instance role may be allowed (its permissions boundary)",
    )


def ensure_run_secret_reader(aws: Session, account: Account) -> tuple[str, str]:
    """The policy every ``ecs``/``fargate`` run's execution role gets (:func:`ensure_managed_policy`)."""
    return ensure_managed_policy(
        aws, account, iam_docs.RUN_SECRET_READER_NAME, iam_docs.run_secret_reader_policy(account),
        "flowrig: an ecs/fargate run's execution role reads its own run's secret and no other",
    )


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


def _find_policy(aws: Session, arn: str, what: str, fix: str) -> str:
    from botocore.exceptions import ClientError

    with aws_errors(f"looking up IAM policy {arn}"):
        try:
            aws.client("iam").get_policy(PolicyArn=arn)
            return arn
        except ClientError as exc:
            if not no_such_entity(exc):
                raise
    raise BadInput(f"IAM policy {arn} ({what}) does not exist: {fix}")


def find_instance_boundary(aws: Session) -> str:
    """The ARN of the instance roles' permissions boundary the bootstrap made.

    Raises
    ------
    BadInput
        When there is none (with the command that makes it).
    """
    return _find_policy(
        aws, iam_docs.instance_boundary_arn(aws.account()),
        "the permissions boundary of ec2 runs' instance roles",
        "run `flowrig aws bootstrap --backend ec2` once for the account, or set iam_instance_profile in "
        "[cluster.options]",
    )


def find_run_secret_reader(aws: Session) -> str:
    """The ARN of the policy that lets a run's execution role read its own run's secret.

    Raises
    ------
    BadInput
        When there is none (with the command that makes it).
    """
    return _find_policy(
        aws, iam_docs.run_secret_reader_arn(aws.account()),
        "what lets each run's execution role read its own run's secret",
        "run `flowrig aws bootstrap --backend ecs` once for the account, or set execution_role_arn in "
        "[cluster.options]",
    )
