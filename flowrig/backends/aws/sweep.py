"""Find the AWS resources of ``ecs``/``fargate``/``ec2`` runs, and remove one run's (botocore).

Finding: everything tagged ``flowrig-run-id`` comes from the Resource Groups Tagging
API (one paginated call for ECS tasks, task definitions and clusters, security
groups, log groups and secrets); each is then checked with its own service, because
the tagging API goes on listing resources for a while after they are deleted (stopped
tasks, inactive clusters). EC2 instances come from DescribeInstances filtered by the
run tag, which lists only instances that are not terminated. IAM is outside the
tagging API: roles and instance profiles are listed on flowrig's IAM path
``/flowrig/`` (roles also, for roles made before there was one, by the name prefix
``flowrig-``), and taken when they carry the run tag (so the account-wide ``flowrig ecs
bootstrap`` roles, which carry none, are never touched).

Removal is :class:`~flowrig.backends.aws.remover.Remover`'s, which shares the error codes
and batches here.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any, Callable, Iterable, Iterator

from flowrig.backends.aws.leftovers import Resource
from flowrig.backends.aws.names import ROLE_PATH, RUN_TAG
from flowrig.backends.aws.session import Session, aws_errors

#: Name prefix of the roles flowrig makes (on :data:`~flowrig.backends.aws.names.ROLE_PATH`).
ROLE_PREFIX = "flowrig-"
#: DescribeTasks and DescribeClusters take at most this many per call.
DESCRIBE_BATCH = 100
#: Seconds between checks while tasks stop, and between retries of a refused deletion.
POLL_SECONDS = 2.0
#: Error codes that say a resource is already gone.
GONE_CODES = frozenset({
    "ClusterNotFoundException",
    "InvalidInstanceID.NotFound",
    "InvalidGroup.NotFound",
    "NoSuchEntity",
    "ResourceNotFoundException",
    "TaskDefinitionNotFoundException",
})
#: Codes AWS answers while a resource is still in use by one being removed (retried).
IN_USE_CODES = frozenset({
    "ClusterContainsTasksException",
    "DependencyViolation",
    "ResourceInUseException",
    "UpdateInProgressException",
})


def error_code(exc: Exception) -> str:
    return str(getattr(exc, "response", {}).get("Error", {}).get("Code", ""))


def is_gone(exc: Exception) -> bool:
    """Whether an AWS error says the resource does not exist (any more)."""
    code = error_code(exc)
    if code in GONE_CODES:
        return True
    # ECS says "not found" in the message of generic codes (StopTask, DeregisterTaskDefinition).
    message = str(getattr(exc, "response", {}).get("Error", {}).get("Message", "")).lower()
    return code in {"ClientException", "InvalidParameterException"} and (
        "not found" in message or "unable to describe" in message or "could not find" in message
    )


# --- finding ---------------------------------------------------------------------
def _tags_of(items: Iterable[dict[str, Any]]) -> dict[str, str]:
    return {(t.get("Key") or t.get("key") or ""): (t.get("Value") or t.get("value") or "") for t in items}


def _kind_of(arn: str) -> str | None:
    """The kind of resource a tagged ARN names, if it is one flowrig makes."""
    parts = arn.split(":", 5)
    if len(parts) < 6:
        return None
    service, resource = parts[2], parts[5]
    if service == "ecs":
        for prefix, kind in (("task/", "task"), ("task-definition/", "task-definition"), ("cluster/", "cluster")):
            if resource.startswith(prefix):
                return kind
    if service == "ec2" and resource.startswith("security-group/"):
        return "security-group"
    if service == "logs" and resource.startswith("log-group:"):
        return "log-group"
    if service == "secretsmanager" and resource.startswith("secret:"):
        return "secret"
    return None


def tagged(aws: Session) -> dict[str, dict[str, dict[str, str]]]:
    """``kind -> {arn: tags}`` of everything in the region tagged with the run tag."""
    found: dict[str, dict[str, dict[str, str]]] = {}
    with aws_errors("listing resources tagged flowrig-run-id"):
        paginator = aws.client("resourcegroupstaggingapi").get_paginator("get_resources")
        for page in paginator.paginate(TagFilters=[{"Key": RUN_TAG}]):
            for item in page.get("ResourceTagMappingList", ()):
                kind = _kind_of(item["ResourceARN"])
                tags = _tags_of(item.get("Tags", ()))
                if kind and tags.get(RUN_TAG):
                    found.setdefault(kind, {})[item["ResourceARN"]] = tags
    return found


def chunks(items: list[str], size: int) -> Iterator[list[str]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _tasks(aws: Session, arns: dict[str, dict[str, str]]) -> list[Resource]:
    """Tasks not yet STOPPED; their cluster is the one their (long) ARN names."""
    by_cluster: dict[str, list[str]] = {}
    for arn in arns:
        path = arn.split(":", 5)[5].split("/")
        if len(path) == 3:  # task/<cluster>/<id>
            by_cluster.setdefault(path[1], []).append(arn)
    found = []
    ecs = aws.client("ecs")
    for cluster, cluster_arns in sorted(by_cluster.items()):
        for chunk in chunks(sorted(cluster_arns), DESCRIBE_BATCH):
            with aws_errors(f"describing tasks in cluster {cluster}"):
                try:
                    tasks = ecs.describe_tasks(cluster=cluster, tasks=chunk)["tasks"]
                except Exception as exc:
                    if is_gone(exc):
                        continue
                    raise
            for task in tasks:
                if task.get("lastStatus") == "STOPPED":
                    continue
                tags = arns[task["taskArn"]]
                found.append(Resource(
                    "task", task["taskArn"], tags[RUN_TAG], tags, task.get("createdAt"),
                    {"status": str(task.get("lastStatus", "?")), "cluster": cluster},
                ))
    return found


def _tasks_in_clusters(aws: Session, clusters: list[Resource], known: set[str]) -> list[Resource]:
    """Tasks in the runs' own clusters that their tags did not find (every task in a
    run's cluster is the run's, and a cluster is deleted only once they are stopped)."""
    found = []
    ecs = aws.client("ecs")
    for cluster in clusters:
        with aws_errors(f"listing the tasks of cluster {cluster.ident}"):
            try:
                pages = ecs.get_paginator("list_tasks").paginate(cluster=cluster.ident, desiredStatus="RUNNING")
                arns = sorted(arn for page in pages for arn in page["taskArns"] if arn not in known)
                tasks = [
                    task
                    for chunk in chunks(arns, DESCRIBE_BATCH)
                    for task in ecs.describe_tasks(cluster=cluster.ident, tasks=chunk, include=["TAGS"])["tasks"]
                ]
            except Exception as exc:
                if is_gone(exc):
                    continue
                raise
        for task in tasks:
            if task.get("lastStatus") != "STOPPED":
                found.append(Resource(
                    "task", task["taskArn"], cluster.run_id, _tags_of(task.get("tags", ())), task.get("createdAt"),
                    {"status": str(task.get("lastStatus", "?")), "cluster": cluster.ident.rsplit("/", 1)[-1]},
                ))
    return found


def _task_definitions(aws: Session, arns: dict[str, dict[str, str]]) -> list[Resource]:
    found = []
    ecs = aws.client("ecs")
    for arn, tags in sorted(arns.items()):
        with aws_errors(f"describing task definition {arn}"):
            try:
                definition = ecs.describe_task_definition(taskDefinition=arn)["taskDefinition"]
            except Exception as exc:
                if is_gone(exc):
                    continue
                raise
        if definition.get("status") == "DELETE_IN_PROGRESS":
            continue
        found.append(Resource(
            "task-definition", arn, tags[RUN_TAG], tags, definition.get("registeredAt"),
            {"status": str(definition.get("status", "?"))},
        ))
    return found


def _clusters(aws: Session, arns: dict[str, dict[str, str]]) -> list[Resource]:
    found = []
    ecs = aws.client("ecs")
    for chunk in chunks(sorted(arns), DESCRIBE_BATCH):
        with aws_errors("describing the runs' ECS clusters"):
            clusters = ecs.describe_clusters(clusters=chunk)["clusters"]
        for cluster in clusters:
            # A deleted cluster stays described (INACTIVE) for a while.
            if cluster.get("status") == "INACTIVE" or cluster["clusterArn"] not in arns:
                continue
            tags = arns[cluster["clusterArn"]]
            found.append(Resource("cluster", cluster["clusterArn"], tags[RUN_TAG], tags))
    return found


def _security_groups(aws: Session, arns: dict[str, dict[str, str]]) -> list[Resource]:
    ids = {arn.rsplit("/", 1)[1]: tags for arn, tags in arns.items()}
    if not ids:
        return []
    found = []
    with aws_errors("describing the runs' security groups"):
        # A filter, unlike GroupIds, skips groups deleted meanwhile instead of failing.
        pages = aws.client("ec2").get_paginator("describe_security_groups").paginate(
            Filters=[{"Name": "group-id", "Values": sorted(ids)}]
        )
        groups = [group for page in pages for group in page["SecurityGroups"]]
    for group in groups:
        tags = _tags_of(group.get("Tags", ())) or ids[group["GroupId"]]
        found.append(Resource(
            "security-group", group["GroupId"], tags.get(RUN_TAG) or ids[group["GroupId"]][RUN_TAG], tags, None,
            {"name": group.get("GroupName", "?"), "vpc": group.get("VpcId", "?")},
        ))
    return found


def _log_groups(aws: Session, arns: dict[str, dict[str, str]]) -> list[Resource]:
    found = []
    logs = aws.client("logs")
    for arn, tags in sorted(arns.items()):
        name = arn.split(":", 6)[6]
        name = name[:-2] if name.endswith(":*") else name
        with aws_errors(f"describing log group {name}"):
            groups = logs.describe_log_groups(logGroupNamePrefix=name)["logGroups"]
        for group in groups:
            if group["logGroupName"] == name:
                created = group.get("creationTime")
                when = datetime.fromtimestamp(created / 1000, timezone.utc) if created else None
                found.append(Resource("log-group", name, tags[RUN_TAG], tags, when))
    return found


def _secrets(aws: Session, arns: dict[str, dict[str, str]]) -> list[Resource]:
    found = []
    client = aws.client("secretsmanager")
    for arn, tags in sorted(arns.items()):
        with aws_errors(f"describing secret {arn}"):
            try:
                secret = client.describe_secret(SecretId=arn)
            except Exception as exc:
                if is_gone(exc):
                    continue
                raise
        detail = {"name": str(secret.get("Name", "?"))}
        if secret.get("DeletedDate"):
            detail["state"] = "scheduled for deletion"
        found.append(Resource("secret", arn, tags[RUN_TAG], tags, secret.get("CreatedDate"), detail))
    return found


def _roles(aws: Session) -> list[Resource]:
    """Roles on flowrig's path or with its name prefix that carry the run tag."""
    iam = aws.client("iam")
    found = []
    with aws_errors("listing IAM roles"):
        roles = [
            role
            for page in iam.get_paginator("list_roles").paginate()
            for role in page["Roles"]
            if role.get("Path", "/").startswith(ROLE_PATH) or role["RoleName"].startswith(ROLE_PREFIX)
        ]
    for role in roles:
        name = role["RoleName"]
        with aws_errors(f"listing the tags of IAM role {name}"):
            try:
                tags = _tags_of(iam.list_role_tags(RoleName=name)["Tags"])
            except Exception as exc:
                if is_gone(exc):
                    continue
                raise
        if tags.get(RUN_TAG):
            found.append(Resource(
                "role", name, tags[RUN_TAG], tags, role.get("CreateDate"), {"path": role.get("Path", "/")}
            ))
    return found


