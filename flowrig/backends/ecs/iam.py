"""IAM documents of the ECS backends, rendered as data: trust policies, the roles
``flowrig ecs bootstrap`` makes, and the least-privilege policy of the runner.

Everything here is pure (the account, partition and options in, JSON-ready dicts out);
the calls that create roles are in :mod:`flowrig.backends.ecs.aws`.

Resources are scoped to what flowrig names (``flowrig-*`` clusters and task families,
the ``/flowrig/`` log groups and IAM path, ``flowrig/`` secrets) and to its tags,
wherever IAM has a resource type or condition key for the action; the few actions IAM
authorizes only on ``"*"`` are listed in :data:`UNSCOPED_ACTIONS`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from flowrig.backends.ecs import defaults
from flowrig.backends.ecs.lease import LEASE_TAG

#: IAM path of every role flowrig makes (bootstrap or run time), so a policy can name
#: them all (``role/flowrig/*``) and nothing else.
ROLE_PATH = "/flowrig/"
#: The execution role ``flowrig ecs bootstrap`` makes once per account.
EXECUTION_ROLE_NAME = "flowrig-execution"
#: Names of the execution roles runs make for themselves (``create_roles = true``).
RUN_ROLE_PATTERN = "flowrig-*-execution"
#: Service that assumes the roles: ECS tasks only.
ECS_TASKS = "ecs-tasks.amazonaws.com"
#: Service that assumes the instance roles of ``ec2`` runs: EC2 instances only.
EC2_INSTANCES = "ec2.amazonaws.com"
#: Tag every resource of a run carries (its value is the run id).
RUN_TAG = "flowrig-run-id"
#: The permissions boundary of every ``ec2`` run's instance role, a customer-managed
#: policy on :data:`ROLE_PATH` that the bootstrap makes once per account.
INSTANCE_BOUNDARY_NAME = "flowrig-instance-boundary"
#: The ECR actions that pull an image (besides ``ecr:GetAuthorizationToken``).
ECR_PULL_ACTIONS = ("ecr:BatchCheckLayerAvailability", "ecr:BatchGetImage", "ecr:GetDownloadUrlForLayer")

#: Actions that IAM authorizes only against ``"*"`` (no resource type, or none that
#: exists before the call).
UNSCOPED_ACTIONS = (
    "ec2:DescribeSubnets",
    "ec2:DescribeVpcs",
    "ecs:DeleteTaskDefinitions",
    "ecs:DeregisterTaskDefinition",
    "ecs:RegisterTaskDefinition",
)


@dataclass(frozen=True)
class Account:
    """Where policies point: the partition (``aws``) and the 12-digit account id."""

    partition: str
    account_id: str

    def arn(self, service: str, resource: str, region: str = "*") -> str:
        """``arn:PARTITION:SERVICE:REGION:ACCOUNT:RESOURCE`` (IAM ARNs have no region)."""
        region = "" if service == "iam" else region
        return f"arn:{self.partition}:{service}:{region}:{self.account_id}:{resource}"


def trust_policy(account: Account) -> dict[str, Any]:
    """Only ECS tasks of ``account`` may assume the role (``aws:SourceAccount``), so
    no other account's task can be made to act as it (the confused deputy)."""
    return {
        "Version": "2012-10-17",
        "Statement": [{
            "Effect": "Allow",
            "Principal": {"Service": ECS_TASKS},
            "Action": "sts:AssumeRole",
            "Condition": {"StringEquals": {"aws:SourceAccount": account.account_id}},
        }],
    }


def instance_trust_policy() -> dict[str, Any]:
    """Only EC2 instances may assume an ``ec2`` run's instance role (through its
    instance profile, which only the run's own instances carry)."""
    return {
        "Version": "2012-10-17",
        "Statement": [{"Effect": "Allow", "Principal": {"Service": EC2_INSTANCES}, "Action": "sts:AssumeRole"}],
    }


def instance_secret_policy(secret_arn: str) -> dict[str, Any]:
    """The one inline policy of an ``ec2`` run's instance role: read the run's secret."""
    return {
        "Version": "2012-10-17",
        "Statement": [{
            "Sid": "ReadRunSecret",
            "Effect": "Allow",
            "Action": "secretsmanager:GetSecretValue",
            "Resource": secret_arn,
        }],
    }


def image_pull_policy(repository_arn: str) -> dict[str, Any]:
    """An ``ec2`` run's instance role may log in to ECR and pull from one repository."""
    return {
        "Version": "2012-10-17",
        "Statement": [
            # GetAuthorizationToken has no resource type: IAM authorizes it on "*" only.
            {"Sid": "LogInToECR", "Effect": "Allow", "Action": "ecr:GetAuthorizationToken", "Resource": "*"},
            {
                "Sid": "PullRunImage",
                "Effect": "Allow",
                "Action": list(ECR_PULL_ACTIONS),
                "Resource": repository_arn,
            },
        ],
    }


