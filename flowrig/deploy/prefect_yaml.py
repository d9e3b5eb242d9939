"""``flowrig deploy ... --write prefect.yaml``: the same deployment, for ``prefect deploy``.

The entry holds what :mod:`flowrig.deploy.server` would write (name, entry point,
parameters, schedules, tags, description, version, work pool and job variables), with
the entry point relative to the file's directory, where ``prefect deploy`` runs. An
existing file keeps everything else, comments included (ruamel.yaml's round trip, which
Prefect installs anyway); its entry of the same name and flow is replaced, or the entry
is added. The image is built by flowrig, so the file has no build or push steps, and the
entry's pull step only names the project's place in the image (the image's entry point
runs the baked project whatever a worker sends).
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any

from flowrig.deploy.spec import DeploymentSpec
from flowrig.errors import BadInput


def _schedule_entry(data: dict[str, Any]) -> dict[str, Any]:
    entry = {key: value for key, value in data.items() if key != "day_or" or value is not True}
    entry["active"] = True
    return entry


def deployment_entry(spec: DeploymentSpec, entrypoint: str) -> dict[str, Any]:
    """One ``deployments:`` entry of prefect.yaml for ``spec``."""
    entry: dict[str, Any] = {
        "name": spec.name,
        "version": spec.version,
        "tags": list(spec.tags),
        "description": spec.description,
        "entrypoint": entrypoint,
        "parameters": dict(spec.parameters),
        "work_pool": {
            "name": spec.work_pool_name,
            "work_queue_name": spec.work_queue_name,
            "job_variables": dict(spec.job_variables),
        },
        "schedules": [_schedule_entry(s) for s in spec.schedules],
        "enforce_parameter_schema": spec.enforce_parameter_schema,
        # The entry's own, so that it holds in a file whose global steps are others'.
        "pull": [dict(step) for step in spec.pull_steps],
    }
    if spec.paused is not None:
        entry["paused"] = spec.paused
    return entry


def _yaml() -> Any:
    from ruamel.yaml import YAML

    yaml = YAML()
    yaml.default_flow_style = False
    yaml.width = 4096  # long commands stay on one line
    yaml.indent(mapping=2, sequence=4, offset=2)
    return yaml


def render(spec: DeploymentSpec, path: Path, project_root: Path, project_name: str, flow_file: Path,
           existing: str | None) -> str:
    """The text of prefect.yaml at ``path`` holding ``spec``'s entry.

    Raises
    ------
    BadInput
        When ``existing`` is not a YAML mapping with a ``deployments`` list.
    """
    import prefect

    yaml = _yaml()
    relative = os.path.relpath(flow_file, path.parent.resolve())
    entrypoint = f"{Path(relative).as_posix()}:{spec.entrypoint.rpartition(':')[2]}"
    entry = deployment_entry(spec, entrypoint)
    if existing is None or not existing.strip():
        document: Any = {
            "name": project_name,
            "prefect-version": prefect.__version__,
            "build": None,
            "push": None,
            "deployments": [entry],
        }
    else:
        try:
            document = yaml.load(existing)
        except Exception as exc:
            raise BadInput(f"{path} is not valid YAML ({' '.join(str(exc).split())}): fix or remove it") from None
        if not isinstance(document, dict):
            raise BadInput(f"{path} is not a prefect.yaml (no mapping at its top): fix or remove it")
        deployments = document.setdefault("deployments", [])
        if deployments is None:
            document["deployments"] = deployments = []
        if not isinstance(deployments, list):
            raise BadInput(f"'deployments' in {path} is not a list: fix it")
        function = spec.entrypoint.rpartition(":")[2]
        for index, item in enumerate(deployments):
            if (isinstance(item, dict) and item.get("name") == spec.name
                    and str(item.get("entrypoint", "")).rpartition(":")[2] == function):
                deployments[index] = entry
                break
        else:
            deployments.append(entry)
    out = io.StringIO()
    yaml.dump(document, out)
    return out.getvalue()


def write(spec: DeploymentSpec, path: Path, project_root: Path, project_name: str, flow_file: Path) -> bool:
    """Write (or update) prefect.yaml at ``path``; ``False`` when it held this already."""
    try:
        existing = path.read_text(encoding="utf-8") if path.is_file() else None
        text = render(spec, path, project_root, project_name, flow_file, existing)
        if text == existing:
            return False
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise BadInput(f"cannot write {path}: {getattr(exc, 'strerror', None) or exc}") from None
    return True
