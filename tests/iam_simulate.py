"""Stand-ins, for the tests' fault proxy, of two AWS APIs moto lacks.

- :func:`simulate_answer`: ``iam:SimulatePrincipalPolicy``, answered by evaluating the
  principal's real policy documents in the moto server's state (its inline and attached
  policies, and a role's permissions boundary) with :mod:`tests.iam_eval`, for each
  action on each resource the request names, with its context entries. What AWS's
  simulator does besides (SCPs and session policies, which flowrig does not simulate
  either) is left out. It answers in IAM's XML, as botocore parses it.
- :func:`quota_answer`: Service Quotas' ``GetServiceQuota`` (moto knows service code
  ``vpc`` only), with the value the test gives, or ``NoSuchResourceException``.
"""

from __future__ import annotations

import json
import urllib.parse
from typing import Any, Callable
from xml.sax.saxutils import escape

from tests.iam_eval import ALLOW, EXPLICIT_DENY, Request, evaluate
from tests.iam_support import ACCOUNT, State

#: iam_eval's decisions as the simulator words them.
_DECISIONS = {ALLOW: "allowed", EXPLICIT_DENY: "explicitDeny"}

Answer = Callable[[bytes], tuple[int, dict[str, str], bytes]]


def _members(form: dict[str, list[str]], prefix: str) -> list[str]:
    found = []
    n = 1
    while f"{prefix}.member.{n}" in form:
        found.append(form[f"{prefix}.member.{n}"][0])
        n += 1
    return found


def context_of(form: dict[str, list[str]]) -> dict[str, Any]:
    """``ContextEntries`` of a query form as condition keys (a ``stringList`` as a list)."""
    context: dict[str, Any] = {}
    n = 1
    while f"ContextEntries.member.{n}.ContextKeyName" in form:
        base = f"ContextEntries.member.{n}"
        values = _members(form, f"{base}.ContextKeyValues")
        kind = form.get(f"{base}.ContextKeyType", ["string"])[0]
        context[form[f"{base}.ContextKeyName"][0]] = values if kind.endswith("List") else (values[0] if values else "")
        n += 1
    return context


def principal_policies(state: State, arn: str) -> tuple[list[Any], Any, tuple[str, ...]]:
    """A user's or role's identity policies, its boundary, and the ARNs it goes by."""
    name = arn.rsplit("/", 1)[-1]
    if ":user/" in arn:
        user = state.iam.get_user(name)
        policies = list(user.policies.values()) + [state.policy_document(a) for a in user.managed_policies]
        return [p for p in policies if p], None, (user.arn,)
    role = state.iam.get_role(name)
    policies = list(role.policies.values()) + [state.policy_document(a) for a in role.managed_policies]
    boundary = state.policy_document(role.permissions_boundary_arn) if role.permissions_boundary_arn else None
    return [p for p in policies if p], boundary, (role.arn,)


def simulate_answer(state_factory: Callable[[], State] = State, calls: list[dict[str, Any]] | None = None) -> Answer:
    """An answer of ``SimulatePrincipalPolicy`` from the principal's real documents;
    each request is appended to ``calls`` (parsed) when given."""

    def answer(body: bytes) -> tuple[int, dict[str, str], bytes]:
        form = urllib.parse.parse_qs(body.decode())
        principal = form["PolicySourceArn"][0]
        actions = _members(form, "ActionNames")
        resources = _members(form, "ResourceArns") or ["*"]
        context = context_of(form)
        if calls is not None:
            calls.append({"principal": principal, "actions": actions, "resources": resources, "context": context})
        policies, boundary, arns = principal_policies(state_factory(), principal)
        results = []
        for action in actions:
            for resource in resources:
                decision = evaluate(Request(action, resource, context, arns), policies, boundary=boundary)
                results.append(
                    f"<member><EvalActionName>{escape(action)}</EvalActionName><EvalResourceName>"
                    f"{escape(resource)}</EvalResourceName><EvalDecision>{_DECISIONS.get(decision, 'implicitDeny')}"
                    "</EvalDecision><MatchedStatements/><MissingContextValues/></member>"
                )
        xml = (
            '<SimulatePrincipalPolicyResponse xmlns="https://iam.amazonaws.com/doc/2010-05-08/">'
            "<SimulatePrincipalPolicyResult><IsTruncated>false</IsTruncated><EvaluationResults>"
            f"{''.join(results)}</EvaluationResults></SimulatePrincipalPolicyResult>"
            "<ResponseMetadata><RequestId>fault-proxy</RequestId></ResponseMetadata></SimulatePrincipalPolicyResponse>"
        )
        return 200, {"Content-Type": "text/xml"}, xml.encode()

    return answer


def quota_answer(values: dict[str, float]) -> Answer:
    """An answer of ``GetServiceQuota``: ``values`` by quota code; any other code is
    ``NoSuchResourceException``, as Service Quotas answers for a quota it does not hold."""

    def answer(body: bytes) -> tuple[int, dict[str, str], bytes]:
        request = json.loads(body or b"{}")
        code, service = request.get("QuotaCode", ""), request.get("ServiceCode", "")
        headers = {"Content-Type": "application/x-amz-json-1.1"}
        if code not in values:
            return 400, headers, json.dumps({"__type": "NoSuchResourceException",
                                             "message": f"quota {code} not found"}).encode()
        quota = {"ServiceCode": service, "QuotaCode": code, "Value": float(values[code]), "Unit": "None",
                 "QuotaArn": f"arn:aws:servicequotas:us-east-1:{ACCOUNT}:{service}/{code}", "Adjustable": True}
        return 200, headers, json.dumps({"Quota": quota}).encode()

    return answer
