"""IAM documents of the AWS backends, rendered as data: trust policies, the policies the
bootstrap makes, a run's secret policy, and the least-privilege policy of the runner.

Everything here is pure (the account, partition and options in, JSON-ready dicts out);
the calls that create roles and policies are in :mod:`flowrig.backends.ecs.aws`.

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

import re
from dataclasses import dataclass
from typing import Any

from flowrig.backends.ecs import defaults
from flowrig.backends.ecs.lease import LEASE_TAG

#: IAM path of every role flowrig makes (bootstrap or run time), so a policy can name
#: them all (``role/flowrig/*``) and nothing else.
ROLE_PATH = "/flowrig/"
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
#: Tag every resource of a run carries (its value is the run id).
RUN_TAG = "flowrig-run-id"
#: Tag every resource a run makes carries: who made it, as IAM names the caller
#: (``aws:userid``: an IAM user's id, or ``ROLE-ID:SESSION`` for a role's session, which
#: for an ECS task is the task's id). The runner policies let a caller create only
#: resources carrying its own id here and act only on resources that carry it, so a
#: runner cannot claim another's resources: IAM, not the caller, supplies the value.
OWNER_TAG = "flowrig-owner"
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
#: Characters IAM, ECS, EC2, Secrets Manager and CloudWatch Logs all take in a tag value.
_TAG_VALUE = re.compile(r"^[A-Za-z0-9 _.:/=+\-@]{1,256}$")

#: Actions that IAM authorizes only against ``"*"`` (no resource type, or none that
#: exists before the call).
UNSCOPED_ACTIONS = (
    "ec2:DescribeSubnets",
    "ec2:DescribeVpcs",
    "sts:GetCallerIdentity",
)
#: What lets a runner deregister the task definitions of its runs. IAM has no resource
#: type for ``ecs:DeregisterTaskDefinition``: whoever may deregister one task definition
#: may deregister every task definition of the account, flowrig's or not. Only
#: ``flowrig aws iam-policy --deregister-task-definitions`` grants it.
DEREGISTER_ACTION = "ecs:DeregisterTaskDefinition"


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


def check_owner(user_id: str) -> str:
    """``user_id`` (the caller's ``aws:userid``) when every service takes it as a tag value.

    Raises
    ------
    ValueError
        When it holds a character a tag value cannot (an assumed role's session name may
        hold a comma).
    """
    if not _TAG_VALUE.match(user_id):
        raise ValueError(
            f"the AWS caller id {user_id!r} cannot be a tag value (letters, digits, spaces and _.:/=+-@ "
            "only, 256 at most): use credentials whose role session name has none of the others"
        )
    return user_id


def owned_by_caller(where: str = "ResourceTag") -> dict[str, dict[str, str]]:
    """The condition that the resource (``ResourceTag``) or the request's tags
    (``RequestTag``) name the caller as owner (:data:`OWNER_TAG` = ``${aws:userid}``)."""
    return {"StringEquals": {f"aws:{where}/{OWNER_TAG}": CALLER}}


def _not_anothers() -> dict[str, dict[str, str]]:
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
        account.arn("secretsmanager", f"secret:{defaults.FAMILY_PREFIX}/${{aws:PrincipalTag/{RUN_TAG}}}/*"),
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
    return f"arn:{partition}:iam::aws:{defaults.EXECUTION_ROLE_POLICY}"


def role_arn(account: Account, name: str) -> str:
    """The ARN of a flowrig role (on :data:`ROLE_PATH`)."""
    return account.arn("iam", f"role{ROLE_PATH}{name}")


def execution_role_name(run_id: str) -> str:
    """The name of a run's execution role: ``flowrig-<run id>-execution`` (:data:`RUN_ROLE_PATTERN`)."""
    return f"{defaults.FAMILY_PREFIX}-{run_id}-execution"


def secret_name(run_id: str) -> str:
    """The Secrets Manager name of a run's certificates: ``flowrig/<run id>/tls``."""
    return f"{defaults.FAMILY_PREFIX}/{run_id}/tls"


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
    secrets = account.arn("secretsmanager", f"secret:{defaults.FAMILY_PREFIX}/*")
    return [
        statement("RunSecretCreate", ["secretsmanager:CreateSecret"], secrets, **owned_by_caller("RequestTag")),
        statement(
            "RunSecretTag", ["secretsmanager:TagResource"], secrets,
            **owned_by_caller("RequestTag"), **_not_anothers(),
        ),
        statement(
            "RunSecretPolicy", ["secretsmanager:PutResourcePolicy"], secrets,
            **{**owned_by_caller(), "Bool": {"secretsmanager:BlockPublicPolicy": "true"}},
        ),
        statement("RunSecretDelete", ["secretsmanager:DeleteSecret"], secrets, **owned_by_caller()),
    ]


def runner_policy(account: Account, *, deregister: bool = False) -> dict[str, Any]:
    """The least-privilege policy of a runner of ``fargate``/``ecs`` runs.

    Every resource the runner makes must carry its caller id as :data:`OWNER_TAG`, and
    it may change, use, pass or delete only what carries it: a runner (and so the flow
    it runs) cannot register a task definition outside ``flowrig-*``, run or stop
    another caller's tasks, pass another caller's role (or any role that is no run's:
    the shared roles of older bootstraps included), touch another caller's secret,
    cluster, security group or log group, nor take them over by tagging them. Each
    run's execution role reads its own run's secret only
    (:func:`run_secret_reader_policy`).

    Parameters
    ----------
    account
        Partition and account the resources live in.
    deregister
        Also let the runner deregister task definitions, which IAM cannot limit to its
        own (:data:`DEREGISTER_ACTION`), and delete its own deregistered ones.
        Without it a run's task definitions stay registered (inactive secrets and
        roles behind them) until ``flowrig aws leftovers --remove``.
    """
    prefix = defaults.FAMILY_PREFIX
    mine = owned_by_caller()
    made_mine = owned_by_caller("RequestTag")
    lease_only = {"ForAllValues:StringEquals": {"aws:TagKeys": [LEASE_TAG]}}
    clusters = account.arn("ecs", f"cluster/{prefix}-*")
    families = account.arn("ecs", f"task-definition/{prefix}-*")
    tasks = account.arn("ecs", "task/*")
    run_roles = role_arn(account, RUN_ROLE_PATTERN)
    reader = run_secret_reader_arn(account)
    statements = [
        statement("Describe", ["ec2:DescribeSubnets", "ec2:DescribeVpcs"], "*"),
        # The caller's own id becomes the owner tag (AWS answers any principal).
        statement("WhoAmI", ["sts:GetCallerIdentity"], "*"),
        statement("ClusterCreate", ["ecs:CreateCluster"], clusters, **made_mine),
        statement("ClusterDelete", ["ecs:DeleteCluster"], clusters, **mine),
        statement("TaskDefinitionRegister", ["ecs:RegisterTaskDefinition"], families, **made_mine),
        # Only the caller's task definitions, and the tasks carry its id too.
        statement(
            "RunOwnTaskDefinitions", ["ecs:RunTask"], families,
            StringEquals={f"aws:ResourceTag/{OWNER_TAG}": CALLER, f"aws:RequestTag/{OWNER_TAG}": CALLER},
        ),
        statement("ObserveOwnTasks", ["ecs:DescribeTasks", "ecs:StopTask"], tasks, **mine),
        # Lists task ARNs (nothing more) of a cluster; teardown finds its tasks so.
        statement("ListTasks", ["ecs:ListTasks"], account.arn("ecs", "container-instance/*")),
        statement(
            "TagOnCreate",
            ["ecs:TagResource"],
            "*",
            StringEquals={"ecs:CreateAction": ["CreateCluster", "RegisterTaskDefinition", "RunTask"]},
        ),
        # The lease `flowrig aws leftovers` reads: only its tag, on the caller's own
        # cluster, task definitions and tasks.
        statement("RenewLease", ["ecs:TagResource"], [clusters, families, tasks], **mine, **lease_only),
        statement("SecurityGroupInVpc", ["ec2:CreateSecurityGroup"], account.arn("ec2", "vpc/*")),
        statement(
            "SecurityGroupCreate", ["ec2:CreateSecurityGroup"], account.arn("ec2", "security-group/*"), **made_mine,
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
            **mine,
        ),
        statement(
            "SecurityGroupRenewLease", ["ec2:CreateTags"], account.arn("ec2", "security-group/*"),
            **mine, **lease_only,
        ),
        statement("LogGroupCreate", ["logs:CreateLogGroup"], account.arn("logs", f"log-group:/{prefix}/*"),
                  **made_mine),
        statement("LogGroupTag", ["logs:TagResource"], account.arn("logs", f"log-group:/{prefix}/*"),
                  **made_mine, **_not_anothers()),
        statement("LogGroupDelete", ["logs:DeleteLogGroup"], account.arn("logs", f"log-group:/{prefix}/*"), **mine),
        *secret_statements(account),
        # The run's own execution role (flowrig-RUN-execution): made owned by the
        # caller, given AWS's execution policy and the run-secret reader only, passed
        # to ECS tasks only, deleted by its owner. No other role can be passed: not
        # another caller's run role, not a role without the caller's id.
        statement("RunRoleCreate", ["iam:CreateRole"], run_roles, **made_mine),
        statement("RunRoleTag", ["iam:TagRole"], run_roles, **made_mine, **_not_anothers()),
        statement(
            "RunRolePolicies", ["iam:AttachRolePolicy"], run_roles,
            **mine, ArnEquals={"iam:PolicyARN": [execution_policy_arn(account.partition), reader]},
        ),
        statement(
            "RunRoleDelete",
            ["iam:DeleteRole", "iam:DetachRolePolicy", "iam:ListAttachedRolePolicies"],
            run_roles,
            **mine,
        ),
        statement(
            "PassRunRoleToTasks",
            ["iam:PassRole"],
            run_roles,
            StringEquals={"iam:PassedToService": ECS_TASKS, f"aws:ResourceTag/{OWNER_TAG}": CALLER},
        ),
        # A run finds out before it makes anything that the bootstrap made the reader.
        statement("FindRunSecretReader", ["iam:GetPolicy"], reader),
    ]
    if deregister:
        statements.append(statement("DeregisterTaskDefinitions", [DEREGISTER_ACTION], "*"))
        statements.append(statement("DeleteOwnTaskDefinitions", ["ecs:DeleteTaskDefinitions"], families, **mine))
    return {"Version": "2012-10-17", "Statement": statements}


def policy_actions(policy: dict[str, Any]) -> list[str]:
    """Every action a policy allows, sorted."""
    return sorted({action for statement in policy["Statement"] for action in statement["Action"]})
