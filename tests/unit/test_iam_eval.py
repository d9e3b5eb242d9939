"""The policy evaluator of tests/iam_eval.py against AWS's documented semantics.

Each test names the rule of AWS's IAM documentation it checks ("Policy evaluation
logic", "IAM JSON policy elements", "Condition operators", "Multivalued context keys",
"Permissions boundaries"), with the documentation's kind of example. The isolation
tests of the runner policies are only as good as this evaluator, so every rule those
policies lean on is here.
"""

from __future__ import annotations

import pytest

from tests.iam_eval import ALLOW, EXPLICIT_DENY, IMPLICIT_DENY, Request, evaluate

ROLE = "arn:aws:iam::123456789012:role/flowrig/flowrig-abc-execution"


def allow(action="*", resource="*", **condition):
    statement = {"Effect": "Allow", "Action": action, "Resource": resource}
    if condition:
        statement["Condition"] = condition
    return {"Version": "2012-10-17", "Statement": [statement]}


def deny(action="*", resource="*", **condition):
    document = allow(action, resource, **condition)
    document["Statement"][0]["Effect"] = "Deny"
    return document


# --- policy evaluation logic -----------------------------------------------------------
def test_nothing_allows_is_an_implicit_deny():
    assert evaluate(Request("ecs:RunTask", "arn:aws:ecs:us-east-1:1:task-definition/x:1"), []) == IMPLICIT_DENY


def test_an_explicit_deny_overrides_any_allow():
    request = Request("secretsmanager:GetSecretValue", "arn:aws:secretsmanager:us-east-1:1:secret:a-x")
    assert evaluate(request, [allow()]) == ALLOW
    assert evaluate(request, [allow(), deny("secretsmanager:*")]) == EXPLICIT_DENY
    # A deny in the resource's policy counts as much as one in the principal's.
    assert evaluate(request, [allow()], resource_policy={"Statement": [
        {"Effect": "Deny", "Principal": "*", "Action": "secretsmanager:GetSecretValue", "Resource": "*"}]}
    ) == EXPLICIT_DENY


def test_a_same_account_resource_policy_naming_the_principal_allows_on_its_own():
    request = Request("secretsmanager:GetSecretValue", "arn:aws:secretsmanager:us-east-1:1:secret:a-x",
                      principal_arns=(ROLE,))
    grant = {"Statement": [{"Effect": "Allow", "Principal": {"AWS": ROLE}, "Action": "secretsmanager:GetSecretValue",
                            "Resource": "*"}]}
    assert evaluate(request, [], resource_policy=grant) == ALLOW
    other = {"Statement": [{**grant["Statement"][0], "Principal": {"AWS": ROLE + "-other"}}]}
    assert evaluate(request, [], resource_policy=other) == IMPLICIT_DENY


def test_a_permissions_boundary_caps_and_never_grants():
    request = Request("iam:CreateRole", "arn:aws:iam::1:role/x")
    # "The effective permissions are the intersection of the identity-based policies
    # and the permissions boundary."
    assert evaluate(request, [allow("iam:*")], boundary=allow("ec2:*")) == IMPLICIT_DENY
    assert evaluate(request, [], boundary=allow("iam:*")) == IMPLICIT_DENY
    assert evaluate(request, [allow("iam:*")], boundary=allow("iam:CreateRole")) == ALLOW
    assert evaluate(request, [allow("iam:*")], boundary=deny("iam:*")) == EXPLICIT_DENY


# --- Action and Resource ------------------------------------------------------------------
def test_actions_match_case_insensitively_with_wildcards():
    assert evaluate(Request("ecs:RunTask", "*"), [allow("ECS:run*")]) == ALLOW
    assert evaluate(Request("ecs:RunTask", "*"), [allow("ecs:Run?ask")]) == ALLOW
    assert evaluate(Request("ecs:StopTask", "*"), [allow("ecs:Run*")]) == IMPLICIT_DENY
    # NotAction: everything but the listed actions.
    everything_but = {"Statement": [{"Effect": "Allow", "NotAction": "iam:*", "Resource": "*"}]}
    assert evaluate(Request("ecs:RunTask", "*"), [everything_but]) == ALLOW
    assert evaluate(Request("iam:PassRole", ROLE), [everything_but]) == IMPLICIT_DENY


