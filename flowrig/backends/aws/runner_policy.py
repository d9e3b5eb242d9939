"""The least-privilege IAM policy of a runner of ``ecs``/``fargate`` and of ``ec2`` runs,
rendered as data (``flowrig aws iam-policy --backend ...``).

Pure, as :mod:`flowrig.backends.aws.policies` is (the account in, a JSON-ready dict out),
and built from the same pieces: flowrig's IAM path, the owner tag, the lease tag, the
``flowrig/`` secrets. Every action a run makes is here and nothing else; resources are
scoped to flowrig's names and to the caller's own (the owner tag) wherever IAM has a
resource type or condition key for the action. What IAM authorizes only on ``"*"`` is in
:data:`~flowrig.backends.aws.policies.UNSCOPED_ACTIONS` (ECS) and
:data:`EC2_UNSCOPED_ACTIONS` (and :data:`WHOAMI_ACTION`). Each policy is a list of
statement groups, one function per kind of resource.

The ``ec2`` run's instance role can be given only what the permissions boundary the
bootstrap made allows (:func:`~flowrig.backends.aws.policies.instance_boundary_policy`):
without it, a holder of this policy could write any inline policy to a
``flowrig-*-instance`` role and start an instance with it.

What an ``ec2`` run of a project that names its own ``iam_instance_profile`` or
``security_groups`` needs beyond this (``iam:GetInstanceProfile`` on that profile,
``iam:PassRole`` of its role to EC2, ``ec2:RunInstances`` on those groups) is the
project's to grant: the policy cannot know the names.
"""

from __future__ import annotations

from typing import Any

from flowrig.backends.aws.names import (
    DEEP_LEARNING_PARAMETER_PATH,
    FAMILY_PREFIX,
    LEASE_TAG,
    OWNER_TAG,
    ROLE_PATH,
    UBUNTU_PARAMETER_PATH,
    Account,
)
from flowrig.backends.aws.policies import (
    CALLER,
    DEREGISTER_ACTION,
    EC2_INSTANCES,
    ECS_TASKS,
    RUN_ROLE_PATTERN,
    execution_policy_arn,
    instance_boundary_arn,
    not_anothers,
    owned_by_caller,
    role_arn,
    run_secret_reader_arn,
    secret_statements,
    statement,
)
from flowrig.errors import BadInput

#: Backends whose runner policy ``flowrig aws iam-policy`` prints.
POLICY_BACKENDS = ("ecs", "fargate", "ec2")

#: The run's instance role and instance profile (``flowrig-RUN-instance``, both on
#: :data:`~flowrig.backends.aws.names.ROLE_PATH`): not the shared role of older bootstraps.
INSTANCE_IDENTITY_PATTERN = "flowrig-*-instance"

#: EC2's Describe actions have no resource-level permissions: IAM authorizes them on
#: ``"*"`` only. They change nothing.
EC2_UNSCOPED_ACTIONS = (
    "ec2:DescribeImages",
    "ec2:DescribeInstanceTypes",
    "ec2:DescribeInstances",
    "ec2:DescribeSubnets",
    "ec2:DescribeVpcs",
)
#: What the preflight checks read besides (``flowrig preflight``, and every run's start
#: unless ``preflight = false``): the network. Describe actions, on ``"*"`` only.
PREFLIGHT_DESCRIBE_ACTIONS = (
    "ec2:DescribeNatGateways",
    "ec2:DescribeRouteTables",
    "ec2:DescribeSecurityGroups",
    "ec2:DescribeVpcEndpoints",
)
#: An ``ec2`` run reads its instance types anyway (GPUs, architecture: the quotas' vCPUs too).
EC2_PREFLIGHT_DESCRIBE_ACTIONS = PREFLIGHT_DESCRIBE_ACTIONS
#: What an ``ecs`` run reads of the capacity provider its workers start on (GPUs and
#: architecture of its instance types), before anything is created: on ``"*"`` (IAM
#: has no resource type for them), and the account's clusters and capacity providers.
ECS_SHAPE_ACTIONS = (
    "autoscaling:DescribeAutoScalingGroups",
    "autoscaling:DescribeLaunchConfigurations",
    "ec2:DescribeInstanceTypes",
    "ec2:DescribeLaunchTemplateVersions",
)
ECS_CAPACITY_ACTIONS = ("ecs:DescribeCapacityProviders", "ecs:DescribeClusters")
#: Which account the credentials are (for the boundary's ARN): AWS answers it for every
#: principal, whatever its policies, and it reveals nothing but the caller's own name.
WHOAMI_ACTION = "sts:GetCallerIdentity"
#: What would lift the permissions boundary off a run's instance role: never granted.
BOUNDARY_CHANGES = ("iam:DeleteRolePermissionsBoundary", "iam:PutRolePermissionsBoundary")

