"""Read a project directory: its ``flowrig.toml`` once, and the files it names."""

from __future__ import annotations

import tomllib
from pathlib import Path

from flowrig.errors import BadInput
from flowrig.project import build_rules, secret_rules
from flowrig.project.defaults import PROJECT_FILE
from flowrig.project.models import Project, parse_project


def load_project(path: str | Path) -> Project:
    """Read and validate a project directory (or its ``flowrig.toml``).

    The checks are the image build's too (:mod:`flowrig.project.build_rules`): what
    loads here builds there.

    Raises
    ------
    BadInput
        When the file is missing, is not valid TOML, or fails validation; also when
        the flow file or requirements file it names does not exist, a requirements
        include leaves the project, ``[cluster.options]`` holds credentials
        (:func:`flowrig.project.secret_rules.check_no_credentials`), or
        ``build.allow_private_keys`` or ``build.allow_credentials`` name a file the
        project does not have.
    """
    path = Path(path)
    file = path if path.is_file() else path / PROJECT_FILE
    if not file.is_file():
        if not path.exists():
            raise BadInput(f"project directory {str(path)!r} does not exist")
        raise BadInput(f'no {PROJECT_FILE} in {str(path)!r}: create one with flow = "flow.py:my_flow"')
    try:
        data = tomllib.loads(file.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise BadInput(f"{file}: not valid TOML ({exc})") from None
    project = parse_project(data, file.parent.resolve())
    if not project.flow_path.is_file():
        raise BadInput(f"flow file {str(project.flow_path)!r} does not exist: fix 'flow' in {file}")
    for name in project.build.allow_private_keys:
        if not (project.root / name).is_file():
            raise BadInput(
                f"'build.allow_private_keys' in {file} names {name!r}, which is not a file of the "
                "project: fix the path or remove the entry"
            )
    for entry in project.build.allow_credentials:
        path, colon, line = entry.rpartition(":")
        name = path if colon and line.isdigit() else entry
        if not (project.root / name).exists():
            raise BadInput(
                f"'build.allow_credentials' in {file} names {name!r}, which is not in the project: "
                "fix the path or remove the entry"
            )
    try:
        secret_rules.check_no_credentials(data)
        requirements = build_rules.requirements_path(project.root, project.requirements)
        if requirements is not None:
            build_rules.flatten_requirements(requirements, project.root)
    except (build_rules.RuleError, secret_rules.CredentialError) as exc:
        raise BadInput(str(exc)) from None
    return project
