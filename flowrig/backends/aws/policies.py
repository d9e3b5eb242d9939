"""IAM documents of the AWS backends, rendered as data: trust policies, the policies the
bootstrap makes, a run's secret policy, and the least-privilege policy of the runner.

Everything here is pure (the account, partition and options in, JSON-ready dicts out);
the calls that create roles and policies are in :mod:`flowrig.backends.aws.bootstrap`
and :mod:`flowrig.backends.aws.resources`; the runners' own policies are in
:mod:`flowrig.backends.aws.runner_policy`.

One run can never reach another. Everything a run makes carries :data:`OWNER_TAG`, its
maker's id as IAM gives it (``aws:userid``), and the runner policies let a caller
create only what carries its own id and act only on what carries it: IAM supplies the
value, so a runner cannot claim another's. Each run's identities (its execution role,
its instance role) read the secret of their own run only, named after the run they are
tagged with and made by their own owner (:func:`run_secret_reader_policy`,
:func:`instance_boundary_policy`), and every run's secret denies every other principal
(:func:`secret_read_policy`). Resources are scoped to what flowrig names (``flowrig-*``
clusters and task families, the ``/flowrig/`` log groups and IAM path, ``flowrig/``
secrets) as well; the few actions IAM authorizes only on ``"*"`` are listed in
:data:`UNSCOPED_ACTIONS`.
"""

from __future__ import annotations

from typing import Any

# Spelled here as before as well: ``policies.RUN_TAG`` and ``policies.Account`` are what
# readers of a policy look for.
from flowrig.backends.aws.names import EXECUTION_ROLE_POLICY, FAMILY_PREFIX
from flowrig.backends.aws.names import OWNER_TAG as OWNER_TAG
from flowrig.backends.aws.names import ROLE_PATH as ROLE_PATH
from flowrig.backends.aws.names import RUN_TAG as RUN_TAG
from flowrig.backends.aws.names import Account as Account
from flowrig.backends.aws.names import check_owner as check_owner

#: The execution role older versions of ``flowrig ecs bootstrap`` made for every run to
#: share. Runs no longer use it (any run could pass it to a task and read every other
#: run's secret): each run makes its own (:data:`RUN_ROLE_PATTERN`).
EXECUTION_ROLE_NAME = "flowrig-execution"
#: Names of the execution roles runs make for themselves: ``flowrig-<run id>-execution``.
RUN_ROLE_PATTERN = "flowrig-*-execution"
#: Service that assumes the roles: ECS tasks only.
ECS_TASKS = "ecs-tasks.amazonaws.com"
#: Service that assumes the instance roles of ``ec2`` runs: EC2 instances only.
EC2_INSTANCES = "ec2.amazonaws.com"
#: The policy variable IAM replaces with the caller's unique id.
CALLER = "${aws:userid}"
#: The customer-managed policy (on :data:`ROLE_PATH`) that ``flowrig aws bootstrap
#: --backend ecs`` makes once per account and every run's execution role gets: read
#: the run's own secret, and no other run's.
RUN_SECRET_READER_NAME = "flowrig-run-secret-reader"
#: The permissions boundary of every ``ec2`` run's instance role, a customer-managed
#: policy on :data:`ROLE_PATH` that the bootstrap makes once per account.
INSTANCE_BOUNDARY_NAME = "flowrig-instance-boundary"
#: The ECR actions that pull an image (besides ``ecr:GetAuthorizationToken``).
ECR_PULL_ACTIONS = ("ecr:BatchCheckLayerAvailability", "ecr:BatchGetImage", "ecr:GetDownloadUrlForLayer")

#: Actions that IAM authorizes only against ``"*"`` (no resource type, or none that
#: exists before the call).
UNSCOPED_ACTIONS = (
    "autoscaling:DescribeAutoScalingGroups",
    "autoscaling:DescribeLaunchConfigurations",
    "ec2:DescribeInstanceTypes",
    "ec2:DescribeLaunchTemplateVersions",
    "ec2:DescribeNatGateways",
    "ec2:DescribeRouteTables",
    "ec2:DescribeSecurityGroups",
    "ec2:DescribeSubnets",
    "ec2:DescribeVpcEndpoints",
    "ec2:DescribeVpcs",
    "sts:GetCallerIdentity",
)
#: What lets a runner deregister the task definitions of its runs. IAM has no resource
#: type for ``ecs:DeregisterTaskDefinition``: whoever may deregister one task definition
#: may deregister every task definition of the account, flowrig's or not. Only
#: ``flowrig aws iam-policy --deregister-task-definitions`` grants it.
DEREGISTER_ACTION = "ecs:DeregisterTaskDefinition"


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


def owned_by_caller(where: str = "ResourceTag") -> dict[str, dict[str, str]]:
    """The condition that the resource (``ResourceTag``) or the request's tags
    (``RequestTag``) name the caller as owner (:data:`OWNER_TAG` = ``${aws:userid}``)."""
    return {"StringEquals": {f"aws:{where}/{OWNER_TAG}": CALLER}}


def not_anothers() -> dict[str, dict[str, str]]:
    # Tagging at creation sees no tags on the resource yet; tagging an existing one
    # sees its owner tag, which must then be the caller's.
    return {"StringEqualsIfExists": {f"aws:ResourceTag/{OWNER_TAG}": CALLER}}


