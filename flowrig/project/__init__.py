"""A flow project: ``flowrig.toml`` as typed models, the flow loader, parameters, sizing.

Owns everything read from a project directory and from a run's inputs before any
cluster exists: :func:`load_project` (one parse of ``flowrig.toml``), the flow and
hook loader (:mod:`~flowrig.project.flow_loader`), run parameters
(:mod:`~flowrig.project.parameters`) and the cluster size they lead to
(:mod:`~flowrig.project.sizing`). :mod:`~flowrig.project.filerules` holds the file
rules the image build shares (standard library only).

May import: :mod:`flowrig.errors`, pydantic, and Prefect's public flow API (parameters
are validated the way Prefect validates them).
"""

from flowrig.project.load import load_project
from flowrig.project.models import Adapt, ClusterConfig, Project, ProjectFile, parse_project

__all__ = ["Adapt", "ClusterConfig", "Project", "ProjectFile", "load_project", "parse_project"]
