"""Why an ECS task stopped or was not started, in one line, with what to check.

A task that stops is explained by :func:`stop_reason` (its stop code, stopped reason and
containers' reasons) and :func:`explain` (the last lines its container wrote, and a hint
for the causes seen most, :func:`hint`). :func:`no_capacity` tells a RunTask failure
that another market may not have (Fargate Spot without room).
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

from flowrig.errors import one_line

#: Width of each log line put in a stop reason.
LOG_LINE_WIDTH = 160
#: Longest one-line explanation of a stopped task (reasons, log lines and hint).
REASON_WIDTH = 1200


def stop_reason(task: Mapping[str, Any]) -> str:
    """One line: the stop code, the stopped reason and each container's own reason."""
    parts = [task.get("stopCode"), task.get("stoppedReason")]
    for container in task.get("containers", ()):
        if container.get("reason"):
            parts.append(f"{container.get('name', 'container')}: {container['reason']}")
        elif container.get("exitCode") not in (None, 0):
            parts.append(f"{container.get('name', 'container')} exited with code {container['exitCode']}")
    return one_line("; ".join(p for p in parts if p) or "no reason given", REASON_WIDTH)


#: (words any of which is in a reason, what to do), first match wins.
_HINTS: tuple[tuple[tuple[str, ...], str], ...] = (
    (("CannotPullContainerError", "pull image", "pulling image"),
     "the image could not be pulled: a task in a private subnet needs a NAT gateway or VPC endpoints "
     "(ecr.api, ecr.dkr, s3), and the execution role ecr:GetAuthorizationToken and read access to the repository"),
    (("secretsmanager", "secrets manager", "ssm", "unable to retrieve secret", "GetSecretValue"),
     "ECS could not read the task's secrets: the execution role needs secretsmanager:GetSecretValue "
     "(and kms:Decrypt for a key of yours) on them, and a private subnet a route to Secrets Manager "
     "(NAT or VPC endpoint)"),
    (("log group", "loggroup", "CreateLogStream", "awslogs"),
     "the awslogs log group is missing or not writable: create it, or leave cloudwatch_logs_group "
     "unset so the run makes its own"),
    (("RESOURCE:", "Capacity is unavailable", "capacity", "AGENT"),
     "no capacity for the task right now: run again later, in other subnets or availability zones, "
     'with smaller worker_cpu/worker_mem, or with spot = "fallback" (or without spot)'),
)


#: Words of a RunTask failure that say Fargate had no capacity for the task (Spot's answer
#: when it has none: ``RESOURCE:FARGATE`` / "Capacity is unavailable at this time").
_NO_CAPACITY = ("capacity is unavailable", "resource:fargate")


def no_capacity(reason: str) -> bool:
    """Whether a RunTask failure ``reason`` says Fargate had no capacity (worth another market)."""
    lowered = reason.lower()
    return any(word in lowered for word in _NO_CAPACITY)


def hint(reason: str) -> str:
    """What to check for a stop or RunTask failure ``reason``; empty when nothing fits."""
    lowered = reason.lower()
    for words, advice in _HINTS:
        if any(word.lower() in lowered for word in words):
            return advice
    return ""


def failure_reason(failure: Mapping[str, Any]) -> str:
    """One RunTask or DescribeTasks failure as a line: its reason and detail."""
    text = " ".join(str(failure.get(key) or "") for key in ("reason", "detail")).strip()
    return one_line(text or "no reason given", REASON_WIDTH)


def explain(reason: str, log_lines: Sequence[str] = ()) -> str:
    """``reason``, the container's last log lines and a hint, in one line."""
    parts = [reason]
    if log_lines:
        parts.append("last log lines: " + " | ".join(one_line(line, LOG_LINE_WIDTH) for line in log_lines))
    advice = hint(reason)
    if advice:
        parts.append("hint: " + advice)
    return one_line("; ".join(parts), REASON_WIDTH)