#: Actions AWS authorizes as part of another call rather than as a request of their
#: own: tags given at creation (CreateTags, TagRole, TagInstanceProfile, TagResource)
#: and passing the instance role (AddRoleToInstanceProfile, RunInstances).
IMPLIED_ACTIONS = (
    "ec2:CreateTags",
    "iam:PassRole",
    "iam:TagInstanceProfile",
    "iam:TagRole",
    "secretsmanager:TagResource",
)

#: Only the lease tag may be written on what already exists.
_LEASE_ONLY = {"ForAllValues:StringEquals": {"aws:TagKeys": [LEASE_TAG]}}


def runner_policy(backend: str, account: Account, *, deregister: bool = False) -> dict[str, Any]:
    """The least-privilege policy of a runner of ``backend`` runs (one of :data:`POLICY_BACKENDS`).

    Parameters
    ----------
    backend
        ``ecs`` or ``fargate`` (one policy for both), or ``ec2``.
    account
        Partition and account the resources live in.
    deregister
        ecs/fargate: also let the runner deregister task definitions
        (:func:`ecs_runner_policy`).

    Raises
    ------
    BadInput
        An unknown backend, or ``deregister`` for ``ec2`` (whose runs register no task
        definition).
    """
    if backend not in POLICY_BACKENDS:
        raise BadInput(f"--backend {backend!r}: use one of {', '.join(POLICY_BACKENDS)}")
    if backend == "ec2":
        if deregister:
            raise BadInput("--deregister-task-definitions is for ecs/fargate runs: ec2 runs register no task "
                           "definition; leave it out")
        return ec2_runner_policy(account)
    return ecs_runner_policy(account, deregister=deregister)


def _document(statements: list[dict[str, Any]]) -> dict[str, Any]:
    return {"Version": "2012-10-17", "Statement": statements}


def _preflight_statements(account: Account, quota_service: str, describe: list[str]) -> list[dict[str, Any]]:
    """What the preflight checks read, none of it changing anything: the network, the
    run's image (whether it exists, and its manifest's platforms: no layer), the
    runner's own rights (a user simulates itself only; a role, any role of the account,
    as IAM has no variable for the role's own name, and reading its path), and the
    vCPU quotas of ``quota_service``."""
    return [
        statement("PreflightNetwork", describe, "*"),
        statement("PreflightImage", ["ecr:BatchGetImage", "ecr:DescribeImages"], account.arn("ecr", "repository/*")),
        statement(
            "PreflightOwnRights", ["iam:SimulatePrincipalPolicy"],
            [account.arn("iam", "user/${aws:username}"), account.arn("iam", "role/*")],
        ),
        statement("PreflightRolePath", ["iam:GetRole"], account.arn("iam", "role/*")),
        statement(
            "PreflightQuotas", ["servicequotas:GetServiceQuota"], account.arn("servicequotas", f"{quota_service}/*")
        ),
    ]


# --- ecs and fargate -------------------------------------------------------------------------


