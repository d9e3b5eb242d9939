"""AWS ECS and Fargate: task definitions for the flowrig image, and running them locally.

- :mod:`flowrig.ecs.taskdefs` renders task definitions (pure functions returning dicts).
- :mod:`flowrig.ecs.validate` checks inputs and rendered definitions (Fargate sizes,
  botocore's ECS model).
- :mod:`flowrig.ecs.aws` is the one place that calls AWS.
- :mod:`flowrig.ecs.run_local` runs a task definition's containers with local Docker.
- :mod:`flowrig.ecs.cli` is ``flowrig ecs``.

The ``ecs``/``fargate`` cluster backends live in :mod:`flowrig.backends.ecs`.
"""