def test_resources_match_case_sensitively_part_by_part():
    family = "arn:aws:ecs:*:123456789012:task-definition/flowrig-*"
    assert evaluate(Request("ecs:RunTask", "arn:aws:ecs:us-east-1:123456789012:task-definition/flowrig-a-worker:3"),
                    [allow(resource=family)]) == ALLOW
    assert evaluate(Request("ecs:RunTask", "arn:aws:ecs:us-east-1:123456789012:task-definition/Flowrig-a:3"),
                    [allow(resource=family)]) == IMPLICIT_DENY
    # A wildcard does not reach into another part of the ARN: the account stays fixed.
    assert evaluate(Request("ecs:RunTask", "arn:aws:ecs:us-east-1:210987654321:task-definition/flowrig-a:1"),
                    [allow(resource=family)]) == IMPLICIT_DENY
    # An action IAM cannot scope is asked for "*": only a statement on "*" covers it.
    assert evaluate(Request("ecs:DeregisterTaskDefinition", "*"), [allow(resource=family)]) == IMPLICIT_DENY
    assert evaluate(Request("ecs:DeregisterTaskDefinition", "*"), [allow(resource="*")]) == ALLOW
    # ? is exactly one character.
    assert evaluate(Request("s3:GetObject", "arn:aws:s3:::b/ab"), [allow(resource="arn:aws:s3:::b/a?")]) == ALLOW
    assert evaluate(Request("s3:GetObject", "arn:aws:s3:::b/abc"), [allow(resource="arn:aws:s3:::b/a?")]) == IMPLICIT_DENY


def test_policy_variables_in_resources_take_the_requests_values():
    own = "arn:aws:secretsmanager:*:1:secret:flowrig/${aws:PrincipalTag/flowrig-run-id}/*"
    mine = "arn:aws:secretsmanager:us-east-1:1:secret:flowrig/abc/tls-AbCdEf"
    other = "arn:aws:secretsmanager:us-east-1:1:secret:flowrig/xyz/tls-AbCdEf"
    context = {"aws:PrincipalTag/flowrig-run-id": "abc"}
    assert evaluate(Request("secretsmanager:GetSecretValue", mine, context), [allow(resource=own)]) == ALLOW
    assert evaluate(Request("secretsmanager:GetSecretValue", other, context), [allow(resource=own)]) == IMPLICIT_DENY
    # A principal without the tag: the variable matches nothing.
    assert evaluate(Request("secretsmanager:GetSecretValue", mine, {}), [allow(resource=own)]) == IMPLICIT_DENY


# --- conditions ------------------------------------------------------------------------------
def _holds(request: Request, **condition) -> bool:
    return evaluate(request, [allow(**condition)]) == ALLOW


def test_keys_of_a_block_are_anded_and_values_of_a_key_ored():
    request = Request("ec2:RunInstances", "*", {"aws:RequestTag/env": "dev", "aws:RequestTag/team": "a"})
    assert _holds(request, StringEquals={"aws:RequestTag/env": ["prod", "dev"], "aws:RequestTag/team": "a"})
    assert not _holds(request, StringEquals={"aws:RequestTag/env": ["prod", "dev"], "aws:RequestTag/team": "b"})
    assert not _holds(request, StringEquals={"aws:RequestTag/env": "dev"}, StringLike={"aws:RequestTag/team": "b*"})


def test_condition_keys_are_case_insensitive_and_values_case_sensitive():
    request = Request("ecs:RunTask", "*", {"aws:ResourceTag/Owner": "AROAEXAMPLE:task"})
    assert _holds(request, StringEquals={"AWS:resourcetag/owner": "AROAEXAMPLE:task"})
    assert not _holds(request, StringEquals={"aws:ResourceTag/Owner": "aroaexample:task"})
    assert _holds(request, StringEqualsIgnoreCase={"aws:ResourceTag/Owner": "aroaexample:task"})


def test_a_missing_key_fails_a_positive_operator_and_passes_a_negated_one():
    request = Request("ecs:RunTask", "*", {})
    assert not _holds(request, StringEquals={"aws:ResourceTag/owner": "x"})
    assert not _holds(request, StringLike={"aws:ResourceTag/owner": "*"})
    assert _holds(request, StringNotEquals={"aws:ResourceTag/owner": "x"})
    # ...IfExists: "if the key is not present, the condition is true".
    assert _holds(request, StringEqualsIfExists={"aws:ResourceTag/owner": "x"})
    present = Request("ecs:RunTask", "*", {"aws:ResourceTag/owner": "y"})
    assert not _holds(present, StringEqualsIfExists={"aws:ResourceTag/owner": "x"})


def test_a_negated_operator_with_several_values_holds_when_none_matches():
    request = Request("secretsmanager:GetSecretValue", "*", {"aws:PrincipalArn": ROLE})
    assert not _holds(request, StringNotEquals={"aws:PrincipalArn": [ROLE, "other"]})
    assert _holds(request, StringNotEquals={"aws:PrincipalArn": ["other", "another"]})
    assert _holds(request, ArnNotLike={"aws:PrincipalArn": "arn:aws:iam::1:role/other/*"})
    assert not _holds(request, ArnNotLike={"aws:PrincipalArn": "arn:aws:iam::*:role/flowrig/*"})