#: Instance states of an instance that still exists (and costs), as the filter names them.
LIVE_INSTANCE_STATES = ("pending", "running", "stopping", "stopped", "shutting-down")


def _instances(aws: Session) -> list[Resource]:
    """EC2 instances carrying the run tag that are not terminated."""
    found = []
    with aws_errors("describing the runs' EC2 instances"):
        pages = aws.client("ec2").get_paginator("describe_instances").paginate(Filters=[
            {"Name": "tag-key", "Values": [RUN_TAG]},
            {"Name": "instance-state-name", "Values": list(LIVE_INSTANCE_STATES)},
        ])
        instances = [i for page in pages for r in page["Reservations"] for i in r["Instances"]]
    for instance in instances:
        tags = _tags_of(instance.get("Tags", ()))
        if tags.get(RUN_TAG):
            found.append(Resource(
                "instance", instance["InstanceId"], tags[RUN_TAG], tags, instance.get("LaunchTime"),
                {"state": str(instance.get("State", {}).get("Name", "?")), "name": tags.get("Name", "?")},
            ))
    return found


def _instance_profiles(aws: Session) -> list[Resource]:
    """Instance profiles on flowrig's path that carry the run tag."""
    iam = aws.client("iam")
    found = []
    with aws_errors("listing IAM instance profiles"):
        profiles = [
            profile
            for page in iam.get_paginator("list_instance_profiles").paginate(PathPrefix=ROLE_PATH)
            for profile in page["InstanceProfiles"]
        ]
    for profile in profiles:
        name = profile["InstanceProfileName"]
        with aws_errors(f"listing the tags of instance profile {name}"):
            try:
                # Listing leaves tags out; getting one profile has them.
                profile = iam.get_instance_profile(InstanceProfileName=name)["InstanceProfile"]
                tags = _tags_of(profile.get("Tags", ()))
            except Exception as exc:
                if is_gone(exc):
                    continue
                raise
        if tags.get(RUN_TAG):
            roles = ",".join(role["RoleName"] for role in profile.get("Roles", ())) or "none"
            found.append(Resource(
                "instance-profile", name, tags[RUN_TAG], tags, profile.get("CreateDate"), {"roles": roles}
            ))
    return found


def find(aws: Session) -> list[Resource]:
    """Every resource of the region (and every IAM role and instance profile) of any
    ``ecs``/``fargate``/``ec2`` run.

    Raises
    ------
    BadInput
        No credentials or region.
    InfrastructureError
        AWS unreachable or refusing a call.
    """
    by_kind = tagged(aws)
    readers: dict[str, Callable[[Session, dict[str, dict[str, str]]], list[Resource]]] = {
        "task": _tasks,
        "task-definition": _task_definitions,
        "cluster": _clusters,
        "security-group": _security_groups,
        "log-group": _log_groups,
        "secret": _secrets,
    }
    found = []
    for kind, read in readers.items():
        if by_kind.get(kind):
            found.extend(read(aws, by_kind[kind]))
    clusters = [r for r in found if r.kind == "cluster"]
    found += _tasks_in_clusters(aws, clusters, {r.ident for r in found if r.kind == "task"})
    return found + _instances(aws) + _instance_profiles(aws) + _roles(aws)