def instance_boundary_arn(account: Account) -> str:
    """The ARN of the instance roles' permissions boundary (:data:`INSTANCE_BOUNDARY_NAME`)."""
    return account.arn("iam", f"policy{ROLE_PATH}{INSTANCE_BOUNDARY_NAME}")


def instance_boundary_policy(account: Account) -> dict[str, Any]:
    """The most an ``ec2`` run's instance role may ever be allowed, whatever its inline
    policies say.

    IAM cannot restrict the document ``iam:PutRolePolicy`` writes, so a holder of the
    runner policy could otherwise give a ``flowrig-*-instance`` role any right and start
    an instance with it. The runner may create such roles and write their policies only
    with this boundary set, and may not remove or change it; the boundary caps them at
    what :func:`instance_secret_policy` and :func:`image_pull_policy` grant a run.

    Parameters
    ----------
    account
        Partition and account of the secrets and keys.

    Returns
    -------
    dict
        A policy document: reading ``flowrig/`` secrets of the account (each run's
        secret denies every other principal in its resource policy, so one run's role
        cannot read another run's), decrypting them through Secrets Manager only, and
        pulling images from ECR (any account's: the image may live in another one).
    """
    return {
        "Version": "2012-10-17",
        "Statement": [
            statement(
                "ReadRunSecrets",
                ["secretsmanager:GetSecretValue"],
                account.arn("secretsmanager", f"secret:{defaults.FAMILY_PREFIX}/*"),
            ),
            # The aws/secretsmanager key's policy grants decryption through Secrets
            # Manager to the account's principals; a boundary without it would cut that
            # off, and the fix of a secret that cannot be read names kms:Decrypt.
            statement(
                "DecryptThroughSecretsManager",
                ["kms:Decrypt"],
                account.arn("kms", "key/*"),
                StringLike={"kms:ViaService": "secretsmanager.*.amazonaws.com"},
            ),
            # GetAuthorizationToken has no resource type: IAM authorizes it on "*" only.
            statement("LogInToECR", ["ecr:GetAuthorizationToken"], "*"),
            statement("PullImages", list(ECR_PULL_ACTIONS), f"arn:{account.partition}:ecr:*:*:repository/*"),
        ],
    }


def execution_policy_arn(partition: str) -> str:
    """AWS's managed execution policy: pull the image from ECR, write logs."""
    return f"arn:{partition}:iam::aws:{defaults.EXECUTION_ROLE_POLICY}"


def role_arn(account: Account, name: str) -> str:
    """The ARN of a flowrig role (on :data:`ROLE_PATH`)."""
    return account.arn("iam", f"role{ROLE_PATH}{name}")


def secret_name(run_id: str) -> str:
    """The Secrets Manager name of a run's certificates: ``flowrig/<run id>/tls``."""
    return f"{defaults.FAMILY_PREFIX}/{run_id}/tls"


def secret_read_policy(secret_arn: str, execution_role_arn: str) -> dict[str, Any]:
    """Resource policy of a run's secret: its execution role may read it, and every
    other principal is denied reading it, whatever its own policies allow (the runner
    that made it keeps its rights to delete it: it never reads it back)."""
    return {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Sid": "RunExecutionRoleReads",
                "Effect": "Allow",
                "Principal": {"AWS": execution_role_arn},
                "Action": "secretsmanager:GetSecretValue",
                "Resource": secret_arn,
            },
            {
                "Sid": "NobodyElseReads",
                "Effect": "Deny",
                "Principal": "*",
                "Action": "secretsmanager:GetSecretValue",
                "Resource": secret_arn,
                "Condition": {"StringNotEquals": {"aws:PrincipalArn": execution_role_arn}},
            },
        ],
    }


def statement(sid: str, actions: list[str], resources: list[str] | str, **condition: Any) -> dict[str, Any]:
    """One ``Allow`` statement: actions sorted, and a ``Condition`` when one is given."""
    allowed: dict[str, Any] = {"Sid": sid, "Effect": "Allow", "Action": sorted(actions), "Resource": resources}
    if condition:
        allowed["Condition"] = condition
    return allowed


