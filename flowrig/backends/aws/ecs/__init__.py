"""``ecs`` and ``fargate``: a run's cluster as ECS tasks, its task definitions, and run-local.

- :mod:`~flowrig.backends.aws.ecs.backend`: the two backends;
- :mod:`~flowrig.backends.aws.ecs.options`: their ``[cluster.options]``;
- :mod:`~flowrig.backends.aws.ecs.launcher`: RunTask, DescribeTasks, StopTask of a run's roles;
- :mod:`~flowrig.backends.aws.ecs.pacing`: those calls paced below AWS's throttling rates;
- :mod:`~flowrig.backends.aws.ecs.register`: the project's task definitions, registered;
- :mod:`~flowrig.backends.aws.ecs.taskdefs` and :mod:`~flowrig.backends.aws.ecs.validate`:
  task definitions as data, checked against botocore's model;
- :mod:`~flowrig.backends.aws.ecs.run_local`: a task definition's containers on the local
  Docker engine.
- :mod:`~flowrig.backends.aws.ecs.definitions`: the task definitions a project's settings
  ask for.

What ECS shares with ``ec2`` (sessions, IAM documents, the run's AWS resources, leases,
leftovers) is in :mod:`flowrig.backends.aws`.
"""

from __future__ import annotations

from typing import Any

__all__ = ["ECSBackend", "FargateBackend"]


def __getattr__(name: str) -> Any:
    # The backends load botocore-using modules only when asked for.
    if name in __all__:
        from flowrig.backends.aws.ecs import backend

        return getattr(backend, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
