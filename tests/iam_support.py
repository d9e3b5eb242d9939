"""IAM enforced on the test moto server with resources, conditions, boundaries and
resource policies, for the operations flowrig makes.

moto checks a caller's action against ``Resource "*"`` only: it cannot tell a runner
policy that keeps one run off another's resources from one that does not. The
``iam_enforced`` fixture replaces moto's check (the server runs in this process) by one
that builds, for each request, what AWS authorizes, as AWS's documentation of each
service describes it ("Actions, resources, and condition keys for ..."):

- the action on each resource the request names, with ``aws:RequestTag/*``,
  ``aws:TagKeys``, ``aws:ResourceTag/*`` (from the server's state) and the service's
  keys (``ecs:cluster``, ``ecs:CreateAction``, ``ec2:CreateAction``,
  ``iam:PolicyARN``, ``iam:PermissionsBoundary``, ``secretsmanager:BlockPublicPolicy``);
- the actions AWS authorizes as part of the call: ``iam:PassRole`` of every role a task
  definition, a RunTask override, an instance profile or AddRoleToInstanceProfile
  names (with ``iam:PassedToService``), and tagging at creation (``ecs:TagResource``,
  ``ec2:CreateTags``, ``iam:TagRole``, ``iam:TagInstanceProfile``,
  ``secretsmanager:TagResource``, ``logs:TagResource``);
- the caller: its identity policies, its permissions boundary, ``aws:userid``,
  ``aws:PrincipalArn`` and ``aws:PrincipalTag/*`` (an IAM user, or an assumed role's
  session, as a task's or an instance's identity is);

and evaluates them with :mod:`tests.iam_eval` (with the secret's resource policy for
Secrets Manager calls). An operation it has no mapping for is asked on ``"*"``, which a
scoped policy does not allow: a gap shows as a refusal, never as a silent pass.

Every decision is recorded (``IAMEnforcer.decisions``), so a test can tell which printed
statements a run used.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any, Iterator

import pytest

from tests.iam_eval import ALLOW, Request, evaluate

ACCOUNT = "123456789012"
REGION = "us-east-1"
ECS_TASKS = "ecs-tasks.amazonaws.com"
EC2_SERVICE = "ec2.amazonaws.com"


def arn(service: str, resource: str, region: str = REGION, account: str = ACCOUNT) -> str:
    return f"arn:aws:{service}:{'' if service == 'iam' else region}:{account}:{resource}"


# --- request parameters ----------------------------------------------------------------
def _query(data: dict[str, list[str]]) -> dict[str, str]:
    return {key: values[0] for key, values in (data or {}).items() if values}


def _members(form: dict[str, str], prefix: str) -> list[dict[str, str]]:
    """``prefix.N.Field`` entries of a query form as a list of dicts, in order."""
    found: dict[int, dict[str, str]] = {}
    pattern = re.compile(rf"^{re.escape(prefix)}\.(\d+)\.(.+)$")
    for key, value in form.items():
        match = pattern.match(key)
        if match:
            found.setdefault(int(match.group(1)), {})[match.group(2)] = value
    return [found[n] for n in sorted(found)]


def _listed(form: dict[str, str], prefix: str) -> list[str]:
    pattern = re.compile(rf"^{re.escape(prefix)}\.(\d+)$")
    return [form[k] for k in sorted((k for k in form if pattern.match(k)), key=lambda k: int(k.rsplit(".", 1)[1]))]


def _tag_context(tags: dict[str, str], prefix: str = "aws:RequestTag") -> dict[str, Any]:
    context: dict[str, Any] = {f"{prefix}/{key}": value for key, value in tags.items()}
    if prefix == "aws:RequestTag":
        context["aws:TagKeys"] = list(tags)
    return context


def _pairs(items: list[dict[str, str]] | None, key: str = "key", value: str = "value") -> dict[str, str]:
    return {item[key]: item[value] for item in items or [] if key in item}


# --- the server's state ----------------------------------------------------------------
class State:
    """Read access to the in-process moto backends (tags, roles, policies)."""

    def __init__(self, account: str = ACCOUNT, region: str = REGION) -> None:
        from moto.ec2.models import ec2_backends
        from moto.ecs.models import ecs_backends
        from moto.iam.models import iam_backends
        from moto.logs.models import logs_backends
        from moto.secretsmanager.models import secretsmanager_backends

        self.iam = iam_backends[account]["aws"]
        self.ecs = ecs_backends[account][region]
        self.ec2 = ec2_backends[account][region]
        self.logs = logs_backends[account][region]
        self.secrets = secretsmanager_backends[account][region]

    # IAM
    def role(self, name_or_arn: str) -> Any:
        try:
            if name_or_arn.startswith("arn:"):
                return self.iam.get_role_by_arn(name_or_arn)
            return self.iam.get_role(name_or_arn)
        except Exception:
            return None

    @staticmethod
    def tags_of(entity: Any) -> dict[str, str]:
        tags = getattr(entity, "tags", None) or {}
        if isinstance(tags, dict):
            return {k: (v["Value"] if isinstance(v, dict) else v) for k, v in tags.items()}
        return _pairs(tags, "Key", "Value")

    def role_context(self, role: Any) -> dict[str, Any]:
        if role is None:
            return {}
        context = _tag_context(self.tags_of(role), "aws:ResourceTag")
        if role.permissions_boundary_arn:
            context["iam:PermissionsBoundary"] = role.permissions_boundary_arn
        return context

    def profile(self, name_or_arn: str) -> Any:
        try:
            if name_or_arn.startswith("arn:"):
                return self.iam.get_instance_profile_by_arn(name_or_arn)
            return self.iam.get_instance_profile(name_or_arn)
        except Exception:
            return None

    def policy_document(self, policy_arn: str) -> dict[str, Any] | None:
        policy = self.iam.managed_policies.get(policy_arn)
        if policy is None:
            return None
        version = next(v for v in policy.versions if v.is_default)
        document = version.document
        return json.loads(document) if isinstance(document, str) else document

    # ECS
    def cluster(self, name_or_arn: str | None) -> Any:
        name = (name_or_arn or "default").rsplit("/", 1)[-1]
        return self.ecs.clusters.get(name)

    def task_definition(self, reference: str) -> Any:
        try:
            return self.ecs.describe_task_definition(reference)
        except Exception:
            return None

    def next_revision(self, family: str) -> int:
        return max(self.ecs.task_definitions.get(family, {}) or {0: None}) + 1

    def task(self, cluster: Any, task: str) -> Any:
        if cluster is None:
            return None
        ident = task.rsplit("/", 1)[-1]
        for key, found in (self.ecs.tasks.get(cluster.name) or {}).items():
            if key == task or key.rsplit("/", 1)[-1] == ident:
                return found
        return None

    def ecs_tags(self, resource_arn: str) -> dict[str, str]:
        kind = resource_arn.split(":", 5)[-1].split("/", 1)[0]
        if kind == "cluster":
            found = self.cluster(resource_arn)
            return _pairs(found.tags if found else [])
        if kind == "task-definition":
            found = self.task_definition(resource_arn)
            return _pairs(found.tags if found else [])
        if kind == "task":
            parts = resource_arn.split(":", 5)[-1].split("/")
            found = self.task(self.cluster(parts[1]), parts[-1]) if len(parts) >= 3 else None
            return _pairs(found.tags if found else [])
        return {}

    # Secrets Manager
    def secret(self, secret_id: str) -> Any:
        try:
            return self.secrets.describe_secret(secret_id)
        except Exception:
            return None

    # EC2
    def ec2_tags(self, resource_id: str) -> dict[str, str]:
        return dict(self.ec2.tags.get(resource_id, {}))

    # Logs
    def log_group_tags(self, name: str) -> dict[str, str]:
        return dict(self.logs.list_tags_log_group(name)) if name in self.logs.groups else {}


# --- the caller ------------------------------------------------------------------------
@dataclass
class Caller:
    """The principal of a request: what it is called, its policies, its context keys."""

    arns: tuple[str, ...]
    label: str
    policies: list[Any]
    boundary: Any
    context: dict[str, Any] = field(default_factory=dict)


def caller_of(access_key: Any, state: State) -> Caller:
    if hasattr(access_key, "_owner_role_name"):
        role = state.iam.get_role(access_key._owner_role_name)
        session = access_key._session_name
        session_arn = f"arn:aws:sts::{ACCOUNT}:assumed-role/{role.name}/{session}"
        policies = list(role.policies.values()) + [state.policy_document(a) for a in role.managed_policies]
        boundary = state.policy_document(role.permissions_boundary_arn) if role.permissions_boundary_arn else None
        context = {"aws:userid": f"{role.id}:{session}", "aws:PrincipalArn": role.arn,
                   "aws:PrincipalAccount": ACCOUNT, **_tag_context(state.tags_of(role), "aws:PrincipalTag")}
        return Caller((role.arn, session_arn), session_arn, [p for p in policies if p], boundary, context)
    user = state.iam.get_user(access_key._owner_user_name)
    policies = list(user.policies.values()) + [state.policy_document(a) for a in user.managed_policies]
    tags = _pairs(state.iam.tagger.list_tags_for_resource(user.arn)["Tags"], "Key", "Value")
    context = {"aws:userid": user.id, "aws:username": user.name, "aws:PrincipalArn": user.arn,
               "aws:PrincipalAccount": ACCOUNT, **_tag_context(tags, "aws:PrincipalTag")}
    return Caller((user.arn,), user.arn, [p for p in policies if p], None, context)


# --- what each operation asks --------------------------------------------------------------
@dataclass
class Ask:
    """One authorization a request needs (before the caller's context is added)."""

    action: str
    resource: str
    context: dict[str, Any] = field(default_factory=dict)
    resource_policy: Any = None


def _pass_role(state: State, role_arn: str | None, service: str) -> list[Ask]:
    if not role_arn:
        return []
    role = state.role(role_arn)
    context = {"iam:PassedToService": service, **state.role_context(role)}
    return [Ask("iam:PassRole", role.arn if role else role_arn, context)]


def _ecs(state: State, operation: str, body: dict[str, Any]) -> list[Ask]:
    action = f"ecs:{operation}"
    if operation == "CreateCluster":
        tags = _pairs(body.get("tags"))
        resource = arn("ecs", f"cluster/{body.get('clusterName', 'default')}")
        asks = [Ask(action, resource, _tag_context(tags))]
        if tags:
            asks.append(Ask("ecs:TagResource", resource, {**_tag_context(tags), "ecs:CreateAction": operation}))
        return asks
    if operation == "DeleteCluster":
        cluster = state.cluster(body.get("cluster"))
        resource = cluster.arn if cluster else arn("ecs", f"cluster/{body.get('cluster')}")
        return [Ask(action, resource, _tag_context(state.ecs_tags(resource), "aws:ResourceTag"))]
    if operation == "RegisterTaskDefinition":
        tags = _pairs(body.get("tags"))
        family = body.get("family", "")
        resource = arn("ecs", f"task-definition/{family}:{state.next_revision(family)}")
        asks = [Ask(action, resource, _tag_context(tags))]
        if tags:
            asks.append(Ask("ecs:TagResource", resource, {**_tag_context(tags), "ecs:CreateAction": operation}))
        for key in ("executionRoleArn", "taskRoleArn"):
            asks += _pass_role(state, body.get(key), ECS_TASKS)
        return asks
    if operation == "RunTask":
        tags = _pairs(body.get("tags"))
        cluster = state.cluster(body.get("cluster"))
        cluster_arn = cluster.arn if cluster else arn("ecs", f"cluster/{body.get('cluster', 'default')}")
        definition = state.task_definition(body.get("taskDefinition", ""))
        resource = definition.arn if definition else arn("ecs", f"task-definition/{body.get('taskDefinition')}")
        context = {**_tag_context(tags), **_tag_context(state.ecs_tags(resource), "aws:ResourceTag"),
                   "ecs:cluster": cluster_arn}
        asks = [Ask(action, resource, context)]
        if tags:
            asks.append(Ask("ecs:TagResource", arn("ecs", f"task/{cluster_arn.rsplit('/', 1)[-1]}/*"),
                            {**_tag_context(tags), "ecs:CreateAction": operation}))
        overrides = body.get("overrides") or {}
        for key in ("executionRoleArn", "taskRoleArn"):
            asks += _pass_role(state, overrides.get(key), ECS_TASKS)
        return asks
    if operation in ("DescribeTasks", "StopTask"):
        cluster = state.cluster(body.get("cluster"))
        cluster_arn = cluster.arn if cluster else arn("ecs", f"cluster/{body.get('cluster', 'default')}")
        asks = []
        for task_id in body.get("tasks") or [body.get("task", "")]:
            task = state.task(cluster, task_id)
            resource = task.task_arn if task is not None else (
                task_id if task_id.startswith("arn:") else arn("ecs", f"task/{cluster_arn.rsplit('/', 1)[-1]}/{task_id}"))
            asks.append(Ask(action, resource, {
                **_tag_context(_pairs(task.tags) if task is not None else {}, "aws:ResourceTag"),
                "ecs:cluster": cluster_arn}))
        return asks
    if operation == "DescribeClusters":
        return [Ask(action, c if c.startswith("arn:") else arn("ecs", f"cluster/{c}")) for c in body.get("clusters", [])]
    if operation == "DescribeCapacityProviders":
        # A name, or the ARN AWS gives a capacity provider (Fargate's own are AWS's, on "*").
        return [Ask(action, p if p.startswith("arn:") else arn("ecs", f"capacity-provider/{p}"))
                for p in body.get("capacityProviders", [])]
    if operation == "ListTasks":
        cluster = state.cluster(body.get("cluster"))
        name = cluster.name if cluster else body.get("cluster", "default")
        return [Ask(action, arn("ecs", f"container-instance/{name}/*"),
                    {"ecs:cluster": cluster.arn if cluster else arn("ecs", f"cluster/{name}")})]
    if operation == "TagResource":
        resource = body.get("resourceArn", "")
        return [Ask(action, resource, {**_tag_context(_pairs(body.get("tags"))),
                                       **_tag_context(state.ecs_tags(resource), "aws:ResourceTag")})]
    if operation == "DeleteTaskDefinitions":
        asks = []
        for reference in body.get("taskDefinitions", []):
            definition = state.task_definition(reference)
            resource = definition.arn if definition else reference
            asks.append(Ask(action, resource, _tag_context(state.ecs_tags(resource), "aws:ResourceTag")))
        return asks
    return [Ask(action, "*")]  # DeregisterTaskDefinition and the Describe/List calls: "*"


def _secretsmanager(state: State, operation: str, body: dict[str, Any]) -> list[Ask]:
    action = f"secretsmanager:{operation}"
    if operation == "CreateSecret":
        tags = _pairs(body.get("Tags"), "Key", "Value")
        # The ARN of a secret not made yet: its name and the six characters AWS adds.
        resource = arn("secretsmanager", f"secret:{body.get('Name')}-AbCdEf")
        context = {**_tag_context(tags), "secretsmanager:Name": body.get("Name")}
        asks = [Ask(action, resource, context)]
        if tags:
            asks.append(Ask("secretsmanager:TagResource", resource, _tag_context(tags)))
        return asks
    secret = state.secret(body.get("SecretId", ""))
    if secret is None:
        return [Ask(action, arn("secretsmanager", f"secret:{body.get('SecretId')}"))]
    context = _tag_context(_pairs(secret.tags, "Key", "Value"), "aws:ResourceTag")
    if operation == "TagResource":
        context.update(_tag_context(_pairs(body.get("Tags"), "Key", "Value")))
    if operation == "UntagResource":
        context["aws:TagKeys"] = list(body.get("TagKeys", []))
    if operation == "PutResourcePolicy":
        context["secretsmanager:BlockPublicPolicy"] = bool(body.get("BlockPublicPolicy", False))
    return [Ask(action, secret.arn, context, resource_policy=json.loads(secret.policy) if secret.policy else None)]


def _logs(state: State, operation: str, body: dict[str, Any]) -> list[Ask]:
    action = f"logs:{operation}"
    name = body.get("logGroupName")
    if not name:
        return [Ask(action, "*")]
    resource = arn("logs", f"log-group:{name}")
    if operation == "CreateLogGroup":
        tags = dict(body.get("tags") or {})
        asks = [Ask(action, resource, _tag_context(tags))]
        if tags:
            asks.append(Ask("logs:TagResource", resource, _tag_context(tags)))
        return asks
    if operation in ("GetLogEvents", "PutLogEvents", "CreateLogStream"):
        resource = f"{resource}:log-stream:{body.get('logStreamName', '')}"
    return [Ask(action, resource, _tag_context(state.log_group_tags(name), "aws:ResourceTag"))]


def _ec2_arn(resource_id: str) -> str:
    kind = {"sg": "security-group", "i": "instance", "vol": "volume", "subnet": "subnet", "vpc": "vpc",
            "eni": "network-interface"}.get(resource_id.split("-", 1)[0], "unknown")
    return arn("ec2", f"{kind}/{resource_id}")


def _ec2(state: State, operation: str, form: dict[str, str]) -> list[Ask]:
    action = f"ec2:{operation}"

    def specified(kind: str) -> dict[str, str]:
        for spec in _members(form, "TagSpecification"):
            if spec.get("ResourceType") == kind:
                return {spec[k]: spec[k.replace(".Key", ".Value")] for k in spec if k.endswith(".Key")}
        return {}

    if operation == "CreateSecurityGroup":
        tags = specified("security-group")
        asks = [Ask(action, arn("ec2", f"vpc/{form.get('VpcId', '')}")),
                Ask(action, arn("ec2", "security-group/*"), _tag_context(tags))]
        if tags:
            asks.append(Ask("ec2:CreateTags", arn("ec2", "security-group/*"),
                            {**_tag_context(tags), "ec2:CreateAction": operation}))
        return asks
    if operation in ("AuthorizeSecurityGroupIngress", "DeleteSecurityGroup"):
        group = form.get("GroupId", "")
        return [Ask(action, _ec2_arn(group), _tag_context(state.ec2_tags(group), "aws:ResourceTag"))]
    if operation == "CreateTags":
        tags = {tag["Key"]: tag.get("Value", "") for tag in _members(form, "Tag")}
        return [Ask(action, _ec2_arn(ident), {**_tag_context(tags),
                                              **_tag_context(state.ec2_tags(ident), "aws:ResourceTag")})
                for ident in _listed(form, "ResourceId")]
    if operation == "TerminateInstances":
        return [Ask(action, _ec2_arn(ident), _tag_context(state.ec2_tags(ident), "aws:ResourceTag"))
                for ident in _listed(form, "InstanceId")]
    if operation == "RunInstances":
        tags = specified("instance")
        volume_tags = specified("volume")
        asks = [Ask(action, arn("ec2", "instance/*"), _tag_context(tags)),
                Ask(action, arn("ec2", "volume/*"), _tag_context(volume_tags)),
                Ask(action, arn("ec2", "network-interface/*"))]
        interfaces = _members(form, "NetworkInterface")
        subnet = form.get("SubnetId") or (interfaces[0].get("SubnetId") if interfaces else None)
        if subnet:
            asks.append(Ask(action, arn("ec2", f"subnet/{subnet}")))
        groups = _listed(form, "SecurityGroupId") + [
            value for interface in interfaces for key, value in interface.items() if key.startswith("SecurityGroupId")]
        for group in groups:
            asks.append(Ask(action, _ec2_arn(group), _tag_context(state.ec2_tags(group), "aws:ResourceTag")))
        if form.get("KeyName"):
            asks.append(Ask(action, arn("ec2", f"key-pair/{form['KeyName']}")))
        asks.append(Ask(action, f"arn:aws:ec2:{REGION}::image/{form.get('ImageId', '')}"))
        for kind, kind_tags in (("instance", tags), ("volume", volume_tags)):
            if kind_tags:
                asks.append(Ask("ec2:CreateTags", arn("ec2", f"{kind}/*"),
                                {**_tag_context(kind_tags), "ec2:CreateAction": operation}))
        profile_ref = form.get("IamInstanceProfile.Arn") or form.get("IamInstanceProfile.Name")
        profile = state.profile(profile_ref) if profile_ref else None
        for role in getattr(profile, "roles", []):
            asks += _pass_role(state, role.arn, EC2_SERVICE)
        return asks
    return [Ask(action, "*")]  # the Describe calls: "*"


def _iam(state: State, operation: str, form: dict[str, str]) -> list[Ask]:
    action = f"iam:{operation}"
    tags = {member["Key"]: member.get("Value", "") for member in _members(form, "Tags.member")}
    if operation == "CreateRole":
        resource = arn("iam", f"role{form.get('Path', '/')}{form.get('RoleName')}")
        context = _tag_context(tags)
        if form.get("PermissionsBoundary"):
            context["iam:PermissionsBoundary"] = form["PermissionsBoundary"]
        asks = [Ask(action, resource, context)]
        if tags:
            asks.append(Ask("iam:TagRole", resource, _tag_context(tags)))
        return asks
    if operation == "CreateInstanceProfile":
        resource = arn("iam", f"instance-profile{form.get('Path', '/')}{form.get('InstanceProfileName')}")
        asks = [Ask(action, resource, _tag_context(tags))]
        if tags:
            asks.append(Ask("iam:TagInstanceProfile", resource, _tag_context(tags)))
        return asks
    if "InstanceProfileName" in form:
        profile = state.profile(form["InstanceProfileName"])
        resource = profile.arn if profile else arn("iam", f"instance-profile/{form['InstanceProfileName']}")
        context = _tag_context(state.tags_of(profile) if profile else {}, "aws:ResourceTag")
        asks = [Ask(action, resource, {**context, **_tag_context(tags)} if tags else context)]
        if operation == "AddRoleToInstanceProfile":
            role = state.role(form.get("RoleName", ""))
            asks += _pass_role(state, role.arn if role else None, EC2_SERVICE)
        return asks
    if "RoleName" in form:
        role = state.role(form["RoleName"])
        resource = role.arn if role else arn("iam", f"role/{form['RoleName']}")
        context = state.role_context(role)
        if operation in ("AttachRolePolicy", "DetachRolePolicy"):
            context["iam:PolicyARN"] = form.get("PolicyArn", "")
        if operation == "TagRole":
            context.update(_tag_context(tags))
        return [Ask(action, resource, context)]
    if operation in ("GetPolicy", "GetPolicyVersion", "ListPolicyVersions"):
        return [Ask(action, form.get("PolicyArn", "*"))]
    return [Ask(action, "*")]


def _ssm(state: State, operation: str, body: dict[str, Any]) -> list[Ask]:
    name = body.get("Name", "")
    # AWS's public parameters carry no account in their ARN.
    account = "" if name.startswith("/aws/") else ACCOUNT
    return [Ask(f"ssm:{operation}", arn("ssm", f"parameter{name}", account=account))]


def _ecr(state: State, operation: str, body: dict[str, Any]) -> list[Ask]:
    name = body.get("repositoryName")
    resource = arn("ecr", f"repository/{name}", account=body.get("registryId") or ACCOUNT) if name else "*"
    return [Ask(f"ecr:{operation}", resource)]


def asks_of(state: State, service: str, operation: str, body: bytes | None, data: dict[str, list[str]]) -> list[Ask]:
    """Every authorization ``operation`` of ``service`` needs, with its context."""
    if service in ("ec2", "iam", "sts"):
        form = _query(data)
        if service == "ec2":
            return _ec2(state, operation, form)
        if service == "iam":
            return _iam(state, operation, form)
        if operation == "AssumeRole":
            return [Ask("sts:AssumeRole", form.get("RoleArn", "*"))]
        return [Ask(f"sts:{operation}", "*")]
    parsed = json.loads(body or b"{}") if body else {}
    handler = {"ecs": _ecs, "secretsmanager": _secretsmanager, "logs": _logs, "ssm": _ssm, "ecr": _ecr}.get(service)
    return handler(state, operation, parsed) if handler else [Ask(f"{service}:{operation}", "*")]


# --- the enforcer -----------------------------------------------------------------------------
@dataclass
class Decision:
    caller: str
    action: str
    resource: str
    result: str


class IAMEnforcer:
    """What the fixture yields: every decision made while it was on."""

    def __init__(self) -> None:
        self.decisions: list[Decision] = []

    def refused(self) -> list[Decision]:
        return [d for d in self.decisions if d.result != ALLOW]

    def allowed_actions(self) -> set[str]:
        return {d.action for d in self.decisions if d.result == ALLOW}


def authorize(iam_request: Any, state: State, enforcer: IAMEnforcer) -> None:
    """Check one request as AWS would; raise moto's AccessDenied naming the first refusal."""
    from moto.core.exceptions import AccessDeniedError

    service, _, operation = iam_request._action.partition(":")
    caller = caller_of(iam_request._access_key, state)
    if iam_request._action == "sts:GetCallerIdentity":
        # AWS answers it for any principal, whatever its policies.
        enforcer.decisions.append(Decision(caller.label, iam_request._action, "*", ALLOW))
        return
    for ask in asks_of(state, service, operation, iam_request._body, iam_request._data):
        request = Request(ask.action, ask.resource, {**ask.context, **caller.context}, caller.arns)
        result = evaluate(request, caller.policies, boundary=caller.boundary, resource_policy=ask.resource_policy)
        enforcer.decisions.append(Decision(caller.label, ask.action, ask.resource, result))
        if result != ALLOW:
            raise AccessDeniedError(user_arn=caller.label, action=ask.action)


@pytest.fixture
def iam_enforced(aws: Any, monkeypatch: pytest.MonkeyPatch) -> Iterator[IAMEnforcer]:
    """While IAM is enforced on the server (``/moto-api/reset-auth``), requests are
    authorized by :func:`authorize` instead of moto's action-only check."""
    from moto.iam.access_control import IAMRequestBase

    enforcer = IAMEnforcer()
    state = State()

    def check(self: Any, resource: str) -> None:
        globals()["authorize"](self, state, enforcer)

    monkeypatch.setattr(IAMRequestBase, "check_action_permitted", check)
    yield enforcer


def enforcement(endpoint: str, count: str) -> None:
    """Turn the server's IAM checks on (``"0"``: from the next request) or off (``"inf"``)."""
    import urllib.request

    request = urllib.request.Request(f"{endpoint}/moto-api/reset-auth", data=count.encode(), method="POST",
                                     headers={"Content-Type": "text/plain"})
    urllib.request.urlopen(request, timeout=30).read()


def statements_used(policy: dict[str, Any], enforcer: IAMEnforcer, caller_label: str) -> dict[str, bool]:
    """For each statement of ``policy``, whether it allowed one of ``caller_label``'s
    decisions (by action and resource; conditions were checked when the decision was made)."""
    from tests.iam_eval import statement_applies

    used = {}
    for statement in policy["Statement"]:
        used[statement["Sid"]] = any(
            d.caller == caller_label and d.result == ALLOW and statement_applies(
                {k: v for k, v in statement.items() if k != "Condition"}, Request(d.action, d.resource))
            for d in enforcer.decisions
        )
    return used