def runner_policy(account: Account, *, create_roles: bool = False) -> dict[str, Any]:
    """The least-privilege policy of a runner of ``fargate``/``ecs`` runs.

    Parameters
    ----------
    account
        Partition and account the resources live in.
    create_roles
        Add what ``create_roles = true`` needs: creating and deleting roles on
        :data:`ROLE_PATH` (with the AWS managed execution policy only).
    """
    prefix = defaults.FAMILY_PREFIX
    tagged = {"StringEquals": {"aws:ResourceTag/createdBy": "flowrig"}}
    lease_only = {"ForAllValues:StringEquals": {"aws:TagKeys": [LEASE_TAG]}}
    statements = [
        statement("Describe", list(UNSCOPED_ACTIONS), "*"),
        statement("Clusters", ["ecs:CreateCluster", "ecs:DeleteCluster"], account.arn("ecs", f"cluster/{prefix}-*")),
        statement(
            "Tasks",
            ["ecs:RunTask"],
            account.arn("ecs", f"task-definition/{prefix}-*:*"),
        ),
        statement(
            "ObserveTasks",
            ["ecs:DescribeTasks", "ecs:StopTask"],
            account.arn("ecs", f"task/{prefix}-*/*"),
        ),
        statement(
            "ListTasks",
            ["ecs:ListTasks"],
            account.arn("ecs", f"container-instance/{prefix}-*/*"),
        ),
        statement(
            "TagOnCreate",
            ["ecs:TagResource"],
            "*",
            StringEquals={"ecs:CreateAction": ["CreateCluster", "RegisterTaskDefinition", "RunTask"]},
        ),
        # The lease `flowrig aws leftovers` reads: only its tag, on the run's own cluster,
        # task definitions and security group, or on its tasks when it made none of them.
        statement(
            "RenewLease",
            ["ecs:TagResource"],
            [account.arn("ecs", f"cluster/{prefix}-*"), account.arn("ecs", f"task-definition/{prefix}-*:*"),
             account.arn("ecs", "task/*/*")],
            **lease_only,
        ),
        statement(
            "SecurityGroupCreate",
            ["ec2:CreateSecurityGroup"],
            [account.arn("ec2", "vpc/*"), account.arn("ec2", "security-group/*")],
        ),
        statement(
            "SecurityGroupTagOnCreate",
            ["ec2:CreateTags"],
            account.arn("ec2", "security-group/*"),
            StringEquals={"ec2:CreateAction": "CreateSecurityGroup"},
        ),
        statement(
            "SecurityGroupOwn",
            ["ec2:AuthorizeSecurityGroupIngress", "ec2:DeleteSecurityGroup"],
            account.arn("ec2", "security-group/*"),
            **tagged,
        ),
        statement(
            "SecurityGroupRenewLease",
            ["ec2:CreateTags"],
            account.arn("ec2", "security-group/*"),
            **{"StringEquals": tagged["StringEquals"], **lease_only},
        ),
        statement(
            "Logs",
            ["logs:CreateLogGroup", "logs:DeleteLogGroup", "logs:TagResource"],
            account.arn("logs", f"log-group:/{prefix}/*"),
        ),
        statement(
            "RunSecret",
            [
                "secretsmanager:CreateSecret",
                "secretsmanager:DeleteSecret",
                "secretsmanager:PutResourcePolicy",
                "secretsmanager:TagResource",
            ],
            account.arn("secretsmanager", f"secret:{prefix}/*"),
        ),
        statement("FindRoles", ["iam:GetRole"], role_arn(account, "*")),
        statement(
            "PassRolesToTasks",
            ["iam:PassRole"],
            role_arn(account, "*"),
            StringEquals={"iam:PassedToService": ECS_TASKS},
        ),
    ]
    if create_roles:
        statements.append(statement(
            "RunRoles",
            ["iam:CreateRole", "iam:DeleteRole", "iam:TagRole", "iam:ListAttachedRolePolicies",
             "iam:DetachRolePolicy"],
            # A run's own role (flowrig-RUN-execution); not the bootstrap role every run
            # shares (flowrig-execution), which this pattern cannot match.
            role_arn(account, RUN_ROLE_PATTERN),
        ))
        statements.append(statement(
            "RunRolesExecutionPolicyOnly",
            ["iam:AttachRolePolicy"],
            role_arn(account, RUN_ROLE_PATTERN),
            ArnEquals={"iam:PolicyARN": execution_policy_arn(account.partition)},
        ))
        statements.append(statement("WhoAmI", ["sts:GetCallerIdentity"], "*"))
    return {"Version": "2012-10-17", "Statement": statements}


def policy_actions(policy: dict[str, Any]) -> list[str]:
    """Every action a policy allows, sorted."""
    return sorted({action for statement in policy["Statement"] for action in statement["Action"]})
