"""A small evaluator of IAM policy documents, for the conditions flowrig's policies use.

moto evaluates actions only (each against ``Resource "*"``) and ignores resources,
conditions, permissions boundaries and resource policies, so it cannot tell whether a
policy keeps one run off another run's resources. This module evaluates the documents
themselves, following AWS's documented evaluation logic for one account:

- a request is allowed when no statement of any applicable policy (identity policies,
  the principal's permissions boundary, the resource's policy) denies it, an identity
  policy or the resource policy allows it, and the boundary (when there is one) allows
  it too ("Policy evaluation logic", "Permissions boundaries for IAM entities");
- ``Action``/``NotAction`` match case-insensitively, ``Resource``/``NotResource``
  case-sensitively, each of an ARN's six colon-separated parts on its own, ``*``
  matching any run of characters within a part (``/`` included; the last part keeps
  its colons) and ``?`` exactly one ("IAM JSON policy elements: Resource",
  "Condition operators: ARN");
- every operator block and every key in a ``Condition`` must hold (AND); the values of
  one key are alternatives (OR), negated operators hold when no value matches (NOR);
- a key missing from the request makes a positive operator false and a negated one
  true; ``...IfExists`` holds when the key is missing; ``Null`` tests presence;
  ``ForAllValues:`` holds for a missing key or an empty set and when every request
  value matches; ``ForAnyValue:`` needs one matching value ("Condition operators",
  "Multivalued context keys");
- condition key names are case-insensitive, values case-sensitive (but for the
  ``IgnoreCase`` operators);
- ``${...}`` policy variables are replaced in ``Resource`` and condition values by the
  request's values; a variable whose key the request lacks matches nothing.

Limits (what it does not do): service control and session policies, cross-account
access, ``Principal`` forms other than ``"*"`` and exact ARNs, numeric, date and IP
operators, ``${*}``-style escapes, and single-valued operators on multivalued keys
(refused with an error rather than guessed). tests/unit/test_iam_eval.py checks each rule
above against an example of AWS's documentation.
"""

from __future__ import annotations

import fnmatch
import json
import re
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

ALLOW = "allow"
EXPLICIT_DENY = "explicit deny"
IMPLICIT_DENY = "implicit deny"

_VARIABLE = re.compile(r"\$\{([^}]+)\}")
_STRING_OPS = {"StringEquals", "StringNotEquals", "StringEqualsIgnoreCase", "StringNotEqualsIgnoreCase",
               "StringLike", "StringNotLike", "ArnEquals", "ArnNotEquals", "ArnLike", "ArnNotLike", "Bool"}


@dataclass
class Request:
    """One authorization: an action on one resource (``"*"`` for actions IAM cannot
    scope), with its request context (condition keys, any case; a list is a
    multivalued key)."""

    action: str
    resource: str
    context: Mapping[str, Any] = field(default_factory=dict)
    principal_arns: tuple[str, ...] = ()

    def key(self, name: str) -> Any:
        """The context value of ``name`` (case-insensitive), or ``None``."""
        wanted = name.lower()
        for key, value in self.context.items():
            if key.lower() == wanted:
                return value
        return None


def _document(policy: Any) -> dict[str, Any]:
    return json.loads(policy) if isinstance(policy, str) else policy


