"""The least-privilege IAM policy of a runner of ``ec2`` runs, rendered as data.

Pure, as :mod:`flowrig.backends.ecs.iam` is (the account in, a JSON-ready dict out), and
built from the same pieces: flowrig's IAM path, the run tag, the lease tag, the
``flowrig/`` secrets. Every action an ``ec2`` run makes (:mod:`flowrig.backends.vm.ec2_cloud`)
is here and nothing else; resources are scoped to flowrig's names and to the run tag
wherever IAM has a resource type or condition key for the action. What IAM authorizes
only on ``"*"`` is in :data:`UNSCOPED_ACTIONS`.

What a run of a project that names its own ``iam_instance_profile`` needs beyond this
(``iam:GetInstanceProfile`` on that profile, ``iam:PassRole`` of its role to EC2) is
the project's to grant: the policy cannot know the names.
"""

from __future__ import annotations

from typing import Any

from flowrig.backends.ecs.defaults import FAMILY_PREFIX
from flowrig.backends.ecs.iam import EC2_INSTANCES, ROLE_PATH, RUN_TAG, Account, statement
from flowrig.backends.ecs.lease import LEASE_TAG
from flowrig.backends.vm.ec2_cloud import UBUNTU_PARAMETER_PATH

#: The run's instance role and instance profile (``flowrig-RUN-instance``, both on
#: :data:`~flowrig.backends.ecs.iam.ROLE_PATH`): not the ``flowrig ecs bootstrap`` role.
INSTANCE_IDENTITY_PATTERN = "flowrig-*-instance"

#: EC2's Describe actions have no resource-level permissions: IAM authorizes them on
#: ``"*"`` only. They change nothing.
UNSCOPED_ACTIONS = (
    "ec2:DescribeImages",
    "ec2:DescribeInstances",
    "ec2:DescribeSubnets",
    "ec2:DescribeVpcs",
)

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
        An IAM policy document: instances only with the run tag, and terminated and
        tagged only while they carry it; the run's own instance role and profile on
        ``/flowrig/``, passed to EC2 only; ``flowrig/`` secrets; Canonical's Ubuntu
        AMI parameters.
    """
    ec2 = account.arn
    run_tagged = {"Null": {f"aws:ResourceTag/{RUN_TAG}": "false"}}
    tagged_on_request = {"Null": {f"aws:RequestTag/{RUN_TAG}": "false"}}
    role = account.arn("iam", f"role{ROLE_PATH}{INSTANCE_IDENTITY_PATTERN}")
    profile = account.arn("iam", f"instance-profile{ROLE_PATH}{INSTANCE_IDENTITY_PATTERN}")
    # AMIs and their snapshots belong to their publisher (Canonical, or whoever made the
    # project's ami), not to this account: their ARNs have no account, only the region.
    public = f"arn:{account.partition}:ec2:*::"
    statements = [
        statement("Describe", list(UNSCOPED_ACTIONS), "*"),
        # Public parameters are AWS's: their ARNs carry no account id, so the account is
        # a wildcard (which also matches the empty one).
        statement(
            "UbuntuImageParameter",
            ["ssm:GetParameter"],
            f"arn:{account.partition}:ssm:*:*:parameter{UBUNTU_PARAMETER_PATH}*",
        ),
        statement("SecurityGroupInVpc", ["ec2:CreateSecurityGroup"], ec2("ec2", "vpc/*")),
        statement(
            "SecurityGroupCreateTagged", ["ec2:CreateSecurityGroup"], ec2("ec2", "security-group/*"),
            **tagged_on_request,
        ),
        statement(
            "SecurityGroupOwn",
            ["ec2:AuthorizeSecurityGroupIngress", "ec2:DeleteSecurityGroup"],
            ec2("ec2", "security-group/*"),
            **run_tagged,
        ),
        statement(
            "InstancesCreateTagged", ["ec2:RunInstances"], [ec2("ec2", "instance/*"), ec2("ec2", "volume/*")],
            **tagged_on_request,
        ),
        # What a new instance is made in and from; none of it is changed by the call.
        statement(
            "InstancesUse",
            ["ec2:RunInstances"],
            [ec2("ec2", "subnet/*"), ec2("ec2", "network-interface/*"), ec2("ec2", "security-group/*"),
             ec2("ec2", "key-pair/*"), f"{public}image/*", f"{public}snapshot/*"],
        ),
        statement(
            "TagOnCreate",
            ["ec2:CreateTags"],
            [ec2("ec2", "instance/*"), ec2("ec2", "volume/*"), ec2("ec2", "security-group/*")],
            StringEquals={"ec2:CreateAction": ["CreateSecurityGroup", "RunInstances"]},
        ),
        # The lease `flowrig aws leftovers` reads: only that tag, on the run's own instances
        # and security group.
        statement(
            "RenewLease",
            ["ec2:CreateTags"],
            [ec2("ec2", "instance/*"), ec2("ec2", "security-group/*")],
            **run_tagged,
            **{"ForAllValues:StringEquals": {"aws:TagKeys": [LEASE_TAG]}},
        ),
        statement("InstancesTerminate", ["ec2:TerminateInstances"], ec2("ec2", "instance/*"), **run_tagged),
        statement(
            "InstanceRole",
            ["iam:CreateRole", "iam:DeleteRole", "iam:DeleteRolePolicy", "iam:ListAttachedRolePolicies",
             "iam:ListRolePolicies", "iam:PutRolePolicy", "iam:TagRole"],
            role,
        ),
        statement(
            "InstanceProfile",
            ["iam:AddRoleToInstanceProfile", "iam:CreateInstanceProfile", "iam:DeleteInstanceProfile",
             "iam:GetInstanceProfile", "iam:RemoveRoleFromInstanceProfile", "iam:TagInstanceProfile"],
            profile,
        ),
        statement(
            "PassInstanceRoleToEC2",
            ["iam:PassRole"],
            role,
            StringEquals={"iam:PassedToService": EC2_INSTANCES},
        ),
        statement(
            "RunSecret",
            ["secretsmanager:CreateSecret", "secretsmanager:DeleteSecret", "secretsmanager:PutResourcePolicy",
             "secretsmanager:TagResource"],
            account.arn("secretsmanager", f"secret:{FAMILY_PREFIX}/*"),
        ),
    ]
    return {"Version": "2012-10-17", "Statement": statements}
