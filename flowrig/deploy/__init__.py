"""``flowrig deploy``: Prefect deployments of a flowrig image, and work pools for them.

- :mod:`~flowrig.deploy.command`: from a project, its image and a command line to a
  deployment (or a prefect.yaml entry), checking everything before the API is asked;
- :mod:`~flowrig.deploy.image`: what a local image carries, read without running it;
- :mod:`~flowrig.deploy.pools`: pool types and each deployment's job variables (pure);
- :mod:`~flowrig.deploy.pool_templates`: the pool types' base job templates (pure);
- :mod:`~flowrig.deploy.schedules`: ``--cron``, ``--interval``, ``--rrule`` as
  Prefect's schedules, comparable across deploys;
- :mod:`~flowrig.deploy.spec`: the wanted deployment as data, and its parameter checks;
- :mod:`~flowrig.deploy.server`: writes to a Prefect server only what differs;
- :mod:`~flowrig.deploy.prefect_yaml`: the same deployment as a prefect.yaml entry.

The flow itself is never imported: its facts come from its source
(:mod:`flowrig.project.flow_facts`), so a deploy runs where the flow's dependencies
are not installed.

May import: :mod:`flowrig.backends` (ECS task definitions, the docker backend's
hardening), :mod:`flowrig.containers`, :mod:`flowrig.project`, :mod:`flowrig.errors`,
and Prefect's client.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from flowrig.deploy.command import DeployInputs, EcsInputs, deploy, describe_report
    from flowrig.deploy.pool_templates import pool_template
    from flowrig.deploy.pools import POOL_TYPES

__all__ = ["POOL_TYPES", "DeployInputs", "EcsInputs", "deploy", "describe_report", "pool_template"]


def __getattr__(name: str) -> Any:
    # The command line imports this package for its help text; Prefect loads on use.
    if name in ("DeployInputs", "EcsInputs", "deploy", "describe_report"):
        from flowrig.deploy import command

        return getattr(command, name)
    if name == "POOL_TYPES":
        from flowrig.deploy import pools

        return pools.POOL_TYPES
    if name == "pool_template":
        from flowrig.deploy import pool_templates

        return pool_templates.pool_template
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
