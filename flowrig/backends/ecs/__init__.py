"""``ecs`` and ``fargate``: a run's cluster as ECS tasks, its task definitions, and run-local.

- :mod:`~flowrig.backends.ecs.backend`: the two backends;
- :mod:`~flowrig.backends.ecs.options`: their ``[cluster.options]``;
- :mod:`~flowrig.backends.ecs.launcher`: RunTask, DescribeTasks, StopTask of a run's roles;
- :mod:`~flowrig.backends.ecs.aws`: sessions, errors, and the run's own AWS resources;
- :mod:`~flowrig.backends.ecs.iam`: trust policies, the bootstrap's policies, the runner's policy;
- :mod:`~flowrig.backends.ecs.taskdefs` and :mod:`~flowrig.backends.ecs.validate`:
  task definitions as data, checked against botocore's model;
- :mod:`~flowrig.backends.ecs.run_local`: a task definition's containers on the local
  Docker engine.
- :mod:`~flowrig.backends.ecs.lease`: the lease a live run renews on its resources;
- :mod:`~flowrig.backends.ecs.leftovers` (pure) and :mod:`~flowrig.backends.ecs.sweep`
  (AWS calls): what runs that are over left behind, found by run and removed.
"""

from __future__ import annotations

from typing import Any

__all__ = ["ECSBackend", "FargateBackend"]


def __getattr__(name: str) -> Any:
    # The backends load botocore-using modules only when asked for.
    if name in __all__:
        from flowrig.backends.ecs import backend

        return getattr(backend, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
