"""The calls a run makes, as IAM authorizes them (:class:`PlannedCall`): the same names,
tags and condition keys the run uses (:mod:`flowrig.backends.aws.names`,
:mod:`flowrig.backends.aws.policies`), for the run id preflight stands in with.

Calls IAM authorizes as part of another (tags at creation, passing a role) are here as
their own actions, with the condition keys AWS sets for them (``ecs:CreateAction``,
``ec2:CreateAction``, ``iam:PassedToService``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from flowrig.backends.aws import policies as iam
from flowrig.backends.aws.names import FAMILY_PREFIX, LEASE_TAG, OWNER_TAG, ROLE_PATH, RUN_TAG, Account
from flowrig.backends.aws.preflight.target import PlannedCall

#: Tag keys every resource of a run carries.
RUN_TAG_KEYS = [RUN_TAG, "createdBy", LEASE_TAG, OWNER_TAG]


@dataclass(frozen=True)
class Caller:
    """Who would make the calls, where: the account, ``aws:userid`` (the owner tag's
    value) and the run's region."""

    account: Account
    user_id: str
    region: str

    def made(self, **more: Any) -> dict[str, Any]:
        """The request's tags name the caller as owner."""
        return {f"aws:RequestTag/{OWNER_TAG}": self.user_id, "aws:TagKeys": RUN_TAG_KEYS, **more}

    def mine(self, **more: Any) -> dict[str, Any]:
        """The resource's tags name the caller as owner."""
        return {f"aws:ResourceTag/{OWNER_TAG}": self.user_id, **more}


def _secret_calls(caller: Caller, run_id: str) -> list[PlannedCall]:
    secret = caller.account.arn("secretsmanager", f"secret:{iam.secret_name(run_id)}-AbCdEf", caller.region)
    return [
        PlannedCall("secretsmanager:CreateSecret", secret, caller.made()),
        PlannedCall("secretsmanager:TagResource", secret, caller.made()),
        PlannedCall("secretsmanager:PutResourcePolicy", secret,
                    caller.mine(**{"secretsmanager:BlockPublicPolicy": True})),
        PlannedCall("secretsmanager:DeleteSecret", secret, caller.mine()),
    ]


def _group_calls(caller: Caller, vpc_id: str) -> list[PlannedCall]:
    region = caller.region
    groups = caller.account.arn("ec2", "security-group/*", region)
    return [
        PlannedCall("ec2:CreateSecurityGroup", caller.account.arn("ec2", f"vpc/{vpc_id}", region)),
        PlannedCall("ec2:CreateSecurityGroup", groups, caller.made()),
        PlannedCall("ec2:CreateTags", groups, caller.made(**{"ec2:CreateAction": "CreateSecurityGroup"})),
        PlannedCall("ec2:AuthorizeSecurityGroupIngress", groups, caller.mine()),
        PlannedCall("ec2:DeleteSecurityGroup", groups, caller.mine()),
    ]