def _listed(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def _wildcard(pattern: str, value: str, *, case: bool) -> bool:
    # fnmatch's [] classes are no IAM syntax: escape them, keep * and ?.
    escaped = pattern.replace("[", "[[]")
    if not case:
        escaped, value = escaped.lower(), value.lower()
    return fnmatch.fnmatchcase(value, escaped)


def _arn_match(pattern: str, value: str) -> bool:
    """An ARN pattern against an ARN, each of the six colon-separated parts on its own:
    a wildcard never spans parts (the last part, the resource, keeps its colons)."""
    if pattern == "*":
        return True
    wanted, found = pattern.split(":", 5), value.split(":", 5)
    if len(wanted) != 6 or len(found) != 6:
        return _wildcard(pattern, value, case=True)
    return all(_wildcard(w, f, case=True) for w, f in zip(wanted, found))


class _Missing(Exception):
    """A policy variable names a key the request does not have."""


def _substitute(text: str, request: Request) -> str:
    def value(match: re.Match[str]) -> str:
        found = request.key(match.group(1))
        if found is None or isinstance(found, (list, dict)):
            raise _Missing(match.group(1))
        return str(found).lower() if isinstance(found, bool) else str(found)

    return _VARIABLE.sub(value, text)


def _matches_any(patterns: Iterable[str], value: str, request: Request) -> bool:
    for pattern in patterns:
        try:
            if _arn_match(_substitute(pattern, request), value):
                return True
        except _Missing:
            continue
    return False


def _single(operator: str, policy_value: str, actual: str) -> bool:
    """Whether one request value matches one policy value under a positive ``operator``."""
    if operator == "StringEquals":
        return actual == policy_value
    if operator == "StringEqualsIgnoreCase":
        return actual.lower() == policy_value.lower()
    if operator == "StringLike":
        return _wildcard(policy_value, actual, case=True)
    if operator in ("ArnLike", "ArnEquals"):
        # ArnEquals and ArnLike behave alike: both take wildcards in each ARN part.
        return _arn_match(policy_value, actual)
    if operator == "Bool":
        return actual.lower() == policy_value.lower()
    raise ValueError(f"unsupported condition operator {operator}")


_NEGATED = {"StringNotEquals": "StringEquals", "StringNotEqualsIgnoreCase": "StringEqualsIgnoreCase",
            "StringNotLike": "StringLike", "ArnNotEquals": "ArnEquals", "ArnNotLike": "ArnLike"}


def _condition(operator: str, key: str, policy_values: Any, request: Request) -> bool:
    """One key of one operator block."""
    qualifier, _, base = operator.rpartition(":")
    if_exists = base.endswith("IfExists")
    base = base[: -len("IfExists")] if if_exists else base
    actual = request.key(key)
    if base == "Null":
        wanted = str(_listed(policy_values)[0]).lower() == "true"
        return (actual is None or actual == []) == wanted
    if base not in _STRING_OPS:
        raise ValueError(f"unsupported condition operator {operator}")
    negated = base in _NEGATED
    positive = _NEGATED.get(base, base)

    def values() -> list[str]:
        found = []
        for value in _listed(policy_values):
            try:
                found.append(_substitute(str(value).lower() if isinstance(value, bool) else str(value), request))
            except _Missing:
                continue  # a value naming a missing key matches nothing
        return found

    def any_match(one: str) -> bool:
        return any(_single(positive, value, one) for value in values())

    if qualifier:
        requested = [] if actual is None else [str(v) for v in _listed(actual)]
        if qualifier == "ForAllValues":
            # Every request value matches a policy value: true for a missing key or an
            # empty set, which is why AWS warns to pair it with a Null check when needed.
            held = all(any_match(one) for one in requested)
            return not held if negated else held
        if qualifier == "ForAnyValue":
            held = any(any_match(one) for one in requested)
            return not held if negated else held
        raise ValueError(f"unsupported set operator {qualifier}")
    if actual is None:
        return True if (if_exists or negated) else False
    if isinstance(actual, list):
        raise ValueError(f"{key} is multivalued: use ForAllValues: or ForAnyValue: with {operator}")
    actual = str(actual).lower() if isinstance(actual, bool) else str(actual)
    return not any_match(actual) if negated else any_match(actual)


def conditions_hold(conditions: Mapping[str, Mapping[str, Any]] | None, request: Request) -> bool:
    """Whether every key of every operator block of ``conditions`` holds for ``request``."""
    for operator, keys in (conditions or {}).items():
        for key, values in keys.items():
            if not _condition(operator, key, values, request):
                return False
    return True


def _principal_matches(principal: Any, request: Request) -> bool:
    if principal is None:
        return True  # an identity policy: its principal is whoever holds it
    if principal == "*":
        return True
    arns = _listed(principal.get("AWS", [])) if isinstance(principal, dict) else []
    return any(arn == "*" or arn in request.principal_arns for arn in arns)


def statement_applies(statement: Mapping[str, Any], request: Request, *, resource_policy: bool = False) -> bool:
    """Whether ``statement``'s principal, action, resource and conditions all match."""
    if resource_policy and not _principal_matches(statement.get("Principal"), request):
        return False
    if "Action" in statement:
        if not any(_wildcard(a, request.action, case=False) for a in _listed(statement["Action"])):
            return False
    elif any(_wildcard(a, request.action, case=False) for a in _listed(statement.get("NotAction", []))):
        return False
    if "Resource" in statement:
        if not _matches_any(_listed(statement["Resource"]), request.resource, request):
            return False
    elif "NotResource" in statement:
        if _matches_any(_listed(statement["NotResource"]), request.resource, request):
            return False
    elif not resource_policy:
        return False  # an identity policy statement without a resource is invalid
    return conditions_hold(statement.get("Condition"), request)


def _effects(policy: Any, request: Request, *, resource_policy: bool = False) -> set[str]:
    effects = set()
    for statement in _listed(_document(policy).get("Statement", [])):
        if statement_applies(statement, request, resource_policy=resource_policy):
            effects.add(statement["Effect"])
    return effects


def evaluate(
    request: Request,
    identity_policies: Iterable[Any],
    *,
    boundary: Any = None,
    resource_policy: Any = None,
) -> str:
    """:data:`ALLOW`, :data:`EXPLICIT_DENY` or :data:`IMPLICIT_DENY` for ``request``.

    ``identity_policies`` are the principal's own documents (inline and attached),
    ``boundary`` its permissions boundary, ``resource_policy`` the policy of the
    resource (same account).
    """
    identity = set().union(*(_effects(p, request) for p in identity_policies)) if identity_policies else set()
    bounded = _effects(boundary, request) if boundary is not None else set()
    resource = _effects(resource_policy, request, resource_policy=True) if resource_policy is not None else set()
    if "Deny" in identity | bounded | resource:
        return EXPLICIT_DENY
    if boundary is not None and "Allow" not in bounded:
        return IMPLICIT_DENY
    return ALLOW if "Allow" in identity | resource else IMPLICIT_DENY
