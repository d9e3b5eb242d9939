"""A flow project: ``flowrig.toml`` as typed models, the flow loader, parameters, sizing.

Owns everything read from a project directory and from a run's inputs before any
cluster exists: :func:`load_project` (one parse of ``flowrig.toml``), the flow and
hook loader (:mod:`~flowrig.project.flow_loader`), run parameters
(:mod:`~flowrig.project.parameters`) and the cluster size they lead to
(:mod:`~flowrig.project.sizing`). :mod:`~flowrig.project.build_rules` holds the file
rules the image build shares (standard library only).

May import: :mod:`flowrig.errors`, pydantic, and Prefect's public flow API (parameters
are validated the way Prefect validates them).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from flowrig.project.load import load_project
    from flowrig.project.models import Adapt, ClusterConfig, Project, ProjectFile, parse_project

__all__ = ["Adapt", "ClusterConfig", "Project", "ProjectFile", "load_project", "parse_project"]


def __getattr__(name: str) -> Any:
    # The models import pydantic (about a tenth of a second): the package's light
    # modules (defaults, build_rules) are imported by the CLI and the builder without them.
    if name == "load_project":
        from flowrig.project.load import load_project

        return load_project
    if name in __all__:
        from flowrig.project import models

        return getattr(models, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