def ecs_calls(
    caller: Caller, run_id: str, *, cluster_arn: str | None, vpc_id: str, own_definitions: bool,
    make_group: bool, make_log_group: bool, execution_role_arn: str | None, task_role_arn: str | None,
) -> list[PlannedCall]:
    """What an ``ecs``/``fargate`` run makes and uses (see ``ECSRun``)."""
    region, account = caller.region, caller.account
    name = f"{FAMILY_PREFIX}-{run_id}"
    cluster = cluster_arn or account.arn("ecs", f"cluster/{name}", region)
    cluster_name = cluster.rsplit("/", 1)[-1]
    definition = account.arn("ecs", f"task-definition/{name}-worker:1", region)
    calls = [PlannedCall(action, "*") for action in ("ec2:DescribeSubnets", "ec2:DescribeVpcs")]
    if not cluster_arn:
        calls += [
            PlannedCall("ecs:CreateCluster", cluster, caller.made()),
            PlannedCall("ecs:TagResource", cluster, caller.made(**{"ecs:CreateAction": "CreateCluster"})),
            PlannedCall("ecs:DeleteCluster", cluster, caller.mine()),
        ]
    if own_definitions:
        calls += [
            PlannedCall("ecs:RegisterTaskDefinition", definition, caller.made()),
            PlannedCall("ecs:TagResource", definition, caller.made(**{"ecs:CreateAction": "RegisterTaskDefinition"})),
            *_secret_calls(caller, run_id),
        ]
    tasks = account.arn("ecs", f"task/{cluster_name}/*", region)
    calls += [
        PlannedCall("ecs:RunTask", definition, {**caller.made(), **caller.mine(), "ecs:cluster": cluster}),
        PlannedCall("ecs:TagResource", tasks, caller.made(**{"ecs:CreateAction": "RunTask"})),
        PlannedCall("ecs:DescribeTasks", tasks, caller.mine(**{"ecs:cluster": cluster})),
        PlannedCall("ecs:StopTask", tasks, caller.mine(**{"ecs:cluster": cluster})),
        PlannedCall("ecs:ListTasks", account.arn("ecs", f"container-instance/{cluster_name}/*", region),
                    {"ecs:cluster": cluster}),
    ]
    if make_group:
        calls += _group_calls(caller, vpc_id)
    if make_log_group:
        log_group = account.arn("logs", f"log-group:/{FAMILY_PREFIX}/{run_id}", region)
        calls += [PlannedCall("logs:CreateLogGroup", log_group, caller.made()),
                  PlannedCall("logs:TagResource", log_group, caller.made()),
                  PlannedCall("logs:DeleteLogGroup", log_group, caller.mine())]
    if own_definitions and not execution_role_arn:
        role = iam.role_arn(account, iam.execution_role_name(run_id))
        calls += [
            PlannedCall("iam:GetPolicy", iam.run_secret_reader_arn(account)),
            PlannedCall("iam:CreateRole", role, caller.made()),
            PlannedCall("iam:TagRole", role, caller.made()),
            PlannedCall("iam:AttachRolePolicy", role,
                        caller.mine(**{"iam:PolicyARN": iam.execution_policy_arn(account.partition)})),
            PlannedCall("iam:PassRole", role, caller.mine(**{"iam:PassedToService": iam.ECS_TASKS})),
            *(PlannedCall(a, role, caller.mine()) for a in ("iam:DeleteRole", "iam:DetachRolePolicy",
                                                            "iam:ListAttachedRolePolicies")),
        ]
    for given in (execution_role_arn, task_role_arn):
        if given:
            calls.append(PlannedCall("iam:PassRole", given, {"iam:PassedToService": iam.ECS_TASKS}))
    return calls


def ec2_calls(
    caller: Caller, run_id: str, *, vpc_id: str, make_group: bool, make_profile: bool, per_run_tls: bool,
) -> list[PlannedCall]:
    """What an ``ec2`` run makes and uses (see ``EC2Cloud``)."""
    region, account = caller.region, caller.account
    public = f"arn:{account.partition}:ec2:{region}::"
    instances = [account.arn("ec2", "instance/*", region), account.arn("ec2", "volume/*", region)]
    calls = [PlannedCall(action, "*") for action in ("ec2:DescribeImages", "ec2:DescribeInstances",
                                                      "ec2:DescribeSubnets", "ec2:DescribeVpcs")]
    calls += [PlannedCall("ec2:RunInstances", arn, caller.made()) for arn in instances]
    calls += [PlannedCall("ec2:RunInstances", arn) for arn in (
        account.arn("ec2", "subnet/*", region), account.arn("ec2", "network-interface/*", region),
        f"{public}image/*")]
    calls += [PlannedCall("ec2:CreateTags", arn, caller.made(**{"ec2:CreateAction": "RunInstances"}))
              for arn in instances]
    calls.append(PlannedCall("ec2:TerminateInstances", instances[0], caller.mine()))
    if make_group:
        calls += _group_calls(caller, vpc_id)
        calls.append(PlannedCall("ec2:RunInstances", account.arn("ec2", "security-group/*", region), caller.mine()))
    if make_profile:
        name = f"{FAMILY_PREFIX}-{run_id}-instance"
        role = account.arn("iam", f"role{ROLE_PATH}{name}")
        profile = account.arn("iam", f"instance-profile{ROLE_PATH}{name}")
        boundary = iam.instance_boundary_arn(account)
        calls += [
            PlannedCall("iam:GetPolicy", boundary),
            PlannedCall("iam:CreateRole", role, caller.made(**{"iam:PermissionsBoundary": boundary})),
            PlannedCall("iam:PutRolePolicy", role, caller.mine(**{"iam:PermissionsBoundary": boundary})),
            PlannedCall("iam:CreateInstanceProfile", profile, caller.made()),
            PlannedCall("iam:AddRoleToInstanceProfile", profile, caller.mine()),
            PlannedCall("iam:PassRole", role, caller.mine(**{"iam:PassedToService": iam.EC2_INSTANCES})),
            PlannedCall("iam:DeleteRole", role, caller.mine()),
            PlannedCall("iam:DeleteInstanceProfile", profile, caller.mine()),
        ]
    if per_run_tls:
        calls += _secret_calls(caller, run_id)
    return calls