def test_null_tests_whether_the_key_is_there():
    tagged = Request("ec2:TerminateInstances", "*", {"aws:ResourceTag/flowrig-run-id": "abc"})
    untagged = Request("ec2:TerminateInstances", "*", {})
    assert _holds(tagged, Null={"aws:ResourceTag/flowrig-run-id": "false"})
    assert not _holds(untagged, Null={"aws:ResourceTag/flowrig-run-id": "false"})
    assert _holds(untagged, Null={"aws:ResourceTag/flowrig-run-id": "true"})


def test_for_all_values_holds_for_a_subset_and_for_a_missing_key():
    key = "aws:TagKeys"
    assert _holds(Request("ecs:TagResource", "*", {key: ["lease"]}), **{"ForAllValues:StringEquals": {key: ["lease"]}})
    assert not _holds(Request("ecs:TagResource", "*", {key: ["lease", "flowrig-owner"]}),
                      **{"ForAllValues:StringEquals": {key: ["lease"]}})
    # The documented pitfall: no tags at all also satisfy ForAllValues.
    assert _holds(Request("ecs:TagResource", "*", {}), **{"ForAllValues:StringEquals": {key: ["lease"]}})
    assert _holds(Request("ecs:TagResource", "*", {key: []}), **{"ForAllValues:StringEquals": {key: ["lease"]}})
    # ForAnyValue needs one.
    assert _holds(Request("ecs:TagResource", "*", {key: ["a", "lease"]}), **{"ForAnyValue:StringEquals": {key: "lease"}})
    assert not _holds(Request("ecs:TagResource", "*", {}), **{"ForAnyValue:StringEquals": {key: "lease"}})


def test_a_single_valued_operator_on_a_multivalued_key_is_refused_not_guessed():
    with pytest.raises(ValueError, match="multivalued"):
        _holds(Request("ecs:TagResource", "*", {"aws:TagKeys": ["a"]}), StringEquals={"aws:TagKeys": "a"})


def test_bool_and_arn_operators():
    assert _holds(Request("secretsmanager:PutResourcePolicy", "*", {"secretsmanager:BlockPublicPolicy": True}),
                  Bool={"secretsmanager:BlockPublicPolicy": "true"})
    assert not _holds(Request("secretsmanager:PutResourcePolicy", "*", {"secretsmanager:BlockPublicPolicy": False}),
                      Bool={"secretsmanager:BlockPublicPolicy": "true"})
    policy = "arn:aws:iam::aws:policy/service-role/AmazonECSTaskExecutionRolePolicy"
    assert _holds(Request("iam:AttachRolePolicy", "*", {"iam:PolicyARN": policy}), ArnEquals={"iam:PolicyARN": policy})
    assert not _holds(Request("iam:AttachRolePolicy", "*", {"iam:PolicyARN": "arn:aws:iam::aws:policy/Admin"}),
                      ArnEquals={"iam:PolicyARN": policy})


def test_policy_variables_in_condition_values():
    owner = {"StringEquals": {"aws:ResourceTag/flowrig-owner": "${aws:userid}"}}
    mine = Request("ecs:StopTask", "*", {"aws:userid": "AROA1:task1", "aws:ResourceTag/flowrig-owner": "AROA1:task1"})
    theirs = Request("ecs:StopTask", "*", {"aws:userid": "AROA1:task1", "aws:ResourceTag/flowrig-owner": "AROA1:task2"})
    assert _holds(mine, **owner)
    assert not _holds(theirs, **owner)
    # A variable naming a key the request lacks matches nothing.
    assert not _holds(Request("ecs:StopTask", "*", {"aws:ResourceTag/flowrig-owner": "x"}), **owner)
    # Principal tags as the value: the secret's owner must be the role's.
    same = Request("secretsmanager:GetSecretValue", "*", {"aws:PrincipalTag/flowrig-owner": "u1",
                                                          "secretsmanager:ResourceTag/flowrig-owner": "u1"})
    assert _holds(same, StringEquals={"secretsmanager:ResourceTag/flowrig-owner": "${aws:PrincipalTag/flowrig-owner}"})


def test_unsupported_operators_are_refused():
    with pytest.raises(ValueError, match="unsupported"):
        _holds(Request("ec2:RunInstances", "*", {"aws:SourceIp": "10.0.0.1"}), IpAddress={"aws:SourceIp": "10.0.0.0/8"})
