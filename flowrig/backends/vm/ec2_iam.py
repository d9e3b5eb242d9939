"""The least-privilege IAM policy of a runner of ``ec2`` runs, rendered as data.

Pure, as :mod:`flowrig.backends.ecs.iam` is (the account in, a JSON-ready dict out), and
built from the same pieces: flowrig's IAM path, the owner tag, the lease tag, the
``flowrig/`` secrets. Every action an ``ec2`` run makes (:mod:`flowrig.backends.vm.ec2_cloud`)
is here and nothing else; resources are scoped to flowrig's names and to the caller's
own (the owner tag) wherever IAM has a resource type or condition key for the action. What IAM authorizes
only on ``"*"`` is in :data:`UNSCOPED_ACTIONS` (and :data:`WHOAMI_ACTION`).

The run's instance role can be given only what the permissions boundary the bootstrap
made allows (:func:`~flowrig.backends.ecs.iam.instance_boundary_policy`): without it, a
holder of this policy could write any inline policy to a ``flowrig-*-instance`` role and
start an instance with it.

What a run of a project that names its own ``iam_instance_profile`` or
``security_groups`` needs beyond this (``iam:GetInstanceProfile`` on that profile,
``iam:PassRole`` of its role to EC2, ``ec2:RunInstances`` on those groups) is the
project's to grant: the policy cannot know the names.
"""

from __future__ import annotations

from typing import Any

from flowrig.backends.ecs.iam import (
    CALLER,
    EC2_INSTANCES,
    OWNER_TAG,
    ROLE_PATH,
    Account,
    instance_boundary_arn,
    owned_by_caller,
    secret_statements,
    statement,
)
from flowrig.backends.ecs.lease import LEASE_TAG
from flowrig.backends.vm.ec2_cloud import UBUNTU_PARAMETER_PATH

#: The run's instance role and instance profile (``flowrig-RUN-instance``, both on
#: :data:`~flowrig.backends.ecs.iam.ROLE_PATH`): not the shared role of older bootstraps.
INSTANCE_IDENTITY_PATTERN = "flowrig-*-instance"

#: EC2's Describe actions have no resource-level permissions: IAM authorizes them on
#: ``"*"`` only. They change nothing.
UNSCOPED_ACTIONS = (
    "ec2:DescribeImages",
    "ec2:DescribeInstances",
    "ec2:DescribeSubnets",
    "ec2:DescribeVpcs",
)
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


def runner_policy(account: Account) -> dict[str, Any]:
    """The least-privilege policy of a runner of ``ec2`` runs.

    Parameters
    ----------
    account
        Partition and account the resources live in.

    Returns
    -------
    dict
        An IAM policy document. Everything the runner makes must carry its caller id
        as :data:`~flowrig.backends.ecs.iam.OWNER_TAG`, and it may change, use, pass or
        delete only what carries it (the same rule as the ECS runner's): instances,
        the security group, the run's instance role and profile on ``/flowrig/``
        (passed to EC2 only, made and given policies only with the bootstrap's
        permissions boundary, which the runner can neither remove nor change), the
        run's secret; plus Canonical's Ubuntu AMI parameters.
    """
    ec2 = account.arn
    mine = owned_by_caller()
    made_mine = owned_by_caller("RequestTag")
    lease_only = {"ForAllValues:StringEquals": {"aws:TagKeys": [LEASE_TAG]}}
    not_anothers = {"StringEqualsIfExists": {f"aws:ResourceTag/{OWNER_TAG}": CALLER}}
    role = account.arn("iam", f"role{ROLE_PATH}{INSTANCE_IDENTITY_PATTERN}")
    profile = account.arn("iam", f"instance-profile{ROLE_PATH}{INSTANCE_IDENTITY_PATTERN}")
    # AMIs and their snapshots belong to their publisher (Canonical, or whoever made the
    # project's ami), not to this account: their ARNs have no account, only the region.
    public = f"arn:{account.partition}:ec2:*::"
    boundary = instance_boundary_arn(account)
    bounded = {"iam:PermissionsBoundary": boundary}
    statements = [
        statement("Describe", list(UNSCOPED_ACTIONS), "*"),
        statement("WhoAmI", [WHOAMI_ACTION], "*"),
        # Public parameters are AWS's: their ARNs carry no account id, so the account is
        # a wildcard (which also matches the empty one).
        statement(
            "UbuntuImageParameter",
            ["ssm:GetParameter"],
            f"arn:{account.partition}:ssm:*:*:parameter{UBUNTU_PARAMETER_PATH}*",
        ),
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
            **lease_only,
        ),
        statement("InstancesTerminate", ["ec2:TerminateInstances"], ec2("ec2", "instance/*"), **mine),
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
        statement("InstanceRoleTag", ["iam:TagRole"], role, **made_mine, **not_anothers),
        statement(
            "InstanceRole",
            ["iam:DeleteRole", "iam:DeleteRolePolicy", "iam:ListAttachedRolePolicies", "iam:ListRolePolicies"],
            role,
            **mine,
        ),
        statement("FindInstanceBoundary", ["iam:GetPolicy"], boundary),
        statement("InstanceProfileCreate", ["iam:CreateInstanceProfile"], profile, **made_mine),
        statement("InstanceProfileTag", ["iam:TagInstanceProfile"], profile, **made_mine, **not_anothers),
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
        *secret_statements(account),
    ]
    return {"Version": "2012-10-17", "Statement": statements}
