"""A worker named after its own ECS task, for workers started many per RunTask call.

RunTask starts up to ten tasks from one set of overrides, so every task of a batch gets
the same command. The worker's ``--name`` is therefore a placeholder that the image's
entry point replaces by the task's id, read from the ECS task metadata endpoint
(``ECS_CONTAINER_METADATA_URI_V4``). The runner knows the same id from RunTask's answer,
so both sides call the worker by one name without any per-task override.

May import: :mod:`flowrig.errors` (no Dask, no AWS SDK: the entry point runs it before
exec'ing the worker).
"""

from __future__ import annotations

import json
import os
import urllib.request
from typing import Mapping

from flowrig.errors import InfrastructureError, one_line

#: ``--name`` value replaced by the id of the ECS task the worker runs in.
FROM_ECS_TASK = "{ecs-task-id}"
#: Where ECS tells a container about its task (Fargate platform 1.4+, agent 1.39+).
METADATA_ENV = "ECS_CONTAINER_METADATA_URI_V4"


def task_id(task_arn: str) -> str:
    """The id of a task: the last part of its ARN (the same for short and long ARNs)."""
    return task_arn.rsplit("/", 1)[-1]


def resolve(args: list[str], environ: Mapping[str, str] | None = None, timeout: float = 5.0) -> list[str]:
    """``args`` with a ``--name`` of :data:`FROM_ECS_TASK` replaced by the task's id.

    Raises
    ------
    InfrastructureError
        When the placeholder is there and the metadata endpoint is not set or does not answer.
    """
    if not any(FROM_ECS_TASK in arg for arg in args):
        return list(args)
    env = os.environ if environ is None else environ
    base = env.get(METADATA_ENV)
    if not base:
        raise InfrastructureError(
            f"this worker is named after its ECS task ({FROM_ECS_TASK}) but {METADATA_ENV} is not set: "
            "start it as an ECS task, or pass --name"
        )
    try:
        with urllib.request.urlopen(f"{base.rstrip('/')}/task", timeout=timeout) as response:
            arn = json.loads(response.read())["TaskARN"]
    except (OSError, ValueError, KeyError) as exc:
        raise InfrastructureError(f"cannot read the worker's ECS task id from {base}/task: {one_line(exc)}") from None
    # A worker group's workers are named after their group, then their task (``gpu-ID``).
    return [arg.replace(FROM_ECS_TASK, task_id(arn)) for arg in args]