def ecs_runner_policy(account: Account, *, deregister: bool = False) -> dict[str, Any]:
    """The least-privilege policy of a runner of ``fargate``/``ecs`` runs.

    Every resource the runner makes must carry its caller id as
    :data:`~flowrig.backends.aws.names.OWNER_TAG`, and it may change, use, pass or
    delete only what carries it: a runner (and so the flow it runs) cannot register a
    task definition outside ``flowrig-*``, run or stop another caller's tasks, pass
    another caller's role (or any role that is no run's: the shared roles of older
    bootstraps included), touch another caller's secret, cluster, security group or log
    group, nor take them over by tagging them. Each run's execution role reads its own
    run's secret only (:func:`~flowrig.backends.aws.policies.run_secret_reader_policy`).

    Parameters
    ----------
    account
        Partition and account the resources live in.
    deregister
        Also let the runner deregister task definitions, which IAM cannot limit to its
        own (:data:`~flowrig.backends.aws.policies.DEREGISTER_ACTION`), and delete its
        own deregistered ones. Without it a run's task definitions stay registered
        (inactive secrets and roles behind them) until ``flowrig aws leftovers --remove``.
    """
    statements = [
        *_ecs_task_statements(account),
        *_ecs_security_group_statements(account),
        *_log_group_statements(account),
        *secret_statements(account),
        *_run_role_statements(account),
        *_preflight_statements(account, "fargate", list(PREFLIGHT_DESCRIBE_ACTIONS)),
        statement("WorkerShape", list(ECS_SHAPE_ACTIONS), "*"),
        statement("WorkerCapacity", list(ECS_CAPACITY_ACTIONS),
                  [account.arn("ecs", "cluster/*"), account.arn("ecs", "capacity-provider/*")]),
    ]
    if deregister:
        families = account.arn("ecs", f"task-definition/{FAMILY_PREFIX}-*")
        statements.append(statement("DeregisterTaskDefinitions", [DEREGISTER_ACTION], "*"))
        statements.append(statement("DeleteOwnTaskDefinitions", ["ecs:DeleteTaskDefinitions"], families,
                                    **owned_by_caller()))
    return _document(statements)


def _ecs_task_statements(account: Account) -> list[dict[str, Any]]:
    """The network reads, the caller's id, and the caller's own clusters, task
    definitions and tasks, with the lease on them."""
    mine = owned_by_caller()
    made_mine = owned_by_caller("RequestTag")
    clusters = account.arn("ecs", f"cluster/{FAMILY_PREFIX}-*")
    families = account.arn("ecs", f"task-definition/{FAMILY_PREFIX}-*")
    tasks = account.arn("ecs", "task/*")
    return [
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
        statement("RenewLease", ["ecs:TagResource"], [clusters, families, tasks], **mine, **_LEASE_ONLY),
    ]


def _ecs_security_group_statements(account: Account) -> list[dict[str, Any]]:
    """The run's security group: made in a VPC, owned by the caller, leased."""
    mine = owned_by_caller()
    groups = account.arn("ec2", "security-group/*")
    return [
        statement("SecurityGroupInVpc", ["ec2:CreateSecurityGroup"], account.arn("ec2", "vpc/*")),
        statement("SecurityGroupCreate", ["ec2:CreateSecurityGroup"], groups, **owned_by_caller("RequestTag")),
        statement(
            "SecurityGroupTagOnCreate",
            ["ec2:CreateTags"],
            groups,
            StringEquals={"ec2:CreateAction": "CreateSecurityGroup"},
        ),
        statement(
            "SecurityGroupOwn",
            ["ec2:AuthorizeSecurityGroupIngress", "ec2:DeleteSecurityGroup"],
            groups,
            **mine,
        ),
        statement("SecurityGroupRenewLease", ["ec2:CreateTags"], groups, **mine, **_LEASE_ONLY),
    ]