def _own_run_secrets(account: Account) -> dict[str, Any]:
    """GetSecretValue on the secret of the principal's own run (its name holds the run
    id the principal is tagged with), and only while the secret's owner is the
    principal's owner: tags the runner that made both set, and that no other runner
    can set to its own values."""
    return statement(
        "ReadOwnRunSecret",
        ["secretsmanager:GetSecretValue"],
        account.arn("secretsmanager", f"secret:{FAMILY_PREFIX}/${{aws:PrincipalTag/{RUN_TAG}}}/*"),
        StringEquals={f"aws:ResourceTag/{OWNER_TAG}": f"${{aws:PrincipalTag/{OWNER_TAG}}}"},
    )


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
        A policy document: reading the secret of the role's own run only (named after
        the run id the role is tagged with, and made by the role's owner), decrypting
        it through Secrets Manager only, and pulling images from ECR (any account's:
        the image may live in another one).
    """
    return {
        "Version": "2012-10-17",
        "Statement": [
            _own_run_secrets(account),
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


def run_secret_reader_arn(account: Account) -> str:
    """The ARN of the managed policy every run's execution role gets (:data:`RUN_SECRET_READER_NAME`)."""
    return account.arn("iam", f"policy{ROLE_PATH}{RUN_SECRET_READER_NAME}")


def run_secret_reader_policy(account: Account) -> dict[str, Any]:
    """What an ``ecs``/``fargate`` run's execution role may read: its own run's secret.

    ECS reads the secrets a task definition names with the task's execution role, so
    that role is the run's reader. One document serves every run (the bootstrap makes
    it once): the run is the role's, from its tags.
    """
    return {"Version": "2012-10-17", "Statement": [_own_run_secrets(account)]}


def execution_policy_arn(partition: str) -> str:
    """AWS's managed execution policy: pull the image from ECR, write logs."""
    return f"arn:{partition}:iam::aws:{EXECUTION_ROLE_POLICY}"


def role_arn(account: Account, name: str) -> str:
    """The ARN of a flowrig role (on :data:`ROLE_PATH`)."""
    return account.arn("iam", f"role{ROLE_PATH}{name}")


def execution_role_name(run_id: str) -> str:
    """The name of a run's execution role: ``flowrig-<run id>-execution`` (:data:`RUN_ROLE_PATTERN`)."""
    return f"{FAMILY_PREFIX}-{run_id}-execution"


def secret_name(run_id: str) -> str:
    """The Secrets Manager name of a run's certificates: ``flowrig/<run id>/tls``."""
    return f"{FAMILY_PREFIX}/{run_id}/tls"


def secret_read_policy(secret_arn: str, reader_role_arn: str, *, grant: bool = False) -> dict[str, Any]:
    """Resource policy of a run's secret: every principal but the run's reader is
    denied reading it, whatever its own policies allow (the runner that made it keeps
    its rights to delete it: it never reads it back).

    The reader's right comes from its own policy (:func:`run_secret_reader_policy`,
    :func:`instance_secret_policy`). With ``grant`` (a role the project named, which
    exists already) the policy also allows that role: naming a principal that IAM does
    not know yet, as a role made moments before, fails the call.
    """
    statements: list[dict[str, Any]] = []
    if grant:
        statements.append({
            "Sid": "RunReaderReads",
            "Effect": "Allow",
            "Principal": {"AWS": reader_role_arn},
            "Action": "secretsmanager:GetSecretValue",
            "Resource": secret_arn,
        })
    statements.append({
        "Sid": "NobodyElseReads",
        "Effect": "Deny",
        "Principal": "*",
        "Action": "secretsmanager:GetSecretValue",
        "Resource": secret_arn,
        "Condition": {"StringNotEquals": {"aws:PrincipalArn": reader_role_arn}},
    })
    return {"Version": "2012-10-17", "Statement": statements}


def statement(sid: str, actions: list[str], resources: list[str] | str, **condition: Any) -> dict[str, Any]:
    """One ``Allow`` statement: actions sorted, and a ``Condition`` when one is given."""
    allowed: dict[str, Any] = {"Sid": sid, "Effect": "Allow", "Action": sorted(actions), "Resource": resources}
    if condition:
        allowed["Condition"] = condition
    return allowed


def secret_statements(account: Account) -> list[dict[str, Any]]:
    """What a runner does with its runs' secrets: create them owned by itself, put a
    policy that blocks public access on them and delete them, only while it owns them."""
    secrets = account.arn("secretsmanager", f"secret:{FAMILY_PREFIX}/*")
    return [
        statement("RunSecretCreate", ["secretsmanager:CreateSecret"], secrets, **owned_by_caller("RequestTag")),
        statement(
            "RunSecretTag", ["secretsmanager:TagResource"], secrets,
            **owned_by_caller("RequestTag"), **not_anothers(),
        ),
        statement(
            "RunSecretPolicy", ["secretsmanager:PutResourcePolicy"], secrets,
            **{**owned_by_caller(), "Bool": {"secretsmanager:BlockPublicPolicy": "true"}},
        ),
        statement("RunSecretDelete", ["secretsmanager:DeleteSecret"], secrets, **owned_by_caller()),
    ]


def policy_actions(policy: dict[str, Any]) -> list[str]:
    """Every action a policy allows, sorted."""
    return sorted({action for statement in policy["Statement"] for action in statement["Action"]})
