"""Whether the runner's identity may make each call of the run: IAM's policy simulator
(``iam:SimulatePrincipalPolicy``) on the runner's own user or role, with the run's
resources and condition keys (:mod:`~flowrig.backends.aws.preflight.calls`).

The simulator evaluates the principal's identity policies and permissions boundary.
Service control policies, session policies and resource policies are not simulated:
a call they refuse still fails at run time, with AWS's own message. A runner that may
not call the simulator gets one "not checked" line.
"""

from __future__ import annotations

import re
from typing import Any, Iterable, Mapping

from flowrig.backends.aws.preflight.answers import Refused, ask
from flowrig.backends.aws.preflight.target import PlannedCall
from flowrig.backends.aws.session import Session
from flowrig.backends.preflight import Check

_ASSUMED = re.compile(r"^arn:(?P<partition>[^:]+):sts::(?P<account>\d{12}):assumed-role/(?P<role>[^/]+)/.+$")


def principal_arn(session: Session) -> str | Refused:
    """The runner's user or role ARN, as the simulator takes it (an assumed role's
    session becomes its role, with its path)."""
    sts = session.client("sts")
    found = ask(sts.get_caller_identity, "asking AWS who the credentials belong to")
    if isinstance(found, Refused):
        return found
    arn = str(found["Arn"])
    match = _ASSUMED.match(arn)
    if not match:
        return arn
    role = ask(lambda: session.client("iam").get_role(RoleName=match["role"]), f"reading role {match['role']}")
    if isinstance(role, Refused):
        # Without iam:GetRole the path is unknown: a role on the root path is the best guess.
        return f"arn:{match['partition']}:iam::{match['account']}:role/{match['role']}"
    return str(role["Role"]["Arn"])


def context_entries(context: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Condition keys as the simulator takes them."""
    entries = []
    for key, value in sorted(context.items()):
        if isinstance(value, bool):
            entries.append({"ContextKeyName": key, "ContextKeyValues": [str(value).lower()],
                            "ContextKeyType": "boolean"})
        elif isinstance(value, (list, tuple)):
            entries.append({"ContextKeyName": key, "ContextKeyValues": [str(v) for v in value],
                            "ContextKeyType": "stringList"})
        else:
            entries.append({"ContextKeyName": key, "ContextKeyValues": [str(value)], "ContextKeyType": "string"})
    return entries


def _batches(calls: Iterable[PlannedCall], user_id: str) -> dict[tuple[str, str], tuple[list[str], dict[str, Any]]]:
    """Calls on one resource with one context, together: the simulator asks every
    action of a request on every resource it names, with one context."""
    batches: dict[tuple[str, str], tuple[list[str], dict[str, Any]]] = {}
    for call in calls:
        context = {"aws:userid": user_id, **call.context}
        key = (call.resource, repr(sorted(context.items())))
        actions, _ = batches.setdefault(key, ([], context))
        if call.action not in actions:
            actions.append(call.action)
    return batches


def _simulate(iam: Any, principal: str, resource: str, actions: list[str], context: dict[str, Any]) -> Any:
    results: list[dict[str, Any]] = []
    params: dict[str, Any] = {"PolicySourceArn": principal, "ActionNames": actions,
                              "ContextEntries": context_entries(context)}
    if resource != "*":
        params["ResourceArns"] = [resource]
    while True:
        found = ask(lambda: iam.simulate_principal_policy(**params), "simulating the runner's rights")
        if isinstance(found, Refused):
            return found
        results += found.get("EvaluationResults", [])
        if not found.get("IsTruncated"):
            return results
        params["Marker"] = found["Marker"]


def rights_checks(session: Session, backend: str, user_id: str, calls: Iterable[PlannedCall]) -> list[Check]:
    """One failed check per action the runner may not make (naming its resources), or
    one passed check; one "not checked" line when the simulator cannot be asked."""
    principal = principal_arn(session)
    if isinstance(principal, Refused):
        return [Check("rights", "runner", None, f"who the runner is could not be read ({principal}): not checked")]
    iam = session.client("iam")
    denied: dict[str, list[str]] = {}
    asked = 0
    for (resource, _), (actions, context) in _batches(calls, user_id).items():
        results = _simulate(iam, principal, resource, actions, context)
        if isinstance(results, Refused):
            return [Check("rights", principal, None, f"iam:SimulatePrincipalPolicy was refused ({results.code}): "
                          "the runner's rights are not checked")]
        for result in results:
            asked += 1
            if result.get("EvalDecision") != "allowed":
                action = str(result.get("EvalActionName", "?"))
                where = str(result.get("EvalResourceName") or resource)
                if where not in denied.setdefault(action, []):
                    denied[action].append(where)
    fix = f"attach the policy `flowrig aws iam-policy --backend {backend}` prints to {principal}"
    if not denied:
        return [Check("rights", principal, True, f"may make the run's {asked} calls (service control and session "
                      "policies are not simulated)")]
    return [Check("rights", action, False, f"the runner ({principal}) may not {action} on {', '.join(where)}", fix)
            for action, where in denied.items()]