def _log_group_statements(account: Account) -> list[dict[str, Any]]:
    """The run's log group under ``/flowrig/``: made, tagged and deleted by its owner; and
    the last lines of a role that stopped, read from its stream (``flowrig-RUN/CONTAINER/
    TASK``) for the stop's reason. IAM has no tag condition for log streams: that read is
    scoped by name only, to flowrig's groups and streams."""
    log_groups = account.arn("logs", f"log-group:/{FAMILY_PREFIX}/*")
    made_mine = owned_by_caller("RequestTag")
    return [
        statement("LogGroupCreate", ["logs:CreateLogGroup"], log_groups, **made_mine),
        statement("LogGroupTag", ["logs:TagResource"], log_groups, **made_mine, **not_anothers()),
        statement("LogGroupDelete", ["logs:DeleteLogGroup"], log_groups, **owned_by_caller()),
        statement("RoleLogLines", ["logs:GetLogEvents"],
                  account.arn("logs", f"log-group:/{FAMILY_PREFIX}/*:log-stream:{FAMILY_PREFIX}-*/*")),
    ]


def _run_role_statements(account: Account) -> list[dict[str, Any]]:
    """The run's own execution role (flowrig-RUN-execution): made owned by the caller,
    given AWS's execution policy and the run-secret reader only, passed to ECS tasks
    only, deleted by its owner. No other role can be passed: not another caller's run
    role, not a role without the caller's id."""
    mine = owned_by_caller()
    made_mine = owned_by_caller("RequestTag")
    run_roles = role_arn(account, RUN_ROLE_PATTERN)
    reader = run_secret_reader_arn(account)
    return [
        statement("RunRoleCreate", ["iam:CreateRole"], run_roles, **made_mine),
        statement("RunRoleTag", ["iam:TagRole"], run_roles, **made_mine, **not_anothers()),
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


# --- ec2 -----------------------------------------------------------------------------------


def ec2_runner_policy(account: Account) -> dict[str, Any]:
    """The least-privilege policy of a runner of ``ec2`` runs.

    Parameters
    ----------
    account
        Partition and account the resources live in.

    Returns
    -------
    dict
        An IAM policy document. Everything the runner makes must carry its caller id
        as :data:`~flowrig.backends.aws.names.OWNER_TAG`, and it may change, use, pass or
        delete only what carries it (the same rule as the ECS runner's): instances,
        the security group, the run's instance role and profile on ``/flowrig/``
        (passed to EC2 only, made and given policies only with the bootstrap's
        permissions boundary, which the runner can neither remove nor change), the
        run's secret; plus Canonical's Ubuntu AMI parameters.
    """
    return _document([
        statement("Describe", list(EC2_UNSCOPED_ACTIONS), "*"),
        statement("WhoAmI", [WHOAMI_ACTION], "*"),
        # Public parameters are AWS's: their ARNs carry no account id, so the account is
        # a wildcard (which also matches the empty one).
        statement(
            "UbuntuImageParameter",
            ["ssm:GetParameter"],
            [f"arn:{account.partition}:ssm:*:*:parameter{UBUNTU_PARAMETER_PATH}*",
             f"arn:{account.partition}:ssm:*:*:parameter{DEEP_LEARNING_PARAMETER_PATH}*"],
        ),
        *_instance_statements(account),
        *_instance_identity_statements(account),
        *secret_statements(account),
        *_preflight_statements(account, "ec2", list(EC2_PREFLIGHT_DESCRIBE_ACTIONS)),
    ])


def _instance_statements(account: Account) -> list[dict[str, Any]]:
    """The run's security group and instances: made owned by the caller, leased,
    terminated by their owner."""
    ec2 = account.arn
    mine = owned_by_caller()
    made_mine = owned_by_caller("RequestTag")
    # AMIs and their snapshots belong to their publisher (Canonical, or whoever made the
    # project's ami), not to this account: their ARNs have no account, only the region.
    public = f"arn:{account.partition}:ec2:*::"
    return [
        statement("SecurityGroupInVpc", ["ec2:CreateSecurityGroup"], ec2("ec2", "vpc/*")),
        statement("SecurityGroupCreate", ["ec2:CreateSecurityGroup"], ec2("ec2", "security-group/*"), **made_mine),
        statement(
            "SecurityGroupOwn",
            ["ec2:AuthorizeSecurityGroupIngress", "ec2:DeleteSecurityGroup"],
            ec2("ec2", "security-group/*"),
            **mine,
        ),
        statement(
            "InstancesCreate", ["ec2:RunInstances"], [ec2("ec2", "instance/*"), ec2("ec2", "volume/*")], **made_mine,
        ),
        # What a new instance is made in and from; none of it is changed by the call.
        statement(
            "InstancesUse",
            ["ec2:RunInstances"],
            [ec2("ec2", "subnet/*"), ec2("ec2", "network-interface/*"), ec2("ec2", "key-pair/*"),
             f"{public}image/*", f"{public}snapshot/*"],
        ),
        # Instances join the caller's own security group only: not another run's.
        statement("InstancesInOwnGroup", ["ec2:RunInstances"], ec2("ec2", "security-group/*"), **mine),
        statement(
            "TagOnCreate",
            ["ec2:CreateTags"],
            [ec2("ec2", "instance/*"), ec2("ec2", "volume/*"), ec2("ec2", "security-group/*")],
            StringEquals={"ec2:CreateAction": ["CreateSecurityGroup", "RunInstances"]},
        ),
        # The lease `flowrig aws leftovers` reads: only that tag, on the caller's own
        # instances and security group.
        statement(
            "RenewLease",
            ["ec2:CreateTags"],
            [ec2("ec2", "instance/*"), ec2("ec2", "security-group/*")],
            **mine,
            **_LEASE_ONLY,
        ),
        statement("InstancesTerminate", ["ec2:TerminateInstances"], ec2("ec2", "instance/*"), **mine),
    ]


def _instance_identity_statements(account: Account) -> list[dict[str, Any]]:
    """The run's instance role and profile: made only with the bootstrap's permissions
    boundary, owned by the caller, passed to EC2 only."""
    mine = owned_by_caller()
    made_mine = owned_by_caller("RequestTag")
    role = account.arn("iam", f"role{ROLE_PATH}{INSTANCE_IDENTITY_PATTERN}")
    profile = account.arn("iam", f"instance-profile{ROLE_PATH}{INSTANCE_IDENTITY_PATTERN}")
    boundary = instance_boundary_arn(account)
    bounded = {"iam:PermissionsBoundary": boundary}
    return [
        # IAM cannot restrict the document PutRolePolicy writes: the boundary caps what
        # any such document can grant, and neither call is allowed without it.
        statement(
            "InstanceRoleCreate", ["iam:CreateRole"], role,
            StringEquals={**bounded, f"aws:RequestTag/{OWNER_TAG}": CALLER},
        ),
        statement(
            "InstanceRolePolicy", ["iam:PutRolePolicy"], role,
            StringEquals={**bounded, f"aws:ResourceTag/{OWNER_TAG}": CALLER},
        ),
        statement("InstanceRoleTag", ["iam:TagRole"], role, **made_mine, **not_anothers()),
        statement(
            "InstanceRole",
            ["iam:DeleteRole", "iam:DeleteRolePolicy", "iam:ListAttachedRolePolicies", "iam:ListRolePolicies"],
            role,
            **mine,
        ),
        statement("FindInstanceBoundary", ["iam:GetPolicy"], boundary),
        statement("InstanceProfileCreate", ["iam:CreateInstanceProfile"], profile, **made_mine),
        statement("InstanceProfileTag", ["iam:TagInstanceProfile"], profile, **made_mine, **not_anothers()),
        statement(
            "InstanceProfile",
            ["iam:AddRoleToInstanceProfile", "iam:DeleteInstanceProfile", "iam:GetInstanceProfile",
             "iam:RemoveRoleFromInstanceProfile"],
            profile,
            **mine,
        ),
        statement(
            "PassInstanceRoleToEC2",
            ["iam:PassRole"],
            role,
            StringEquals={"iam:PassedToService": EC2_INSTANCES, f"aws:ResourceTag/{OWNER_TAG}": CALLER},
        ),
    ]
